"""`thinklens publish RUN OUT`: a run packaged as a Hugging Face repository others can load.

```
OUT/
  README.md                      model card: hub YAML header, eval table (overall and per segment), training
                                 settings, the findings' verdicts, the map
  pretrained_saes.yaml           the entry SAELens's pretrained_saes.yaml takes for this release
  layers.15.resid_post/          one SAELens-layout folder per hook (cfg.json, sae_weights.safetensors)
  features/<name>.ddb            Goodfire's release layout: tokens, activations (DuckDB)
  features/autointerp.db         ... and its labels (SQLite)
  features/features.db           thinklens' own database (everything else: statistics, histograms, contrasts)
  traces/data/train-00000-of-00001.parquet, traces/README.md   the traces as a dataset, with its card
  map.png                        the feature map, when the run has one
  manifest.json                  bytes and SHA-256 of every file above
```

Everything is written into a hidden sibling of OUT, `.OUT.partial`, step by step (`PUBLISH_STEPS`), and
renamed into place at the end, so OUT is either absent or complete. The sibling records each finished
step with the files it wrote and their hashes: a killed publish resumes at the step it was in (the
DuckDB copy of a large database is two steps, one per table), unless the run or the settings changed
since (size and mtime of every input), when it starts over. An existing OUT is refused, or pushed when
`--push` is given. `push` uploads the traces as a dataset repository of their own and the rest as the
model repository (`push_targets`); each upload is one hub commit, so a failed push leaves the repository
as it was and files already uploaded are not sent again by the next try.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from thinklens.errors import ThinklensError
from thinklens.progress import progress_bar
from thinklens.release.card import dataset_card, model_card, pretrained_saes_entry
from thinklens.release.config import PublishConfig
from thinklens.release.goodfire import RELEASE_COLUMNS, write_autointerp, write_release_table

MANIFEST = "manifest.json"
STATE = "publish-state.json"  # in the staging directory only: the steps done, their facts and files
TRACES_DIR = "traces"
TRACES_FILE = f"{TRACES_DIR}/data/train-00000-of-00001.parquet"


@dataclass
class PublishResult:
    out: Path
    files: int
    bytes: int
    saes: list[str]
    resumed_steps: int = 0
    pushed: list[str] = field(default_factory=list)  # the hub commit URLs, when pushed


@dataclass(frozen=True)
class PushTarget:
    """One hub repository a push writes: `folder` uploaded as `repo_id` of `repo_type`, less `ignore`."""

    repo_id: str
    repo_type: str
    folder: Path
    ignore: tuple[str, ...] = ()


@dataclass
class _Release:
    """What the steps share: where they write, what they read, and the facts earlier steps found."""

    staging: Path
    run: Any
    name: str
    saes: dict[str, Path]
    config: PublishConfig
    facts: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → bytes and sha256, as steps write them


def publish(config: PublishConfig, run: Any, out: Path, show_progress: bool = False) -> PublishResult:
    """Package the run (a RunDir) into `out`, resuming a killed publish of the same inputs; push it when
    `config.push` names a repository (an `out` already complete is then pushed as it is)."""
    out = Path(out)
    resumed = 0
    if out.exists():
        if not (config.push and (out / MANIFEST).is_file()):
            raise ThinklensError(f"{out} already exists: pass a new OUT directory (publish never overwrites one), "
                                 "or --push ORG/NAME to upload the release it holds")
    else:
        saes = _sae_folders(run)
        if not run.features_db.is_file():
            raise ThinklensError(f"no feature database in {run.root}: run `thinklens index {run.root}` first")
        resumed = _build(config, run, out, saes, show_progress)
    manifest = json.loads((out / MANIFEST).read_text())
    files = manifest["files"]
    result = PublishResult(out, len(files), sum(entry["bytes"] for entry in files.values()), manifest["saes"],
                           resumed)
    if config.push:
        result.pushed = push_release(out, config.push, config.private)
    return result


def _build(config: PublishConfig, run: Any, out: Path, saes: dict[str, Path], show_progress: bool) -> int:
    """Run the steps not yet done into the staging directory and rename it to `out`; returns the steps resumed."""
    staging = out.parent / f".{out.name}.partial"
    release = _Release(staging, run, config.name or run.root.resolve().name, saes, config, {})
    fingerprint = _fingerprint(release)
    state = _read_state(staging)
    if state.get("fingerprint") != fingerprint:
        if staging.exists():
            shutil.rmtree(staging)  # a killed publish of other inputs: nothing else is named so
        state = {"fingerprint": fingerprint, "done": {}, "files": {}}
    staging.mkdir(parents=True, exist_ok=True)
    resumed = len(state["done"])
    release.files = state["files"]  # the one dict: steps add to it, the state record saves it
    with progress_bar("publish", total=len(PUBLISH_STEPS), enabled=show_progress) as bar:
        bar.advance(resumed)
        for step, write in PUBLISH_STEPS.items():
            release.facts.update(state["done"].get(step, {}))
            if step in state["done"]:
                continue
            bar.advance(0, status=step)
            written = _run_step(release, write)
            release.files.update(written.pop("files"))
            state["done"][step] = written
            release.facts.update(written)
            _write_state(staging, state)
            bar.advance(1)
    (staging / STATE).unlink()
    os.replace(staging, out)
    return resumed


def _run_step(release: _Release, write: Callable[[_Release], dict[str, Any]]) -> dict[str, Any]:
    """One step: its files are cleared first (a killed try leaves part of them), written, then hashed."""
    from thinklens.models.loader import file_sha256

    facts = write(release)
    files = {}
    for name in facts.pop("wrote"):
        path = release.staging / name
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return {**facts, "files": files}


def _fingerprint(release: _Release) -> dict[str, Any]:
    """What the release is made of: the settings, and the size and mtime of every file it reads."""
    run = release.run
    inputs = [run.features_db, run.map_png, run.eval_json, run.findings_json, run.root / "run.yaml",
              *(path for directory in release.saes.values() for path in sorted(directory.iterdir())),
              *(run.trace_store.parts() if release.config.traces else [])]
    stats = {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in inputs if path.is_file()}
    return {"run": str(run.root.resolve()), "name": release.name, "traces": release.config.traces,
            "push": release.config.push, "inputs": stats}


def _read_state(staging: Path) -> dict[str, Any]:
    try:
        return json.loads((staging / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(staging: Path, state: dict[str, Any]) -> None:
    temporary = staging / f"{STATE}.tmp"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, staging / STATE)


def _sae_folders(run: Any) -> dict[str, Path]:
    """hook folder name → SAE directory: the run's SAE and those `train --distribute-layers` wrote."""
    from thinklens.sae.formats import CFG_FILE, sae_metadata

    if not (run.sae / CFG_FILE).is_file():
        raise ThinklensError(f"no trained SAE in {run.root}: run `thinklens train {run.root}` first")
    folders = {sae_metadata(run.sae).get("hook_name") or "sae": run.sae}
    if run.saes.is_dir():
        for directory in sorted(run.saes.iterdir()):
            if (directory / CFG_FILE).is_file():
                folders[directory.name] = directory
    return folders


