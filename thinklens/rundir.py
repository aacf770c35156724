"""The run directory: where each stage's artifact lives, and `run.yaml`, the record of what ran.

The library's stage configs know nothing of run directories; the CLI (and later `thinklens run`)
composes them with this layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from thinklens.files import atomic_path

RUN_YAML = "run.yaml"
RUN_FORMAT_VERSION = 1


def traces_dir(run: Path) -> Path:
    return Path(run) / "traces"


def activations_dir(run: Path) -> Path:
    return Path(run) / "activations"


def sae_dir(run: Path) -> Path:
    return Path(run) / "sae"


def features_db(run: Path) -> Path:
    return Path(run) / "features.db"


def analysis_dir(run: Path) -> Path:
    return Path(run) / "analysis"


def record_config(run: Path, config: dict[str, Any]) -> Path:
    """Write the run config that `thinklens run` follows under `config:` in RUN/run.yaml."""
    return _update_run_yaml(run, lambda document: document.__setitem__("config", config))


def record_stage(run: Path, stage: str, asked: dict[str, Any], resolved: dict[str, Any]) -> Path:
    """Write what a stage was asked and what it resolved to under `stage:` in RUN/run.yaml."""
    return _update_run_yaml(
        run, lambda document: document.setdefault("stages", {}).__setitem__(stage, {"asked": asked, "resolved": resolved})
    )


def _update_run_yaml(run: Path, change) -> Path:
    path = Path(run) / RUN_YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = yaml.safe_load(path.read_text()) if path.is_file() else {}
    document = document or {}
    document["format_version"] = RUN_FORMAT_VERSION
    change(document)
    with atomic_path(path) as temp:
        temp.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path
