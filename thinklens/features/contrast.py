"""Contrasts: which features separate two sets of tokens, by how much, and how sure that is.

A *selector* names a set of tokens by trace metadata and segment: comma-separated terms
`key=value` (or `key!=value`), all of which must hold. Keys are the trace columns (`source`,
`correct`, `prompt_id`, `finish_reason`, `format`, `has_thinking`, `thinking_closed`,
`prefix_matched`), any key of the prompt's metadata (`operator`, `kind`, `steps`…; a list value
matches when it holds the value), `segment` (prompt, prefix, thinking, answer), `token` (the
token's text, surrounding spaces stripped, as features.db's `vocab` decodes it) and `next_token`
(the text of the token that follows it). For example `operator=*` against `operator=/`, both
restricted to `--segment thinking`; or the backtracking tokens `segment=thinking,token=Wait` against
`segment=thinking,token!=Wait` (with `unit: token`), and the tokens just before them with
`next_token=Wait`.

What is told apart is a *unit*: by default a trace (its selected tokens, valued by the feature's
maximum over them — a feature firing on the "÷" token separates ÷ from × traces, though it is silent
on most of their tokens), or, with `unit: token`, each token.

One streaming pass over the activation store (special and massive tokens left out, as in training)
encodes the tokens of either set with the SAE's inference encoder and keeps, per sequence group,
set and feature, a histogram of the units' values: a bin for zero and `bins` log-spaced bins (half
an octave each) below the feature's maximum activation in the feature database. Memory is
groups × 2 × d_sae × (bins + 1) counters (plus the last trace's firings), whatever the store's size.
From them, per feature:
- AUROC of the feature's value for telling a unit of A from one of B (1: fires on A only; 0: on B
  only). Exact where values differ in bin or one of them is zero; ties within a bin count half, as
  ties do;
- log2 of the firing-rate ratio rate_A / rate_B (share of units where it fires), with half a firing
  added to both sides;
- 95 % intervals of both by a bootstrap that resamples sequence groups (whole traces) with
  replacement.
The difference of the two sets' mean activations over their tokens, in model units, is saved as a
steering direction beside the ranking.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field

from thinklens.activations.store import ActivationStore
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.features.db import FeatureDB
from thinklens.features.schema import migrate
from thinklens.models.loader import resolve_device
from thinklens.progress import progress_bar
from thinklens.sae.formats import check_width, load_sae
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae
from thinklens.stats import group_bootstrap_weights, rate, split_groups

TRACE_KEYS = ("source", "correct", "prompt_id", "finish_reason", "format", "has_thinking", "thinking_closed",
              "prefix_matched")
SEGMENT_KEY = "segment"
TOKEN_KEYS = {"token": "token_id", "next_token": "next_token_id"}  # selector key → the store's index column
TERM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|=)\s*(.*?)\s*$")


class ContrastConfig(BaseModel):
    """Settings of a contrast between two token sets."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    a: str = Field(description="Selector of set A, e.g. 'operator=*' or 'source=logic,segment=thinking'.")
    b: str = Field(description="Selector of set B, e.g. 'operator=/'.")
    segment: str | None = Field(default=None, description="Only tokens of this segment, in both sets.")
    unit: Literal["trace", "token"] = Field(
        default="trace",
        description="What is told apart: 'trace' (a trace's selected tokens, by the feature's maximum over them: a "
        "feature that fires on the operator's token separates ÷ from × traces) or 'token' (each token).")
    name: str | None = Field(default=None, description="Name of the contrast (default: made from the selectors).")
    groups: int = Field(default=32, ge=2, description="Sequence groups resampled by the bootstrap.")
    bootstrap: int = Field(default=200, ge=10, description="Bootstrap resamples for the intervals.")
    bins: int = Field(default=24, ge=2, description="Log-spaced activation bins (half an octave each) per feature.")
    top: int = Field(default=10, ge=1, description="Features listed for each side.")
    min_firings: int = Field(default=5, ge=1, description="Firings a feature needs on its side to be listed.")
    examples: int = Field(default=3, ge=0, description="Top examples shown per listed feature.")
    batch_size: int = Field(default=4096, ge=1, description="Tokens encoded at once.")
    seed: int = Field(default=0, description="Seed of the bootstrap.")

    def contrast_name(self) -> str:
        """`name`, or a readable name made from the selectors plus a hash that keeps `*` and `/` apart."""
        if self.name:
            return self.name
        text = f"{self.a}|{self.b}|{self.segment or ''}"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{self.a}-vs-{self.b}").strip("-")[:60]
        return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Selector:
    """A parsed selector: trace terms, the segments it allows and its token terms."""

    text: str
    terms: tuple[tuple[str, str, bool], ...]  # (key, value, negated) over trace columns and metadata
    segments: frozenset[int]
    token_terms: tuple[tuple[str, str, bool], ...] = ()  # (key: token or next_token, text, negated)

    @classmethod
    def parse(cls, text: str, segment: str | None = None) -> Selector:
        terms, token_terms, segments = [], [], set(range(len(SEGMENT_NAMES)))
        for part in text.split(","):
            if not part.strip():
                continue
            match = TERM.match(part)
            if match is None:
                raise ThinklensError(f"selector term {part.strip()!r} is not key=value or key!=value "
                                     "(e.g. operator=* or segment=thinking)")
            key, operator, value = match.groups()
            if key == SEGMENT_KEY:
                named = {_segment_id(value)}
                segments &= (set(range(len(SEGMENT_NAMES))) - named) if operator == "!=" else named
            elif key in TOKEN_KEYS:
                token_terms.append((key, value, operator == "!="))
            else:
                terms.append((key, value, operator == "!="))
        if segment is not None:
            segments &= {_segment_id(segment)}
        if not segments:
            raise ThinklensError(f"selector {text!r} (with --segment {segment}) selects no segment")
        return cls(text, tuple(terms), frozenset(segments), tuple(token_terms))

    def token_ids(self, vocab: dict[int, str]) -> dict[str, np.ndarray]:
        """Per token key its terms name (`token`, `next_token`), the ids of the tokens they allow, from
        `vocab` (id → text); empty when the selector has no token terms."""
        ids = np.array([-1, *sorted(vocab)], dtype=np.int64)  # -1: no next token (the sequence ends)
        text = ["", *(vocab[int(i)].strip() for i in ids[1:])]
        allowed: dict[str, np.ndarray] = {}
        for key, value, negated in self.token_terms:
            allowed[key] = allowed.get(key, ids >= (0 if key == "token" else -1)) & (
                np.array([t == value for t in text], dtype=bool) != negated)
        for key, mask in allowed.items():
            if not mask.any():
                raise ThinklensError(f"selector {self.text!r}: its {key} terms allow no token of the run's vocabulary "
                                     f"({key}=TEXT matches a token's text without surrounding spaces, e.g. {key}=Wait)")
        return {key: ids[mask] for key, mask in allowed.items()}

    def sequence_ids(self, traces: list[dict[str, Any]]) -> np.ndarray:
        """Ids of the traces every term holds for."""
        known = set(TRACE_KEYS) | {key for trace in traces for key in trace["metadata"]}
        for key, _, _ in self.terms:
            if key not in known:
                raise ThinklensError(f"selector {self.text!r}: unknown key {key!r}; keys are segment, "
                                     f"{', '.join(sorted(known))}")
        return np.array([trace["sequence_id"] for trace in traces if all(
            _holds(trace, key, value) != negated for key, value, negated in self.terms)], dtype=np.int64)