def _write_saes(release: _Release) -> dict[str, Any]:
    from thinklens.sae.formats import CFG_FILE, WEIGHTS_FILE, in_current_saelens_layout, resave_sae

    wrote = []
    for hook, directory in release.saes.items():
        target = release.staging / hook
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        if not in_current_saelens_layout(directory):  # an older cfg.json SAELens 6 cannot open: written anew
            resave_sae(directory, target)
        else:
            for file in (CFG_FILE, WEIGHTS_FILE):
                shutil.copyfile(directory / file, target / file)
        wrote += [f"{hook}/{file.name}" for file in sorted(target.iterdir())]
    return {"saes": sorted(release.saes), "wrote": wrote}


def _copy_database(release: _Release) -> dict[str, Any]:
    features = release.staging / "features"
    features.mkdir(exist_ok=True)
    target = features / "features.db"
    target.unlink(missing_ok=True)
    with closing(sqlite3.connect(f"file:{release.run.features_db}?mode=ro", uri=True)) as source, \
            closing(sqlite3.connect(target)) as copy:
        source.backup(copy)  # a consistent copy even of a database a reader holds open
    return {"wrote": ["features/features.db"]}


def _release_table(table: str) -> Callable[[_Release], dict[str, Any]]:
    def write(release: _Release) -> dict[str, Any]:
        ddb = f"features/{release.name}.ddb"
        write_release_table(release.staging / "features" / "features.db", release.staging / ddb, table)
        return {"wrote": [ddb] if table == list(RELEASE_COLUMNS)[-1] else []}  # hashed once, when whole
    return write


