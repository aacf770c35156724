"""Write the analyses and the map as JSON + plots, skipping each one whose inputs and settings are unchanged.

Every JSON document is the envelope of `thinklens.files` (`format_version`, `inputs`, `config`,
`result`); `inputs` are the traces' identity and count and, for what is made from the feature
database, the SAE's sha256 and a digest of the labels (shift and map show labels: re-labelling makes
them stale). A re-run whose inputs and config match the file's leaves it (and its plot) alone
(`files.fresh_result`, the one freshness rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thinklens.analysis.featuremap import FeatureMap, MapConfig, feature_map, plot_map
from thinklens.analysis.prefix import plot_prefix, prefix_statistics
from thinklens.analysis.shift import ShiftConfig, plot_shift, segment_shift
from thinklens.analysis.sinks import SinkConfig, analyze_sinks, plot_sinks
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.features.db import FeatureDB
from thinklens.files import fresh_result, write_envelope
from thinklens.models.loader import LoadedModel, load_model, resolve_device


class AnalyzeConfig(BaseModel):
    """Settings of `thinklens analyze`: which analyses run and how."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sinks: SinkConfig = Field(default_factory=SinkConfig, description="Massive activations and attention sinks.")
    shift: ShiftConfig = Field(default_factory=ShiftConfig, description="Segment shift of the SAE's features.")
    skip_sinks: bool = Field(default=False, description="Leave out the sink analysis (it runs the model).")
    skip_shift: bool = Field(default=False, description="Leave out the segment shift (it needs sae/ and features.db).")
    device: str = Field(
        default="auto", description="Where the model (sinks) and the SAE (shift) run: 'auto' (cuda when available, "
        "else cpu), 'cpu', 'cuda:1', ..."
    )


@dataclass
class AnalysisResult:
    """What `run_analyses` wrote (or found already written)."""

    written: dict[str, list[Path]] = field(default_factory=dict)  # analysis -> its files
    skipped: list[str] = field(default_factory=list)  # analyses already up to date
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # analysis -> its JSON result


def run_analyses(config: AnalyzeConfig, traces_dir: Path, activations_dir: Path, sae_dir: Path, db_path: Path,
                 out_dir: Path, show_progress: bool = True) -> AnalysisResult:
    """Prefix statistics, then sinks (model), then segment shift (SAE + DB), each into `out_dir`."""
    resolve_device(config.device)  # a device this machine lacks fails before anything is written
    out_dir = Path(out_dir)
    outcome = AnalysisResult()
    traces = _traces_inputs(traces_dir)
    _run_one(outcome, "prefix", out_dir, traces, {}, lambda: _prefix(traces_dir, out_dir))
    if not config.skip_sinks:
        _run_one(outcome, "sinks", out_dir, traces, config.sinks.model_dump(mode="json"),
                 lambda: _sinks(traces_dir, config.sinks, out_dir, show_progress, config.device))
    if not config.skip_shift:
        if not Path(db_path).is_file():
            raise ThinklensError(f"the segment shift needs {db_path}: run `thinklens index` first, or pass --skip-shift")
        inputs = {**traces, **_sae_inputs(db_path)}
        _run_one(outcome, "shift", out_dir, inputs, config.shift.model_dump(mode="json"),
                 lambda: _shift(sae_dir, activations_dir, db_path, config.shift, out_dir, show_progress, config.device))
    return outcome


def write_feature_map(config: MapConfig, sae_dir: Path, db_path: Path, html_path: Path, png_path: Path,
                      json_path: Path) -> tuple[dict[str, Any], bool]:
    """Draw map.html and map.png and write the points to `json_path`; returns (result, skipped)."""
    from thinklens.analysis.interactive_map import write_map_html

    html_path, png_path, json_path = Path(html_path), Path(png_path), Path(json_path)
    inputs = _sae_inputs(db_path)
    existing = fresh_result(json_path, inputs, config.model_dump(mode="json"), [html_path, png_path])
    if existing is not None:
        return existing, True
    layout: FeatureMap = feature_map(sae_dir, db_path, config)
    write_map_html(layout, html_path)
    plot_map(layout, png_path)
    result = layout.to_json()
    write_envelope(json_path, inputs, config.model_dump(mode="json"), result)
    return result, False


# Raised when an analysis's result gains content, so that results written before are made again.
RESULT_VERSIONS = {"prefix": 1, "sinks": 2, "shift": 2}  # sinks 2: per-trace places; shift 2: merged, split-half


def _run_one(outcome: AnalysisResult, name: str, out_dir: Path, inputs: dict[str, Any], config: dict[str, Any],
             compute) -> None:
    inputs = {**inputs, "result_version": RESULT_VERSIONS[name]}
    json_path = out_dir / f"{name}.json"
    png_path = out_dir / f"{name}.png"
    existing = fresh_result(json_path, inputs, config, [png_path])
    if existing is not None:
        outcome.skipped.append(name)
        outcome.results[name] = existing
        return
    result = compute()
    write_envelope(json_path, inputs, config, result)
    outcome.written[name] = [json_path, png_path]
    outcome.results[name] = result


def _prefix(traces_dir: Path, out_dir: Path) -> dict[str, Any]:
    report = prefix_statistics(traces_dir)
    plot_prefix(report, out_dir / "prefix.png")
    return report.to_json()


def _sinks(traces_dir: Path, config: SinkConfig, out_dir: Path, show_progress: bool, device: str) -> dict[str, Any]:
    loaded = _model_of(traces_dir, device)
    report = analyze_sinks(loaded, traces_dir, config, show_progress=show_progress)
    plot_sinks(report, out_dir / "sinks.png")
    return report.to_json()


def _shift(sae_dir: Path, activations_dir: Path, db_path: Path, config: ShiftConfig, out_dir: Path,
           show_progress: bool, device: str) -> dict[str, Any]:
    report, rates = segment_shift(sae_dir, activations_dir, db_path, config, show_progress=show_progress, device=device)
    plot_shift(report, rates, out_dir / "shift.png")
    return report.to_json()


def _model_of(traces_dir: Path, device: str) -> LoadedModel:
    """The model that wrote the traces, placed on `device` (`auto`: the GPU when there is one)."""
    return load_model(TraceStore(traces_dir).model_config(device=device))


def _traces_inputs(traces_dir: Path) -> dict[str, Any]:
    store = TraceStore(traces_dir)
    meta = store.meta()
    if meta is None:
        raise ThinklensError(f"no traces in {traces_dir}: run `thinklens collect` first")
    return {"traces": len(store), "traces_identity": meta["identity"]}


def _sae_inputs(db_path: Path) -> dict[str, Any]:
    """What a result made from the feature database depends on: the SAE, the tokens it indexed, the labels."""
    with FeatureDB(db_path) as db:
        meta = db.meta()
        labels = db.labels_digest()
    return {"sae_sha256": meta.get("sae_sha256"), "indexed_tokens": meta.get("indexed_tokens"), "labels": labels}