def _segment_id(name: str) -> int:
    if name not in SEGMENT_NAMES:
        raise ThinklensError(f"unknown segment {name!r}; segments are {', '.join(SEGMENT_NAMES)}")
    return SEGMENT_NAMES.index(name)


def _holds(trace: dict[str, Any], key: str, value: str) -> bool:
    actual = trace[key] if key in TRACE_KEYS else trace["metadata"].get(key)
    if isinstance(actual, list):
        return any(_same(item, value) for item in actual)
    return _same(actual, value)


def _same(actual: Any, value: str) -> bool:
    if isinstance(actual, bool):
        return value.lower() == str(actual).lower()
    return actual is not None and str(actual) == value


def read_traces(traces_dir: Path) -> list[dict[str, Any]]:
    """sequence_id, the selector's trace columns and the parsed metadata of every trace."""
    table: pa.Table = TraceStore(traces_dir).read(["sequence_id", *TRACE_KEYS, "metadata"])
    rows = table.to_pylist()
    for row in rows:
        row["metadata"] = json.loads(row["metadata"] or "{}")
    return rows


@dataclass
class ContrastFeature:
    """One feature's separation of A from B."""

    feature_id: int
    auroc: float
    auroc_low: float
    auroc_high: float
    log2_rate_ratio: float
    ratio_low: float
    ratio_high: float
    rate_a: float
    rate_b: float
    mean_a: float  # mean activation over A's tokens (zeros included)
    mean_b: float
    label: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ContrastReport:
    """The features that separate A from B: the top of each side, and where everything was written."""

    name: str
    a: str
    b: str
    segment: str | None
    tokens: dict[str, int]
    traces: dict[str, int]
    a_features: list[ContrastFeature]  # most characteristic of A (AUROC high)
    b_features: list[ContrastFeature]  # most characteristic of B (AUROC low)
    direction_norm: float
    direction_path: str
    # Per side, the best feature judged on traces it was not picked on (`held_out_best`; for that side:
    # > 0.5 means it fires more there), so the best of thousands of features is not judged on the traces
    # that chose it.
    held_out: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    unit: str = "trace"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Counts:
    histogram: np.ndarray  # (groups, 2, d_sae, bins + 1) int64 of units; bin 0 is "did not fire"
    units: np.ndarray  # (groups, 2): tokens, or traces for the trace unit
    tokens: np.ndarray  # (2,) selected tokens per side
    activation_sum: np.ndarray  # (2, d_sae) float64: sum over units of the unit's value
    input_sum: np.ndarray  # (2, d_in) float64, model units, over tokens
    traces: tuple[int, int]