def _write_labels(release: _Release) -> dict[str, Any]:
    target = release.staging / "features" / "autointerp.db"
    target.unlink(missing_ok=True)
    labels = write_autointerp(release.staging / "features" / "features.db", target)
    return {"labels": labels, "wrote": ["features/autointerp.db"]}


def _write_traces(release: _Release) -> dict[str, Any]:
    """The trace store's parts as one Parquet file (part by part: never the whole store in memory)."""
    parts = release.run.trace_store.parts() if release.config.traces else []
    if not parts:
        return {"traces": 0, "wrote": []}
    target = release.staging / TRACES_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    rows, writer = 0, None
    try:
        for part in parts:
            table = pq.read_table(part)
            writer = writer or pq.ParquetWriter(target, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    (release.staging / TRACES_DIR / "README.md").write_text(dataset_card(release.run, release.name, rows))
    return {"traces": rows, "wrote": [TRACES_FILE, f"{TRACES_DIR}/README.md"]}


def _write_cards(release: _Release) -> dict[str, Any]:
    run, staging = release.run, release.staging
    wrote = ["README.md", "pretrained_saes.yaml"]
    if run.map_png.is_file():
        shutil.copyfile(run.map_png, staging / "map.png")
        wrote.append("map.png")
    facts = {**release.facts, "name": release.name, "has_map": run.map_png.is_file(),
             "traces_repo": traces_repo(release.config.push) if release.config.push and release.facts["traces"]
             else None}
    (staging / "README.md").write_text(model_card(run, release.saes, facts))
    (staging / "pretrained_saes.yaml").write_text(pretrained_saes_entry(release.name, release.config.push, run,
                                                                        release.saes))
    return {"wrote": wrote}


def _write_manifest(release: _Release) -> dict[str, Any]:
    manifest = {"format_version": 1, "name": release.name, "saes": release.facts["saes"],
                "files": dict(sorted(release.files.items()))}
    (release.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {"wrote": []}


PUBLISH_STEPS: dict[str, Callable[[_Release], dict[str, Any]]] = {  # step → what writes it (in this order)
    "saes": _write_saes,
    "features.db": _copy_database,
    **{f"release {table}": _release_table(table) for table in RELEASE_COLUMNS},
    "autointerp": _write_labels,
    "traces": _write_traces,
    "cards": _write_cards,
    "manifest": _write_manifest,
}


def traces_repo(repo_id: str) -> str:
    """The dataset repository the traces of the model repository `repo_id` are pushed to."""
    return f"{repo_id}-traces"


def push_targets(out: Path, repo_id: str) -> list[PushTarget]:
    """The repositories a push of `out` writes, in order: the traces dataset first (the model card links it),
    then the model repository with everything but the traces."""
    targets = []
    if (out / TRACES_FILE).is_file():
        targets.append(PushTarget(traces_repo(repo_id), "dataset", out / TRACES_DIR))
    targets.append(PushTarget(repo_id, "model", out, (f"{TRACES_DIR}/*", f"{TRACES_DIR}/**")))
    return targets


def push_release(out: Path, repo_id: str, private: bool) -> list[str]:
    """Upload `out` to the hub (`push_targets`); returns the commit URLs."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ThinklensError("--push needs huggingface_hub: pip install huggingface_hub") from None
    api, commits = HfApi(), []
    for target in push_targets(out, repo_id):
        try:
            api.create_repo(target.repo_id, repo_type=target.repo_type, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=str(target.folder), repo_id=target.repo_id,
                                       repo_type=target.repo_type, ignore_patterns=list(target.ignore) or None,
                                       commit_message=f"thinklens publish {out.name}")
        except Exception as exc:  # noqa: BLE001 - offline, refused, unauthorised: each is one line naming the fix
            done = f"pushed {', '.join(commits)}; " if commits else "nothing was reported pushed; "
            raise ThinklensError(f"could not push {target.folder} to the {target.repo_type} {target.repo_id} "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}): "
                                 f"{done}{out} is complete: `thinklens publish RUN {out} --push {repo_id}` pushes it "
                                 "again when the hub is reachable (HF_TOKEN set)") from None
        commits.append(str(getattr(commit, "commit_url", commit)))
    return commits
