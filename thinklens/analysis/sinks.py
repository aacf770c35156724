"""Massive activations and attention sinks, per position and layer, placed against the segments.

For a sample of traces, one teacher-forced forward pass with eager attention gives, at every layer:
- the residual norm of each position and its largest |activation|, each divided by the sequence's
  median (massive activations, Sun et al. 2024: a few positions carry norms 100-1000× the rest);
- the attention mass each position receives: for key j, the mean over later queries i > j of the
  attention weight a[h, i, j]; averaged over heads, and per head compared with a threshold (0.3 by
  default): a head whose later queries put more than that on j on average treats j as a sink.
Positions are sorted into places (first token, chat template, prompt, the body and the last tokens
of the opening prefix, the first thinking tokens, the rest of the thinking, the answer) and also
aligned on the prefix's end across traces, so one can see whether sinks sit at the start of the
response or near the end of the "Okay, so the user..." opening.
Attention weights are reduced inside a hook at each layer, so memory is one layer's (heads, T, T).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from thinklens.activations.capture import capture_resid_post
from thinklens.activations.harvest import special_mask
from thinklens.data.segments import PREFIX, PROMPT, THINKING, Segments
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.figures import pyplot, save_figure
from thinklens.models.layers import decoder_blocks
from thinklens.models.loader import LoadedModel
from thinklens.progress import progress_bar

PLACES: tuple[str, ...] = (
    "first_token", "template", "prompt", "prefix", "prefix_end", "thinking_start", "thinking", "answer",
)


class SinkConfig(BaseModel):
    """Which traces the sink analysis reads and how it decides what a sink is."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    traces: int = Field(
        default=16, ge=1, description="Traces analysed (the first N, those with a matched prefix first)."
    )
    max_tokens: int = Field(default=512, ge=8, description="Tokens per trace read (longer traces are cut).")
    sink_threshold: float = Field(
        default=0.3, gt=0, le=1, description="A head treats a position as a sink above this mean attention weight."
    )
    edge_tokens: int = Field(
        default=3, ge=1, description="Tokens counted as the prefix's end and as the thinking's start."
    )
    window: int = Field(default=24, ge=1, description="Positions either side of the prefix end in the aligned plot.")


@dataclass
class PlaceStats:
    """Averages over every position of one place, across the analysed traces."""

    place: str
    positions: int
    norm_ratio_peak: float  # max over layers of the mean residual norm / sequence median
    max_abs_ratio_peak: float  # max over layers of the mean largest |activation| / sequence median
    attention_mass: float  # mean over layers and heads of the attention received from later queries
    sink_share: float  # share of (layer, head) pairs for which a position here is a sink
    share_of_sinks: float  # share of all sink (position, layer, head) hits that land here
    share_of_sinks_after_first: float  # the same, leaving out the first token


@dataclass
class SinkReport:
    """The sink analysis of a run: a table by place, per-layer curves, and curves aligned on the prefix end."""

    traces: int
    layers: int
    heads: int
    sink_threshold: float
    places: list[PlaceStats]
    per_layer: dict[str, dict[str, list[float]]]  # place -> metric -> one value per layer
    aligned: dict[str, list[float]]  # offsets and metric curves around the prefix end (first token left out)
    # One entry per trace: place -> positions and that trace's means over them (NaN where it has none),
    # so that statistics of the places can be bootstrapped over traces.
    per_trace: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _TraceMaps:
    """One trace's per-layer, per-position measurements, shape (layers, T) each."""

    norm_ratio: np.ndarray
    max_abs_ratio: np.ndarray
    attention_mass: np.ndarray  # mean over heads; NaN for the last position (no later queries)
    sink_heads: np.ndarray  # number of heads above the threshold
    places: np.ndarray  # (T,) index into PLACES
    prefix_end: int