@torch.inference_mode()
def run_contrast(config: ContrastConfig, traces_dir: Path, activations_dir: Path, sae_dir: Path, db_path: Path,
                 out_dir: Path, show_progress: bool = True, device: str = "auto") -> ContrastReport:
    """Rank the features separating the selectors' token sets; write the `contrasts` rows into
    features.db and `contrast.json` + `direction.safetensors` into `out_dir`."""
    from thinklens.files import check_inside_run, write_json_atomic

    placed = resolve_device(device)
    for output in (Path(out_dir), Path(db_path)):  # both proven inside the run before the work
        check_inside_run(output, follow=True)
    with FeatureDB(db_path) as db:
        vocab = db.vocabulary()
    (a, a_ids), (b, b_ids) = select_sets(config, traces_dir, vocab)
    sae = load_sae(sae_dir).to(placed)
    store = ActivationStore(activations_dir)
    check_width(sae, store.d_model, f"the activations in {activations_dir}")
    with FeatureDB(db_path) as db:
        layer_override = db.meta().get("layer") if sae.config.layer is None else None
        maxima = _feature_maxima(db, sae.config.d_sae)
    layer = resolve_sae_layer(sae.config.layer, store.layers, layer_override, sae=f"the SAE in {sae_dir}",
                              holder=f"the activations in {activations_dir}")
    allowed = (a.token_ids(vocab), b.token_ids(vocab))
    counts = _count(sae, store, layer, (a, a_ids), (b, b_ids), maxima, config, show_progress, allowed)
    for side, selector in enumerate((a, b)):
        if counts.tokens[side] == 0:
            raise ThinklensError(f"selector {selector.text!r} matches traces but none of their stored tokens "
                                 "(check segment=… and --segment)")
    scores = contrast_scores(counts.histogram, counts.units, config.bootstrap, config.seed)
    n_tokens, n_units = counts.tokens, counts.units.sum(axis=0)
    means = counts.activation_sum / n_units[:, None]
    name = config.contrast_name()
    rows = [(name, f, *(float(scores[key][f]) for key in SCORE_KEYS), float(means[0, f]), float(means[1, f]))
            for f in range(sae.config.d_sae)]
    firings = counts.histogram[:, :, :, 1:].sum(axis=(0, 3))  # (2, d_sae)
    direction = torch.from_numpy(counts.input_sum[0] / n_tokens[0] - counts.input_sum[1] / n_tokens[1]).float()
    direction_path = _save_direction(direction, out_dir, config, layer)
    with FeatureDB(db_path) as db:
        listed = {side: _listed(scores, firings, means, side, config) for side in (0, 1)}
        labels = db.labels([f for side in listed.values() for f in side])
        sides = {side: [_feature(f, scores, means, labels, db, config) for f in ids] for side, ids in listed.items()}
    report = ContrastReport(
        name=name, a=config.a, b=config.b, segment=config.segment,
        tokens={"a": int(n_tokens[0]), "b": int(n_tokens[1])},
        traces={"a": counts.traces[0], "b": counts.traces[1]},
        a_features=sides[0], b_features=sides[1],
        direction_norm=float(direction.norm()), direction_path=str(direction_path),
        held_out={name: held_out_best(counts.histogram, counts.units, side, config)
                  for side, name in ((0, "a"), (1, "b"))},
        unit=config.unit,
    )
    write_contrast_rows(db_path, report, rows, config)
    write_json_atomic(out_dir / "contrast.json", {"config": config.model_dump(mode="json"), "layer": layer,
                                                  "result": report.to_json()})
    return report


