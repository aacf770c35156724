"""Segment shift: how the SAE's feature distribution changes between prompt, prefix, thinking and answer.

One streaming pass encodes every stored token (special and massive tokens left out, as in training
and indexing) and counts firings per (sequence group, segment, feature): memory is
groups × segments × d_sae counters, whatever the store's size. From those counts:
- the firing rate of each feature in each segment (firings / tokens of the segment);
- each segment's feature distribution p_s(f) = firings of f in s / all firings in s, and the
  Jensen–Shannon divergence (base 2, so within [0, 1]) between every pair of segments, with a
  bootstrap interval from resampling sequence groups with replacement;
- the features most enriched in each segment: log2 of (rate in the segment / rate elsewhere), with
  half a firing added to both so a feature never seen elsewhere gets a finite score.
Sequences are assigned to groups by id, so the bootstrap resamples whole sequences, not tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from thinklens.activations.store import ActivationStore
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.features.db import FeatureDB
from thinklens.figures import pyplot, save_figure
from thinklens.models.loader import resolve_device
from thinklens.progress import progress_bar
from thinklens.sae.formats import check_width, load_sae
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae
from thinklens.stats import group_bootstrap_weights, split_groups


class ShiftConfig(BaseModel):
    """Settings of the segment-shift analysis."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    groups: int = Field(default=64, ge=2, description="Sequence groups resampled by the bootstrap.")
    bootstrap: int = Field(default=200, ge=10, description="Bootstrap resamples for the divergence intervals.")
    top: int = Field(default=10, ge=1, description="Most enriched features listed per segment.")
    min_segment_tokens: int = Field(
        default=100, ge=1, description="Tokens a segment needs to be compared (fewer: listed with its count only)."
    )
    min_firings: int = Field(default=5, ge=1, description="Firings a feature needs in a segment to be listed for it.")
    examples: int = Field(default=3, ge=0, description="Top examples shown per listed feature.")
    batch_size: int = Field(default=4096, ge=1, description="Tokens encoded at once.")
    seed: int = Field(default=0, description="Seed of the bootstrap.")
    layer: int | None = Field(
        default=None, description="Layer the SAE reads; only needed for an SAE that names none and was indexed "
        "without a recorded layer (it may not contradict the SAE's own)."
    )


@dataclass
class Divergence:
    """Jensen–Shannon divergence between two segments' feature distributions, with a 95 % interval."""

    a: str
    b: str
    jsd: float
    low: float
    high: float


@dataclass
class EnrichedFeature:
    """A feature that fires more in one segment than elsewhere."""

    feature_id: int
    label: str | None
    firings: int
    rate: float  # firings per token in the segment
    rate_elsewhere: float
    log2_enrichment: float
    examples: list[dict[str, Any]] = field(default_factory=list)  # before / token / after / strength