def analyze_sinks(loaded: LoadedModel, traces_dir: Path, config: SinkConfig, show_progress: bool = True) -> SinkReport:
    """Run the sink analysis on the first `config.traces` traces with a matched prefix."""
    rows = _pick_traces(traces_dir, config.traces)
    special_ids = set(loaded.tokenizer.all_special_ids)
    maps: list[_TraceMaps] = []
    with progress_bar("sinks", total=len(rows), enabled=show_progress) as bar:
        for row in rows:
            maps.append(_measure_trace(loaded, row, config, special_ids))
            bar.advance(1, tokens=len(maps[-1].places))
    heads = _attention_heads(loaded.model)
    return _summarise(maps, config, heads)


def _pick_traces(traces_dir: Path, limit: int) -> list[dict[str, Any]]:
    store = TraceStore(traces_dir)
    if store.meta() is None or len(store) == 0:
        raise ThinklensError(f"no traces in {traces_dir}: run `thinklens collect` first")
    # Traces with a matched prefix first; without one the alignment point is where the thinking starts.
    rows = store.read().to_pylist()
    return sorted(rows, key=lambda row: (not row["prefix_matched"], row["sequence_id"]))[:limit]


@torch.inference_mode()
def _measure_trace(loaded: LoadedModel, row: dict[str, Any], config: SinkConfig, special_ids: set[int]) -> _TraceMaps:
    token_ids = np.asarray(row["token_ids"][: config.max_tokens], dtype=np.int64)
    length = len(token_ids)
    segments = Segments(**{name: row[name] for name in Segments.__dataclass_fields__})
    labels = segments.labels()[:length]
    places = _places(row, segments, labels, loaded.tokenizer, token_ids, special_ids, config.edge_tokens)
    n_layers = len(decoder_blocks(loaded.model)[1])
    received = np.full((n_layers, length), np.nan, dtype=np.float32)
    sink_heads = np.zeros((n_layers, length), dtype=np.float32)
    input_ids = torch.from_numpy(token_ids)[None].to(loaded.device)
    with eager_attention(loaded.model), _received_attention(loaded.model, config.sink_threshold) as attention, \
            capture_resid_post(loaded.model, range(n_layers), stop_early=False) as hidden:
        loaded.model(input_ids=input_ids, use_cache=False)
    for layer, (mass, sinks) in attention.items():
        received[layer], sink_heads[layer] = mass, sinks
    residual = torch.stack([hidden[layer][0].float() for layer in range(n_layers)])  # (layers, T, d_model)
    norms = residual.norm(dim=-1)
    max_abs = residual.abs().amax(dim=-1)
    return _TraceMaps(
        norm_ratio=(norms / norms.median(dim=-1, keepdim=True).values).cpu().numpy(),
        max_abs_ratio=(max_abs / max_abs.median(dim=-1, keepdim=True).values).cpu().numpy(),
        attention_mass=received,
        sink_heads=sink_heads,
        places=places,
        prefix_end=min(segments.prefix_end, length),
    )


def _places(row: dict[str, Any], segments: Segments, labels: np.ndarray, tokenizer: Any, token_ids: np.ndarray,
            special_ids: set[int], edge: int) -> np.ndarray:
    """One place index per position (see PLACES)."""
    places = np.full(len(labels), PLACES.index("answer"), dtype=np.int64)
    places[labels == THINKING] = PLACES.index("thinking")
    places[labels == PREFIX] = PLACES.index("prefix")
    places[labels == PROMPT] = PLACES.index("prompt")
    full_labels = segments.labels()
    template = special_mask(tokenizer, row, np.asarray(row["token_ids"]), full_labels, special_ids)[: len(labels)]
    places[(labels == PROMPT) & template] = PLACES.index("template")
    end = segments.prefix_end
    places[max(segments.prefix_start, end - edge): end] = PLACES.index("prefix_end")
    thinking_start = np.flatnonzero(labels[end:] == THINKING)[:edge] + end
    places[thinking_start] = PLACES.index("thinking_start")
    places[0] = PLACES.index("first_token")
    return places