def select_sets(config: ContrastConfig, traces_dir: Path,
                vocab: dict[int, str] | None = None) -> tuple[tuple[Selector, np.ndarray], tuple[Selector, np.ndarray]]:
    """Both selectors with the ids of the traces they match; one-line errors for empty or overlapping sets.
    `vocab` (id → text, from features.db) resolves token terms; without it they count as overlapping."""
    a, b = Selector.parse(config.a, config.segment), Selector.parse(config.b, config.segment)
    traces = read_traces(traces_dir)
    a_ids, b_ids = a.sequence_ids(traces), b.sequence_ids(traces)
    for selector, ids in ((a, a_ids), (b, b_ids)):
        if len(ids) == 0:
            raise ThinklensError(f"selector {selector.text!r} matches none of the {len(traces)} traces in {traces_dir}")
    tokens = [{}, {}] if vocab is None else [a.token_ids(vocab), b.token_ids(vocab)]
    tokens_overlap = not any(np.intersect1d(tokens[0][key], tokens[1][key]).size == 0
                             for key in set(tokens[0]) & set(tokens[1]))
    if np.intersect1d(a_ids, b_ids).size and a.segments & b.segments and tokens_overlap:
        raise ThinklensError(f"selectors {config.a!r} and {config.b!r} share tokens: make them disjoint "
                             "(e.g. add segment=… or a != term to one)")
    return (a, a_ids), (b, b_ids)


def _save_direction(direction: torch.Tensor, out_dir: Path, config: ContrastConfig, layer: int) -> Path:
    from safetensors.torch import save_file

    from thinklens.files import atomic_path, ensure_dir

    ensure_dir(out_dir)
    path = out_dir / "direction.safetensors"
    with atomic_path(path) as temp:
        save_file({"direction": direction.contiguous()}, str(temp), metadata={
            "a": config.a, "b": config.b, "segment": config.segment or "", "layer": str(layer),
            "units": "model (mean of A minus mean of B)"})
    return path


SCORE_KEYS = ("auroc", "auroc_low", "auroc_high", "log2_rate_ratio", "ratio_low", "ratio_high", "rate_a", "rate_b")


def _feature_maxima(db: FeatureDB, d_sae: int) -> np.ndarray:
    maxima = np.ones(d_sae, dtype=np.float64)
    for feature_id, maximum in db.connection.execute("SELECT feature_id, max_activation FROM features"):
        if 0 <= feature_id < d_sae and maximum > 0:
            maxima[feature_id] = maximum
    return maxima