@dataclass
class ShiftReport:
    """The segment shift of a run."""

    segments: list[str]  # segments with enough tokens to compare
    tokens: dict[str, int]
    firings: dict[str, int]
    divergences: list[Divergence]
    enriched: dict[str, list[EnrichedFeature]]
    # The prompt with its opening prefix taken as one (the study's grouping), against thinking and answer.
    merged_divergences: list[Divergence] = field(default_factory=list)
    # Noise floor: JSD between two random halves of one segment's sequence groups (no shift at all).
    split_half: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def segment_shift(sae_dir: Path, activations_dir: Path, db_path: Path, config: ShiftConfig,
                  show_progress: bool = True, device: str = "auto") -> tuple[ShiftReport, np.ndarray]:
    """Measure the segment shift; also returns the per-segment firing rates, shape (segments, d_sae).

    The SAE encodes on `device`; its layer is its own, else `config.layer`, else the layer the
    feature database was indexed on.
    """
    placed = resolve_device(device)
    sae = load_sae(sae_dir).to(placed)
    store = ActivationStore(activations_dir)
    check_width(sae, store.d_model, f"the activations in {activations_dir}")
    override = config.layer
    if override is None and sae.config.layer is None:
        with FeatureDB(db_path) as db:
            override = db.meta().get("layer")  # what index resolved for this SAE
    layer = resolve_sae_layer(sae.config.layer, store.layers, override, sae=f"the SAE in {sae_dir}",
                              holder=f"the activations in {activations_dir}")
    counts, tokens = _count_firings(sae, store, layer, config, show_progress)  # (G, S, F), (G, S)
    segment_counts, segment_tokens = counts.sum(axis=0), tokens.sum(axis=0)  # (S, F), (S,)
    present = [s for s in range(len(SEGMENT_NAMES))
               if segment_tokens[s] >= config.min_segment_tokens and segment_counts[s].sum() > 0]
    rates = segment_counts / np.maximum(segment_tokens, 1)[:, None]
    with FeatureDB(db_path) as db:
        enriched = {SEGMENT_NAMES[s]: _enriched(segment_counts, segment_tokens, s, present, config, db) for s in present}
    report = ShiftReport(
        segments=[SEGMENT_NAMES[s] for s in present],
        tokens={SEGMENT_NAMES[s]: int(segment_tokens[s]) for s in range(len(SEGMENT_NAMES))},
        firings={SEGMENT_NAMES[s]: int(segment_counts[s].sum()) for s in range(len(SEGMENT_NAMES))},
        divergences=_divergences(counts, present, config),
        enriched=enriched,
        merged_divergences=_merged_divergences(counts, present, config),
        split_half=_split_half(counts, present, config),
    )
    return report, rates


