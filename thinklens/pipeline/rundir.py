"""The run directory: the one place that knows where each artifact lives, and `run.yaml`.

```
RUN/
  run.yaml          RunRecord: the RunConfig that ran (`config`) and what each stage resolved (`stages`)
  traces/           collect          activations/   harvest         sae/           train
  sae/eval.json     eval (+ sae/saebench/*_eval_results.json, SAEBench's layout)
  saes/layers.L.resid_post/   train --distribute-layers: the SAEs of the store's other layers
  features.db       index (+ label)  analysis/*.json analyze, map
  map.html map.png  map              sweeps/NAME/   sweep           report.html    report
```

Stages get a `RunDir` and ask it for paths and typed artifacts; nothing else spells the layout.
Every path it deletes lies inside RUN (a symlink inside RUN is unlinked, never followed); writes are
confined the same way while a stage holds the run's lock (`files.confine_writes`).
"""

from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError, yaml_problem
from thinklens.files import atomic_path

RUN_FORMAT_VERSION = 2  # 1: `config:` held each stage's CLI options; 2: the RunConfig itself


class StageRecord(BaseModel):
    """What one stage was asked and what it resolved to (one entry of run.yaml's `stages`)."""

    model_config = ConfigDict(extra="allow")

    asked: dict[str, Any] = Field(default_factory=dict, description="The stage config that ran.")
    resolved: dict[str, Any] = Field(default_factory=dict, description="What the stage found or decided.")


class RunRecord(BaseModel):
    """`run.yaml`: the record of a run."""

    model_config = ConfigDict(extra="allow")

    format_version: int = Field(default=RUN_FORMAT_VERSION, description="Layout version of run.yaml.")
    config: dict[str, Any] | None = Field(default=None, description="The run config `thinklens run` followed.")
    stages: dict[str, StageRecord] = Field(default_factory=dict, description="One record per stage that did work.")


class RunDir:
    """A run directory: artifact paths as properties, typed artifacts, run.yaml, confined deletes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------------------ paths
    @property
    def run_yaml(self) -> Path:
        return self.root / "run.yaml"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    @property
    def sae(self) -> Path:
        return self.root / "sae"

    @property
    def saes(self) -> Path:
        return self.root / "saes"

    def layer_sae(self, layer: int) -> Path:
        """Where `train --distribute-layers` puts the SAE of a layer other than the run's own (RUN/sae)."""
        return self.saes / f"layers.{layer}.resid_post"

    @property
    def sae_weights(self) -> Path:
        return self.sae / "sae_weights.safetensors"

    @property
    def sae_cfg(self) -> Path:
        return self.sae / "cfg.json"

    @property
    def eval_json(self) -> Path:
        return self.sae / "eval.json"

    def saebench_json(self, eval_type: str) -> Path:
        """SAEBench's result file of one eval type (`core`, `sparse_probing`)."""
        return self.sae / "saebench" / f"{eval_type}_eval_results.json"

    @property
    def features_db(self) -> Path:
        return self.root / "features.db"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def analysis_json(self, name: str) -> Path:
        return self.analysis / f"{name}.json"

    def analysis_png(self, name: str) -> Path:
        return self.analysis / f"{name}.png"

    @property
    def map_html(self) -> Path:
        return self.root / "map.html"

    @property
    def map_png(self) -> Path:
        return self.root / "map.png"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    def sweep_dir(self, name: str) -> Path:
        return self.sweeps / _plain_name("sweep", name)

    @property
    def findings_json(self) -> Path:
        return self.root / "findings.json"

    @property
    def findings_png(self) -> Path:
        return self.analysis / "findings.png"

    @property
    def contrasts(self) -> Path:
        return self.root / "contrasts"

    def contrast_dir(self, name: str) -> Path:
        return self.contrasts / _plain_name("contrast", name)

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_json(self) -> Path:
        return self.analysis / "report.json"

    def artifact(self, name: str) -> Path:
        """The path of an artifact as stages declare it: `traces`, `features_db`, `analysis_json:shift`, …"""
        attribute, _, argument = name.partition(":")
        value = getattr(self, attribute, None)
        if argument and callable(value):
            value = value(argument)
        if not isinstance(value, Path):
            raise KeyError(f"RunDir has no artifact {name!r}")
        return value

    # ------------------------------------------------------------------------- typed artifacts
    @cached_property
    def trace_store(self):
        from thinklens.data.traces import TraceStore

        return TraceStore(self.traces)

    @cached_property
    def activation_store(self):
        from thinklens.activations.store import ActivationStore

        return ActivationStore(self.activations)

    def require(self, name: str, stage: str) -> Path:
        """The artifact's path; a one-line error naming the stage to run when it is missing."""
        path = self.artifact(name)
        if not path.exists():
            target = f"--out {self.root}" if stage == "collect" else str(self.root)
            raise ThinklensError(f"no {path.name} in {self.root}: run `thinklens {stage} {target}` first")
        return path

    # ------------------------------------------------------------------------------ run.yaml
    def record(self) -> RunRecord:
        """run.yaml as a typed record (an empty one when there is none yet)."""
        if not self.run_yaml.is_file():
            return RunRecord()
        try:
            document = yaml.safe_load(self.run_yaml.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ThinklensError(f"{self.run_yaml} is not valid YAML ({yaml_problem(exc)}): fix or remove it") from exc
        return RunRecord.model_validate(document)

    def record_config(self, config: dict[str, Any]) -> Path:
        """Write the run config that `thinklens run` follows under `config:` in run.yaml."""
        record = self.record()
        record.config = config
        return self._write_record(record)

    def record_stage(self, stage: str, asked: dict[str, Any], resolved: dict[str, Any]) -> Path:
        """Write what a stage was asked and what it resolved to under `stages.<stage>` in run.yaml."""
        record = self.record()
        record.stages[stage] = StageRecord(asked=asked, resolved=resolved)
        return self._write_record(record)

    def _write_record(self, record: RunRecord) -> Path:
        record.format_version = RUN_FORMAT_VERSION
        text = yaml.safe_dump(record.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
        if self.run_yaml.is_file() and self.run_yaml.read_text() == text:
            return self.run_yaml  # unchanged: leave the file (and what depends on it) alone
        with atomic_path(self.run_yaml) as temp:
            temp.write_text(text)
        return self.run_yaml

    # ------------------------------------------------------------------------------ deletes
    def remove(self, path: Path) -> bool:
        """Delete `path` (a file, a directory, or a symlink: the link only), which must lie inside RUN."""
        path = Path(path)
        root = self.root.resolve()
        parent = path.parent.resolve()
        if parent != root and root not in parent.parents:
            raise ThinklensError(f"refusing to delete {path}: it lies outside the run directory {self.root}")
        if path.is_symlink() or path.is_file():
            path.unlink()
            return True
        if path.is_dir():
            shutil.rmtree(path)
            return True
        return False


def _plain_name(kind: str, name: str) -> str:
    """`name` when it is one plain directory name (a sweep's or a contrast's), so it stays inside RUN."""
    if not name or "/" in name or name in (".", ".."):
        raise ThinklensError(f"{kind} name {name!r} must be a plain directory name (no '/')")
    return name
