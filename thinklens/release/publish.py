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

Everything is written into a hidden sibling of OUT and renamed into place at the end, so OUT is
either absent or complete; an existing OUT is refused. `push` uploads OUT with
`huggingface_hub.upload_folder` (the only network use); it reports the commit it made.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from thinklens.errors import ThinklensError
from thinklens.release.card import dataset_card, model_card, pretrained_saes_entry
from thinklens.release.config import PublishConfig
from thinklens.release.goodfire import write_autointerp, write_release_ddb

MANIFEST = "manifest.json"
TRACES_FILE = "traces/data/train-00000-of-00001.parquet"


@dataclass
class PublishResult:
    out: Path
    files: int
    bytes: int
    saes: list[str]
    pushed: str | None = None  # the hub commit URL, when pushed


def publish(config: PublishConfig, run: Any, out: Path) -> PublishResult:
    """Package the run (a RunDir) into `out`; push it when `config.push` names a repository."""
    out = Path(out)
    saes = _sae_folders(run)
    if not run.features_db.is_file():
        raise ThinklensError(f"no feature database in {run.root}: run `thinklens index {run.root}` first")
    if out.exists():
        raise ThinklensError(f"{out} already exists: pass a new OUT directory (publish never overwrites one)")
    name = config.name or run.root.resolve().name
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # a killed publish's: nothing else is named so
    staging.mkdir(parents=True)
    try:
        _write(staging, run, name, saes, config)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = json.loads((out / MANIFEST).read_text())
    result = PublishResult(out, len(manifest["files"]), sum(f["bytes"] for f in manifest["files"].values()),
                           sorted(saes))
    if config.push:
        result.pushed = push_folder(out, config.push, config.private)
    return result


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


def _write(staging: Path, run: Any, name: str, saes: dict[str, Path], config: PublishConfig) -> None:
    from thinklens.sae.formats import CFG_FILE, WEIGHTS_FILE, in_current_saelens_layout, resave_sae

    for hook, directory in saes.items():
        (staging / hook).mkdir()
        if not in_current_saelens_layout(directory):  # an older cfg.json SAELens 6 cannot open: written anew
            resave_sae(directory, staging / hook)
            continue
        for file in (CFG_FILE, WEIGHTS_FILE):
            shutil.copyfile(directory / file, staging / hook / file)
    features = staging / "features"
    features.mkdir()
    with closing(sqlite3.connect(f"file:{run.features_db}?mode=ro", uri=True)) as source, \
            closing(sqlite3.connect(features / "features.db")) as copy:
        source.backup(copy)  # a consistent copy even of a database a reader holds open
    write_release_ddb(features / "features.db", features / f"{name}.ddb")
    labels = write_autointerp(features / "features.db", features / "autointerp.db")
    traces = _write_traces(run, staging) if config.traces else 0
    if run.map_png.is_file():
        shutil.copyfile(run.map_png, staging / "map.png")
    facts = {"name": name, "saes": sorted(saes), "labels": labels, "traces": traces,
             "has_map": (staging / "map.png").is_file()}
    (staging / "README.md").write_text(model_card(run, saes, facts))
    (staging / "pretrained_saes.yaml").write_text(pretrained_saes_entry(name, config.push, run, saes))
    if traces:
        (staging / "traces" / "README.md").write_text(dataset_card(run, name, traces))
    _write_manifest(staging, name)


def _write_traces(run: Any, staging: Path) -> int:
    """The trace store's parts as one Parquet file (part by part: never the whole store in memory)."""
    parts = run.trace_store.parts()
    if not parts:
        return 0
    target = staging / TRACES_FILE
    target.parent.mkdir(parents=True)
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
    return rows


def _write_manifest(staging: Path, name: str) -> None:
    from thinklens.models.loader import file_sha256

    files = {path.relative_to(staging).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(p for p in staging.rglob("*") if p.is_file())}
    (staging / MANIFEST).write_text(json.dumps({"format_version": 1, "name": name, "files": files}, indent=2) + "\n")


def push_folder(out: Path, repo_id: str, private: bool) -> str:
    """Upload `out` as the model repository `repo_id` (created if missing); returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ThinklensError("--push needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model",
                                   commit_message=f"thinklens publish {out.name}")
    except Exception as exc:  # noqa: BLE001 - offline, refused, unauthorised: each is one line naming the fix
        raise ThinklensError(f"could not push {out} to {repo_id} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}): nothing was reported pushed; "
                             f"{out} is complete, push it again when the hub is reachable (HF_TOKEN set)") from None
    return str(getattr(commit, "commit_url", commit))