def _attention_heads(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_attention_heads)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch the model to eager attention (the only kind that returns weights) and back on exit."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous and previous != "eager":
            model.set_attn_implementation(previous)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder block's self-attention module (the first submodule whose class name ends in 'Attention')."""
    _, blocks = decoder_blocks(model)
    modules = []
    for block in blocks:
        found = next((m for m in block.modules() if type(m).__name__.endswith("Attention")), None)
        if found is None:
            raise ThinklensError(f"no attention module found in {type(block).__name__}: sinks need eager attention weights")
        modules.append(found)
    return modules


@contextmanager
def _received_attention(model: nn.Module, threshold: float) -> Iterator[dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Yield {layer: (mass received per key averaged over heads, heads above threshold per key)}."""
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def hook_for(layer: int):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise ThinklensError("the attention layers returned no weights: this model does not support eager attention")
            results[layer] = received_attention(weights[0].float(), threshold)

        return hook

    handles = [module.register_forward_hook(hook_for(i)) for i, module in enumerate(_attention_modules(model))]
    try:
        yield results
    finally:
        for handle in handles:
            handle.remove()


def received_attention(weights: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """From one layer's weights (heads, T queries, T keys): per key j, the mean over heads of the mean
    weight later queries i > j give it, and how many heads exceed `threshold` there (NaN / 0 for the
    last key, which no later query sees)."""
    length = weights.shape[-1]
    later = torch.tril(weights, diagonal=-1).sum(dim=-2)  # (heads, T): mass from queries i > j
    counts = torch.arange(length - 1, -1, -1, device=weights.device, dtype=torch.float32)  # T-1-j later queries
    per_head = later / counts.clamp(min=1)
    per_head[:, -1] = float("nan")
    sinks = (per_head > threshold).sum(dim=0).float()  # NaN > t is False
    return per_head.mean(dim=0).cpu().numpy(), sinks.cpu().numpy()


def _summarise(maps: list[_TraceMaps], config: SinkConfig, heads: int) -> SinkReport:
    n_layers = maps[0].norm_ratio.shape[0]
    metrics = ("norm_ratio", "max_abs_ratio", "attention_mass", "sink_heads")
    per_place: dict[str, dict[str, list[np.ndarray]]] = {p: {m: [] for m in metrics} for p in PLACES}
    for trace in maps:
        for index, place in enumerate(PLACES):
            columns = trace.places == index
            for metric in metrics:
                per_place[place][metric].append(getattr(trace, metric)[:, columns])
    total_hits = sum(float(np.nansum(t.sink_heads)) for t in maps)
    hits_after_first = sum(float(np.nansum(t.sink_heads[:, 1:])) for t in maps)
    places, per_layer = [], {}
    for place in PLACES:
        stacked = {m: np.concatenate(per_place[place][m], axis=1) for m in metrics}  # (layers, positions)
        positions = stacked["norm_ratio"].shape[1]
        if positions == 0:
            continue
        layer_means = {m: _nanmean(stacked[m], axis=1) for m in metrics}
        hits = float(np.nansum(stacked["sink_heads"]))
        places.append(PlaceStats(
            place=place,
            positions=positions,
            norm_ratio_peak=float(np.nanmax(layer_means["norm_ratio"])),
            max_abs_ratio_peak=float(np.nanmax(layer_means["max_abs_ratio"])),
            attention_mass=float(np.nanmean(stacked["attention_mass"])) if np.isfinite(stacked["attention_mass"]).any()
            else float("nan"),
            sink_share=float(np.nanmean(stacked["sink_heads"]) / heads),
            share_of_sinks=hits / total_hits if total_hits else 0.0,
            share_of_sinks_after_first=(hits / hits_after_first if hits_after_first and place != "first_token" else 0.0),
        ))
        per_layer[place] = {
            "norm_ratio": layer_means["norm_ratio"].tolist(),
            "attention_mass": layer_means["attention_mass"].tolist(),
            "sink_share": (layer_means["sink_heads"] / heads).tolist(),
        }
    return SinkReport(traces=len(maps), layers=n_layers, heads=heads, sink_threshold=config.sink_threshold,
                      places=places, per_layer=per_layer, aligned=_aligned(maps, config.window, heads),
                      per_trace=[_trace_places(trace, heads) for trace in maps])


def _trace_places(trace: _TraceMaps, heads: int) -> dict[str, dict[str, float]]:
    """One trace's means per place: attention received, norm ratio and sink share (over layers and heads)."""
    summary = {}
    for index, place in enumerate(PLACES):
        columns = trace.places == index
        if not columns.any():
            continue
        attention = trace.attention_mass[:, columns]
        summary[place] = {
            "positions": int(columns.sum()),
            "attention_mass": float(np.nanmean(attention)) if np.isfinite(attention).any() else float("nan"),
            "norm_ratio": float(trace.norm_ratio[:, columns].mean()),
            "sink_share": float(np.nanmean(trace.sink_heads[:, columns]) / heads),
        }
    return summary


def _aligned(maps: list[_TraceMaps], window: int, heads: int) -> dict[str, list[float]]:
    """Curves over offsets -window..window from the prefix end (offset 0 = first token after the prefix)."""
    offsets = np.arange(-window, window + 1)
    sums = {m: np.zeros(len(offsets)) for m in ("norm_ratio", "attention_mass", "sink_share")}
    counts = {m: np.zeros(len(offsets)) for m in sums}
    for trace in maps:
        positions = trace.prefix_end + offsets
        valid = (positions >= 1) & (positions < trace.places.shape[0])  # first token left out: it dwarfs the rest
        values = {
            "norm_ratio": trace.norm_ratio.mean(axis=0),
            "attention_mass": _nanmean(trace.attention_mass, axis=0),
            "sink_share": trace.sink_heads.mean(axis=0) / heads,
        }
        for metric, curve in values.items():
            picked = curve[positions[valid]]
            finite = np.isfinite(picked)
            sums[metric][np.flatnonzero(valid)[finite]] += picked[finite]
            counts[metric][np.flatnonzero(valid)[finite]] += 1
    aligned = {"offset": offsets.tolist()}
    for metric in sums:
        with np.errstate(invalid="ignore"):
            aligned[metric] = (sums[metric] / counts[metric]).tolist()
    aligned["traces"] = counts["norm_ratio"].tolist()
    return aligned


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    total = np.where(finite, values, 0).sum(axis=axis)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_sinks(report: SinkReport, path: Path) -> Path:
    """Three panels: norm ratio and attention mass aligned on the prefix end; sink share per place and layer."""
    plt = pyplot()
    figure, (norms, attention, layers) = plt.subplots(1, 3, figsize=(15, 3.9))
    offsets = report.aligned["offset"]
    norms.plot(offsets, report.aligned["norm_ratio"], marker=".", color="#c44e52")
    norms.set_ylabel("residual norm / sequence median")
    attention.plot(offsets, report.aligned["attention_mass"], marker=".", label="attention received (mean of heads)")
    attention.plot(offsets, report.aligned["sink_share"], marker=".", label=f"share of heads > {report.sink_threshold}")
    attention.legend(fontsize=8)
    for axis, title in ((norms, "massive activations"), (attention, "attention sinks")):
        axis.axvline(-0.5, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("position relative to the prefix end (0 = first token after it)")
        axis.set_title(f"{title}, aligned on the prefix end (first token left out)", fontsize=9)
    for place, curves in report.per_layer.items():
        layers.plot(range(report.layers), curves["sink_share"], marker=".", label=place)
    layers.set_xlabel("layer")
    layers.set_ylabel(f"share of heads > {report.sink_threshold}")
    layers.set_title("sink share per place and layer", fontsize=9)
    layers.legend(fontsize=7, ncol=2)
    figure.suptitle(f"{report.traces} traces, {report.layers} layers × {report.heads} heads", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)