def _count(sae: Sae, store: ActivationStore, layer: int, a: tuple[Selector, np.ndarray], b: tuple[Selector, np.ndarray],
           maxima: np.ndarray, config: ContrastConfig, show_progress: bool,
           allowed_tokens: tuple[dict[str, np.ndarray], ...] = ({}, {})) -> _Counts:
    d_sae = sae.config.d_sae
    binned = _Binned(config.groups, d_sae, config.bins, maxima)
    input_sum = torch.zeros(2, store.d_model, dtype=torch.float64)
    segment_masks = [np.isin(np.arange(len(SEGMENT_NAMES)), sorted(selector.segments)) for selector, _ in (a, b)]
    units: set[tuple[int, int]] = set()  # (sequence, side) pairs seen: a trace's selected tokens are one unit
    tokens = np.zeros((config.groups, 2), dtype=np.int64)
    pending = _Pending.empty()  # trace unit: the firings of the last trace of the previous batch, not yet complete
    with progress_bar("contrast", total=store.token_count, enabled=show_progress) as bar:
        token_columns = {TOKEN_KEYS[key] for allowed in allowed_tokens for key in allowed}
        for batch in store.kept_batches(layer, config.batch_size, ("sequence_id", "segment", *sorted(token_columns))):
            bar.advance(batch.rows, tokens=batch.rows)
            sequence, segment = batch.index["sequence_id"], batch.index["segment"]
            in_sets = [np.isin(sequence, ids) & segment_masks[side][segment] for side, (_, ids) in enumerate((a, b))]
            for side, allowed in enumerate(allowed_tokens):
                for key, ids in allowed.items():
                    in_sets[side] &= np.isin(batch.index[TOKEN_KEYS[key]], ids)
            keep = in_sets[0] | in_sets[1]
            if not keep.any():
                continue
            side = np.where(in_sets[0][keep], 0, 1)
            kept_sequence = sequence[keep]
            units.update(zip(kept_sequence.tolist(), side.tolist(), strict=True))
            np.add.at(tokens.reshape(-1), (kept_sequence % config.groups) * 2 + side, 1)
            x = batch.x[torch.from_numpy(keep)]
            input_sum.index_add_(0, torch.from_numpy(side), x.double())
            codes = sae.encode(x.to(sae.device), batch_dependent=False)
            fired = codes.values > 0
            rows = codes.rows[fired].cpu().numpy()
            features, values = codes.features[fired].cpu(), codes.values[fired].float().cpu()
            unit_sequence, unit_side = torch.from_numpy(kept_sequence[rows]), torch.from_numpy(side[rows])
            if config.unit == "token":
                binned.add(unit_sequence, unit_side, features, values)
                continue
            pending = pending.extend(unit_sequence, unit_side, features, values)
            done, pending = pending.split_before(int(kept_sequence[-1]))  # the batch's last trace may go on
            binned.add(*done.trace_maxima(d_sae))
    binned.add(*pending.trace_maxima(d_sae))
    counted = tokens
    if config.unit == "trace":
        counted = np.zeros((config.groups, 2), dtype=np.int64)
        for sequence_id, side_id in units:
            counted[sequence_id % config.groups, side_id] += 1
    histogram = binned.histogram.view(config.groups, 2, d_sae, config.bins + 1).numpy()
    histogram[..., 0] = counted[:, :, None] - histogram[..., 1:].sum(axis=-1)
    traces = tuple(len({seq for seq, s in units if s == side}) for side in (0, 1))
    return _Counts(histogram, counted, tokens.sum(axis=0), binned.value_sum.view(2, d_sae).numpy(), input_sum.numpy(),
                   traces)


