"""The main job's plan: the stages in order, the run config file, and what each stage leaves behind.

A run config is one YAML file: an optional `out:` (the run directory) and one section per stage
whose keys are that stage command's options (`thinklens STAGE --help` lists them; the reference
file `configs/reference.yaml`, generated from the CLI, lists every key with its default). The same
file drives `thinklens run` and any single stage (`thinklens train RUN --config run.yaml`): the
stage reads its own section; options given on the command line win.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from thinklens.errors import ThinklensError

STAGES: tuple[str, ...] = (
    "collect", "harvest", "train", "eval", "index", "label", "analyze", "map", "sweep", "report",
)
TOP_LEVEL_KEYS = {"out", "description"}


def load_run_config(path: Path) -> dict[str, Any]:
    """Read a run config: {'out': ..., stage: {option: value}}; unknown stage names are refused."""
    path = Path(path)
    if not path.is_file():
        raise ThinklensError(f"no run config at {path}: pass an existing YAML file (see configs/reference.yaml)")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ThinklensError(f"{path} is not valid YAML ({exc}); fix the file") from exc
    if not isinstance(document, dict):
        raise ThinklensError(f"{path} must be a mapping of stage names to settings, not {type(document).__name__}")
    if "stages" in document and "format_version" in document:  # a run's own run.yaml: follow its config
        document = document.get("config") or {}
    unknown = sorted(set(document) - set(STAGES) - TOP_LEVEL_KEYS)
    if unknown:
        raise ThinklensError(
            f"{path}: unknown section(s) {', '.join(unknown)}; sections are {', '.join(STAGES)} (and 'out')"
        )
    for stage in STAGES:
        section = document.get(stage)
        if section is not None and not isinstance(section, dict):
            raise ThinklensError(f"{path}: section '{stage}' must be a mapping of option names to values")
    return document


def stage_section(config: dict[str, Any], stage: str, known: set[str], source: Path | str) -> dict[str, Any]:
    """The options of `stage` in `config`, with '-' spelled '_'; an unknown option is refused by name."""
    section = {key.replace("-", "_"): value for key, value in (config.get(stage) or {}).items()}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ThinklensError(
            f"{source}: unknown option(s) {', '.join(unknown)} in section '{stage}'; "
            f"its options are {', '.join(sorted(known))}"
        )
    return section


def stages_from(start: str | None) -> list[str]:
    """The stages to force: `start` and every one after it (none when `start` is None)."""
    if start is None:
        return []
    if start not in STAGES:
        raise ThinklensError(f"unknown stage {start!r} for --from; stages are {', '.join(STAGES)}")
    return list(STAGES[STAGES.index(start):])


def stage_artifacts(run: Path, stage: str) -> list[Path]:
    """What a stage writes into the run directory (removed when the stage is forced)."""
    run = Path(run)
    return {
        "collect": [run / "traces"],
        "harvest": [run / "activations"],
        "train": [run / "sae"],
        "eval": [run / "sae" / "eval.json"],
        "index": [run / "features.db"],
        "label": [],  # labels live in features.db; the stage rewrites them
        "analyze": [run / "analysis" / f"{name}.{suffix}" for name in ("prefix", "sinks", "shift")
                    for suffix in ("json", "png")],
        "map": [run / "map.html", run / "map.png", run / "analysis" / "map.json"],
        "sweep": [run / "sweeps"],
        "report": [run / "report.html"],
    }[stage]


def remove_artifacts(run: Path, stage: str) -> list[Path]:
    """Delete what `stage` wrote so that it runs again; returns what was removed."""
    removed = []
    for path in stage_artifacts(run, stage):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        elif path.exists():
            path.unlink()
            removed.append(path)
    return removed