def _count_firings(sae: Sae, store: ActivationStore, layer: int, config: ShiftConfig,
                   show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    n_segments, d_sae = len(SEGMENT_NAMES), sae.config.d_sae
    counts = torch.zeros(config.groups * n_segments * d_sae, dtype=torch.int64)
    tokens = torch.zeros(config.groups * n_segments, dtype=torch.int64)
    with progress_bar("segment shift", total=store.token_count, enabled=show_progress) as bar:
        for batch in store.kept_batches(layer, config.batch_size, ("sequence_id", "segment")):
            bar.advance(batch.rows, tokens=batch.rows)
            if len(batch.x) == 0:
                continue
            codes = sae.encode(batch.x.to(sae.device), batch_dependent=False)
            active = codes.values > 0
            # (n,) group × segment of each kept row
            row_cells = torch.from_numpy((batch.index["sequence_id"] % config.groups) * n_segments
                                         + batch.index["segment"])
            tokens += torch.bincount(row_cells, minlength=tokens.numel())
            flat = row_cells[codes.rows[active].cpu()] * d_sae + codes.features[active].cpu()
            counts += torch.bincount(flat, minlength=counts.numel())
    return (counts.view(config.groups, n_segments, d_sae).numpy(),
            tokens.view(config.groups, n_segments).numpy())


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JSD in bits between distributions along the last axis (rows are normalised here)."""
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-30)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-30)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1)), 0.0)
        return terms.sum(axis=-1)

    return (kl(p, m) + kl(q, m)) / 2


def _divergences(counts: np.ndarray, present: list[int], config: ShiftConfig) -> list[Divergence]:
    pairs = [((SEGMENT_NAMES[a], [a]), (SEGMENT_NAMES[b], [b])) for i, a in enumerate(present) for b in present[i + 1:]]
    return _divergence_of(counts, pairs, config)


def _split_half(counts: np.ndarray, present: list[int], config: ShiftConfig) -> dict[str, float]:
    """Per segment, the JSD between two random halves of its sequence groups: what sampling alone gives."""
    first, second = split_groups(counts.shape[0], config.seed)
    return {SEGMENT_NAMES[s]: float(jensen_shannon(counts[first, s].sum(0).astype(np.float64),
                                                   counts[second, s].sum(0).astype(np.float64))) for s in present}


def _merged_divergences(counts: np.ndarray, present: list[int], config: ShiftConfig) -> list[Divergence]:
    prompt, prefix = SEGMENT_NAMES.index("prompt"), SEGMENT_NAMES.index("prefix")
    merged = [s for s in (prompt, prefix) if s in present]
    if not merged:
        return []
    others = [s for s in present if s not in (prompt, prefix)]
    return _divergence_of(counts, [(("prompt+prefix", merged), (SEGMENT_NAMES[s], [s])) for s in others], config)


def _divergence_of(counts: np.ndarray, pairs: list[tuple[tuple[str, list[int]], tuple[str, list[int]]]],
                   config: ShiftConfig) -> list[Divergence]:
    """JSD of each pair of (named) segment sets, with its group-bootstrap 95 % interval."""
    weights = group_bootstrap_weights(counts.shape[0], config.bootstrap, config.seed)  # (bootstrap, groups)
    results = []
    for (name_a, a), (name_b, b) in pairs:
        counts_a, counts_b = counts[:, a].sum(axis=1), counts[:, b].sum(axis=1)  # (groups, d_sae)
        observed = float(jensen_shannon(counts_a.sum(0).astype(np.float64), counts_b.sum(0).astype(np.float64)))
        resampled = jensen_shannon(weights @ counts_a, weights @ counts_b)  # (bootstrap,)
        low, high = np.quantile(resampled, [0.025, 0.975])
        results.append(Divergence(name_a, name_b, observed, float(low), float(high)))
    return results


def _enriched(counts: np.ndarray, tokens: np.ndarray, segment: int, present: list[int], config: ShiftConfig,
              db: FeatureDB) -> list[EnrichedFeature]:
    inside = counts[segment].astype(np.float64)
    outside = counts[present].sum(axis=0) - inside
    tokens_out = tokens[present].sum() - tokens[segment]
    if tokens_out == 0:
        return []
    score = np.log2(((inside + 0.5) / (tokens[segment] + 1)) / ((outside + 0.5) / (tokens_out + 1)))
    score[inside < config.min_firings] = -np.inf
    order = [int(f) for f in np.argsort(-score, kind="stable")[: config.top] if np.isfinite(score[f])]
    labels = db.labels(order) if order else {}
    return [
        EnrichedFeature(
            feature_id=f,
            label=labels.get(f),
            firings=int(inside[f]),
            rate=float(inside[f] / tokens[segment]),
            rate_elsewhere=float(outside[f] / tokens_out),
            log2_enrichment=float(score[f]),
            examples=[example.to_json() for example in db.examples(f, top=config.examples, window=8)],
        )
        for f in order
    ]


def plot_shift(report: ShiftReport, rates: np.ndarray, path: Path) -> Path:
    """Heatmap of the enriched features' firing rates across segments (log10), and the divergences."""
    plt = pyplot()
    rows = [(segment, item) for segment in report.segments for item in report.enriched[segment]]
    columns = [SEGMENT_NAMES.index(s) for s in report.segments]
    matrix = np.array([[rates[c, item.feature_id] for c in columns] for _, item in rows]) if rows \
        else np.zeros((1, len(columns)))
    floor = 1e-5  # a rate below one firing in 100k tokens shows as the floor
    scaled = np.log10(np.maximum(matrix, floor))
    height = max(3.0, 0.22 * len(rows) + 1.5)
    figure, (heat, bars) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1.2, 1]})
    image = heat.imshow(scaled, aspect="auto", cmap="viridis", vmin=np.log10(floor), vmax=0)
    heat.set_xticks(range(len(columns)), report.segments)
    heat.set_yticks(range(len(rows)),
                    [f"{item.feature_id} {(item.label or '')[:32]}" for _, item in rows], fontsize=7)
    heat.set_title("the features most enriched in each segment: firing rate per segment", fontsize=9)
    figure.colorbar(image, ax=heat, fraction=0.04, label="log10 firings per token")
    names = [f"{d.a}–{d.b}" for d in report.divergences]
    values = [d.jsd for d in report.divergences]
    # The plug-in JSD can sit outside its bootstrap interval (the estimator is biased): clip the bars at it.
    errors = np.array([[max(d.jsd - d.low, 0.0) for d in report.divergences],
                       [max(d.high - d.jsd, 0.0) for d in report.divergences]]).reshape(2, -1)
    bars.barh(names, values, xerr=errors if names else None, color="#55a868", capsize=3)
    bars.set_xlabel("Jensen–Shannon divergence (bits), 95 % bootstrap interval")
    bars.set_title("how far apart the segments' feature distributions are", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