class _Binned:
    """Counts of (group, side, feature, activation bin) and the value sums per (side, feature)."""

    def __init__(self, groups: int, d_sae: int, bins: int, maxima: np.ndarray) -> None:
        self.groups, self.d_sae, self.bins = groups, d_sae, bins
        self.histogram = torch.zeros(groups * 2 * d_sae * (bins + 1), dtype=torch.int64)
        self.value_sum = torch.zeros(2 * d_sae, dtype=torch.float64)
        self.log_maxima = torch.from_numpy(np.log2(maxima)).float()

    def add(self, sequence: torch.Tensor, side: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> None:
        if not len(values):
            return
        # Bin 1 + j holds values in [max·2^((j+1-bins)/2), max·2^((j+2-bins)/2)); the lowest takes everything below.
        octaves = torch.log2(values) - self.log_maxima[features]
        bins = torch.clamp(torch.floor(2 * octaves).long() + self.bins, 0, self.bins - 1) + 1
        cell = (sequence % self.groups) * 2 + side
        self.histogram.index_add_(0, (cell * self.d_sae + features) * (self.bins + 1) + bins, torch.ones_like(bins))
        self.value_sum.index_add_(0, side * self.d_sae + features, values.double())


@dataclass
class _Pending:
    """Firings (sequence, side, feature, value) of traces whose tokens may not all have been read."""

    sequence: torch.Tensor
    side: torch.Tensor
    features: torch.Tensor
    values: torch.Tensor

    @classmethod
    def empty(cls) -> _Pending:
        none = torch.zeros(0, dtype=torch.long)
        return cls(none, none, none, torch.zeros(0))

    def extend(self, sequence: torch.Tensor, side: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> _Pending:
        return _Pending(torch.cat([self.sequence, sequence]), torch.cat([self.side, side]),
                        torch.cat([self.features, features]), torch.cat([self.values, values]))

    def split_before(self, sequence_id: int) -> tuple[_Pending, _Pending]:
        """(firings of traces before `sequence_id`: complete, since the store is in sequence order; the rest)."""
        done = self.sequence < sequence_id
        parts = [_Pending(self.sequence[m], self.side[m], self.features[m], self.values[m]) for m in (done, ~done)]
        return parts[0], parts[1]

    def trace_maxima(self, d_sae: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sequence, side, feature, max value) once per (trace, side, feature) that fired."""
        if not len(self.values):
            return self.sequence, self.side, self.features, self.values
        keys, inverse = torch.unique((self.sequence * 2 + self.side) * d_sae + self.features, return_inverse=True)
        maxima = torch.zeros(len(keys)).scatter_reduce_(0, inverse, self.values, reduce="amax", include_self=False)
        unit, features = keys // d_sae, keys % d_sae
        return unit // 2, unit % 2, features, maxima


def auroc_from_histograms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AUROC of telling A from B by the binned value, from counts (..., bins) in ascending bin order:
    P(value_A > value_B) + ½ P(same bin)."""
    below = np.cumsum(b, axis=-1) - b  # B's counts in lower bins
    n = a.sum(axis=-1) * b.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (a * (below + 0.5 * b)).sum(axis=-1) / np.maximum(n, 1), 0.5)


def _scores_of(histogram: np.ndarray, units: np.ndarray) -> dict[str, np.ndarray]:
    """Point scores from summed counts: histogram (2, F, cells), units (2,)."""
    firings = histogram[:, :, 1:].sum(axis=-1)  # (2, F)
    rates = (firings + 0.5) / np.maximum(units[:, None], 1)
    return {"auroc": auroc_from_histograms(histogram[0], histogram[1]),
            "log2_rate_ratio": np.log2(rates[0] / rates[1]),
            "rate_a": firings[0] / max(units[0], 1), "rate_b": firings[1] / max(units[1], 1)}


def contrast_scores(histogram: np.ndarray, units: np.ndarray, bootstrap: int, seed: int,
                    chunk: int = 256) -> dict[str, np.ndarray]:
    """Per feature: AUROC, log2 rate ratio and the firing rates, with 95 % group-bootstrap intervals.

    `histogram` is (groups, 2, d_sae, cells) with cell 0 the zeros; `units` (groups, 2): tokens or traces."""
    groups, _, d_sae, cells = histogram.shape
    scores = _scores_of(histogram.sum(axis=0), units.sum(axis=0))
    weights = group_bootstrap_weights(groups, bootstrap, seed)  # (draws, groups)
    resampled_units = weights @ units  # (draws, 2)
    low = {key: np.empty(d_sae) for key in ("auroc", "log2_rate_ratio")}
    high = {key: np.empty(d_sae) for key in ("auroc", "log2_rate_ratio")}
    for start in range(0, d_sae, chunk):
        part = histogram[:, :, start:start + chunk].astype(np.float64)  # (G, 2, f, cells)
        drawn = np.einsum("rg,gsfc->rsfc", weights, part)  # (draws, 2, f, cells)
        firings = drawn[..., 1:].sum(axis=-1)  # (draws, 2, f)
        rates = (firings + 0.5) / np.maximum(resampled_units[:, :, None], 1)
        values = {"auroc": auroc_from_histograms(drawn[:, 0], drawn[:, 1]),
                  "log2_rate_ratio": np.log2(rates[:, 0] / rates[:, 1])}
        for key, value in values.items():
            low[key][start:start + chunk], high[key][start:start + chunk] = np.quantile(value, [0.025, 0.975], axis=0)
    scores.update(auroc_low=low["auroc"], auroc_high=high["auroc"], ratio_low=low["log2_rate_ratio"],
                  ratio_high=high["log2_rate_ratio"])
    return scores


def held_out_best(histogram: np.ndarray, units: np.ndarray, side: int, config: ContrastConfig) -> dict[str, Any] | None:
    """The best feature for `side` judged on units it was not picked on (cross-fitting), with a 95 % interval.

    The sequence groups are split in two random halves; the feature picked on each half (highest AUROC
    for the side, firing ≥ `min_firings` times) is scored on the other half, and the two held-out halves
    are pooled into one AUROC, and "it fires" is scored as a detector of the side's units there
    (precision and recall, Wilson intervals over units). Its interval is the group bootstrap's, widened to at least the Wilson
    interval of the AUROC as a share of min(units of A, units of B): a bootstrap of a perfect separation
    on a few dozen traces would otherwise claim [1, 1]. AUROCs are for the side (B's flipped). None
    when a half lacks units of a set."""
    halves = split_groups(histogram.shape[0], config.seed)
    if min(units[half].sum(axis=0).min() for half in halves) == 0:
        return None
    picks = []
    for half in halves:
        picked = _scores_of(histogram[half].sum(axis=0), units[half].sum(axis=0))
        auroc = picked["auroc"] if side == 0 else 1 - picked["auroc"]
        firings = histogram[half][:, side, :, 1:].sum(axis=(0, 2))
        auroc = np.where(firings >= config.min_firings, auroc, -np.inf)
        feature = int(np.argmax(auroc))
        if not np.isfinite(auroc[feature]):
            return None
        picks.append(feature)
    held = np.empty((histogram.shape[0], 2, 1, histogram.shape[3]), dtype=histogram.dtype)
    held[halves[1], :, 0] = histogram[halves[1]][:, :, picks[0]]  # picked on the first half, scored on the second
    held[halves[0], :, 0] = histogram[halves[0]][:, :, picks[1]]
    scores = contrast_scores(held, units, config.bootstrap, config.seed)
    value, low, high = (float(scores[key][0]) for key in ("auroc", "auroc_low", "auroc_high"))
    if side == 1:
        value, low, high = 1 - value, 1 - high, 1 - low
    n = int(units.sum(axis=0).min())
    floor = rate(round(value * n), n)
    fired = held[:, :, 0, 1:].sum(axis=(0, 2))  # (2,): held-out units of each set where the pick fired
    return {"feature_id": picks[0], "features": picks, "auroc": value, "low": min(low, floor.low),
            "high": max(high, floor.high), "units": n,
            # "It fires" as a detector of the side's units, on the held-out halves (Wilson 95 %).
            "precision": rate(int(fired[side]), int(fired.sum())).model_dump(),
            "recall": rate(int(fired[side]), int(units[:, side].sum())).model_dump()}


def _listed(scores: dict[str, np.ndarray], firings: np.ndarray, means: np.ndarray, side: int,
            config: ContrastConfig) -> list[int]:
    """The `top` features most characteristic of a side: by AUROC (towards 1 for A, 0 for B), then by the
    mean-activation difference, among features firing at least `min_firings` times on that side."""
    auroc = scores["auroc"] if side == 0 else 1 - scores["auroc"]
    difference = (means[0] - means[1]) * (1 if side == 0 else -1)
    eligible = np.flatnonzero((firings[side] >= config.min_firings) & (auroc > 0.5))
    order = sorted(eligible.tolist(), key=lambda f: (-auroc[f], -difference[f], f))
    return order[: config.top]


def _feature(f: int, scores: dict[str, np.ndarray], means: np.ndarray, labels: dict[int, str], db: FeatureDB,
             config: ContrastConfig) -> ContrastFeature:
    examples = [example.to_json() for example in db.examples(f, top=config.examples, window=8)]
    return ContrastFeature(f, *(float(scores[key][f]) for key in SCORE_KEYS), float(means[0, f]), float(means[1, f]),
                           label=labels.get(f), examples=examples)


def write_contrast_rows(db_path: Path, report: ContrastReport, rows: list[tuple], config: ContrastConfig) -> None:
    """Replace the contrast's rows in features.db in one transaction (a failure leaves the old ones)."""
    from thinklens.files import check_inside_run

    check_inside_run(Path(db_path), follow=True)  # written in place: never through a link out of the run
    connection = sqlite3.connect(db_path)
    try:
        migrate(connection)
        with connection:
            connection.execute("DELETE FROM contrasts WHERE name = ?", (report.name,))
            connection.execute("DELETE FROM contrast_sets WHERE name = ?", (report.name,))
            connection.execute(
                "INSERT INTO contrast_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (report.name, report.a, report.b, report.segment, report.tokens["a"], report.tokens["b"],
                 report.traces["a"], report.traces["b"], json.dumps(config.model_dump(mode="json"))))
            connection.executemany(f"INSERT INTO contrasts VALUES ({', '.join('?' * 12)})", rows)
    finally:
        connection.close()


def load_direction(path: Path) -> torch.Tensor:
    """A saved contrast direction (d_model,), in model units."""
    from safetensors.torch import load_file

    return load_file(str(path))["direction"]
