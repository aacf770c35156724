"""Evaluate an SAE on held-out sequences: reconstruction, sparsity, and what it costs the model.

- FVU (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², sums over held-out tokens,
  x̄ their mean; overall and per segment (x̄ then the segment's mean).
- L0 = mean number of active features per token.
- dead fraction, two ways. Over the training window (SAELens' rule, recorded by `train`): features
  that did not fire in the last `dead_after_tokens` training tokens. On the held-out tokens (per
  segment, beside their token count): features that never fire on them — on a small hold-out set
  this counts rare features as dead, so read it with its `tokens`.
- dense fraction: features firing on more than `dense_threshold` of the held-out tokens.
- Language-model cost on held-out traces: next-token cross-entropy with the layer's output replaced
  by the SAE reconstruction (spliced), vs clean and vs zero-ablated; loss recovered =
  (zero − spliced) / (zero − clean). Tokens excluded from training (special, massive) keep their
  own activations in the spliced and ablated runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from thinklens.activations.capture import edit_resid_post
from thinklens.activations.reader import ActivationReader, ReaderConfig, in_holdout
from thinklens.activations.store import ActivationStore
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.models.loader import LoadedModel, load_model, resolve_device
from thinklens.sae.formats import check_width, load_sae, sae_metadata
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae, SaeOutput


class EvalConfig(BaseModel):
    """How much held-out data to evaluate on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=4096, ge=1, description="Tokens per SAE batch.")
    dense_threshold: float = Field(default=0.1, gt=0, le=1, description="Firing rate above which a feature is dense.")
    lm_sequences: int = Field(default=32, ge=0, description="Held-out traces for the LM-loss comparison (0: skip).")
    holdout_fraction: float | None = Field(default=None, description="Default: the fraction the SAE was trained with.")
    layer: int | None = Field(
        default=None, description="Layer the SAE reads; only needed for an SAE that names none (it may not contradict it)."
    )
    device: str = Field(
        default="auto",
        description="Where the SAE and the model run: 'auto' (cuda when available, else cpu), 'cpu', 'cuda:1', ...",
    )


@dataclass
class SegmentMetrics:
    tokens: int
    fvu: float
    l0: float
    dead_fraction: float = float("nan")
    dense_fraction: float = float("nan")


@dataclass
class EvalReport:
    overall: SegmentMetrics  # its dead_fraction counts the held-out tokens only (see `tokens`)
    segments: dict[str, SegmentMetrics]
    lm: dict[str, float] = field(default_factory=dict)  # clean, spliced, zero_ablated, delta, loss_recovered
    dead_fraction_training: float | None = None  # no firing in the last `dead_window_tokens` training tokens
    dead_window_tokens: int | None = None  # None for SAEs whose training recorded no window

    def as_dict(self) -> dict:
        return {
            "overall": self.overall.__dict__,
            "segments": {name: metrics.__dict__ for name, metrics in self.segments.items()},
            "lm": self.lm,
            "dead_fraction_training": self.dead_fraction_training,
            "dead_window_tokens": self.dead_window_tokens,
        }


def training_dead_fraction(metadata: dict) -> tuple[float | None, int | None]:
    """(dead fraction, window in tokens) over the training window, from a saved SAE's metadata.

    Recorded by `train` as `dead_features`; for SAEs trained before that record, the last step's
    dead fraction when the run was longer than its window; (None, None) for foreign SAEs.
    """
    record = metadata.get("dead_features")
    if record is not None:
        return record.get("fraction"), record.get("window_tokens")
    training, final = metadata.get("training", {}), metadata.get("final", {})
    window, batch_size = training.get("dead_after_tokens"), training.get("batch_size")
    fraction = final.get("dead_fraction")
    if window is None or batch_size is None or fraction is None:
        return None, None
    if int(metadata.get("steps", 0)) * batch_size <= window:  # the window never filled: nothing could be dead
        return None, None
    return float(fraction), int(window)


class _Accumulator:
    """Streaming sums for FVU and L0 (float64, so millions of tokens add up exactly enough)."""

    def __init__(self, d_in: int, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.tokens, self.squared_error, self.squared_norm, self.active = 0, 0.0, 0.0, 0
        self.total = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.fired = torch.zeros(d_sae, dtype=torch.long, device=device)  # tokens on which each feature fired

    def add(self, x: torch.Tensor, output: SaeOutput) -> None:
        active = output.codes.values > 0
        self.tokens += len(x)
        self.squared_error += (x - output.recon).double().pow(2).sum().item()
        self.squared_norm += x.double().pow(2).sum().item()
        self.total += x.double().sum(dim=0)
        self.active += int(active.sum())
        self.fired += torch.bincount(output.codes.features[active], minlength=len(self.fired))

    def merge(self, other: _Accumulator) -> None:
        self.tokens += other.tokens
        self.squared_error += other.squared_error
        self.squared_norm += other.squared_norm
        self.total += other.total
        self.active += other.active
        self.fired += other.fired

    def metrics(self, dense_threshold: float) -> SegmentMetrics:
        if self.tokens == 0:
            return SegmentMetrics(0, float("nan"), float("nan"))
        centred = self.squared_norm - self.total.pow(2).sum().item() / self.tokens  # Σ‖x − x̄‖²
        rate = self.fired.double() / self.tokens
        return SegmentMetrics(
            tokens=self.tokens,
            fvu=self.squared_error / max(centred, 1e-12),
            l0=self.active / self.tokens,
            dead_fraction=(self.fired == 0).double().mean().item(),
            dense_fraction=(rate > dense_threshold).double().mean().item(),
        )


@torch.no_grad()
def evaluate(
    sae_dir: Path,
    activations_dir: Path,
    traces_dir: Path,
    config: EvalConfig,
    loaded: LoadedModel | None = None,
) -> EvalReport:
    """Metrics of the SAE in `sae_dir` on the held-out split of `activations_dir`."""
    device = resolve_device(config.device)
    sae = load_sae(sae_dir).to(device)
    store = ActivationStore(activations_dir)
    check_width(sae, store.d_model, f"the activations in {activations_dir}")
    layer = resolve_sae_layer(sae.config.layer, store.layers, config.layer, sae=f"the SAE in {sae_dir}",
                              holder=f"the activations in {activations_dir}")
    metadata = sae_metadata(sae_dir)
    training = metadata.get("training", {})
    fraction = config.holdout_fraction if config.holdout_fraction is not None else training.get("holdout_fraction", 0.05)
    exclude_special = not training.get("include_special", False)
    exclude_massive = not training.get("include_massive", False)

    overall, per_segment = _Accumulator(sae.config.d_in, sae.config.d_sae, device), {}
    for name in SEGMENT_NAMES:
        reader = ActivationReader(activations_dir, ReaderConfig(
            layer=layer, batch_size=config.batch_size, segments=(name,), split="holdout", holdout_fraction=fraction,
            exclude_special=exclude_special, exclude_massive=exclude_massive, buffer_tokens=config.batch_size,
        ))
        accumulator = _Accumulator(sae.config.d_in, sae.config.d_sae, device)
        for x in reader:
            x = x.to(device)
            accumulator.add(x, sae(x))
        overall.merge(accumulator)
        per_segment[name] = accumulator.metrics(config.dense_threshold)
    if overall.tokens == 0:
        raise ThinklensError(
            f"no held-out tokens in {activations_dir} (hold-out fraction {fraction}): collect more traces or raise it"
        )
    dead_training, window = training_dead_fraction(metadata)
    report = EvalReport(overall=overall.metrics(config.dense_threshold), segments=per_segment,
                        dead_fraction_training=dead_training, dead_window_tokens=window)
    if config.lm_sequences:
        loaded = loaded or load_model(store.model_config(device=config.device))
        report.lm = lm_cost(sae, layer, loaded, store, traces_dir, fraction, config.lm_sequences,
                            exclude_special, exclude_massive)
    return report


def lm_cost(
    sae: Sae,
    layer: int,
    loaded: LoadedModel,
    store: ActivationStore,
    traces_dir: Path,
    holdout_fraction: float,
    n_sequences: int,
    exclude_special: bool,
    exclude_massive: bool,
) -> dict[str, float]:
    """Mean next-token loss over the completions of held-out traces: clean, spliced, zero-ablated."""
    index = store.index(["sequence_id", "special", "massive"]).to_pandas()
    held = np.unique(index["sequence_id"].to_numpy())
    held = held[in_holdout(held, holdout_fraction)][:n_sequences]
    if len(held) == 0:
        return {}
    traces = ds.dataset(str(traces_dir), format="parquet").to_table(
        columns=["sequence_id", "token_ids", "generation_start"], filter=ds.field("sequence_id").isin(held.tolist())
    ).to_pylist()
    sums = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0}
    count = 0
    for trace in traces:
        ids = torch.tensor([trace["token_ids"]], device=loaded.device)
        flags = index[index["sequence_id"] == trace["sequence_id"]]
        keep = torch.zeros(ids.shape[1], dtype=torch.bool)  # tokens that keep their own activation
        if exclude_special:
            keep |= torch.tensor(flags["special"].to_numpy())
        if exclude_massive:
            keep |= torch.tensor(flags["massive"].to_numpy())
        keep = keep.to(loaded.device)[None, :, None]
        start = trace["generation_start"]
        edits = {
            "clean": None,
            "spliced": lambda h, keep=keep: torch.where(keep.to(h.device), h, _reconstruct(sae, h[0])[None]),
            "zero_ablated": lambda h, keep=keep: torch.where(keep.to(h.device), h, torch.zeros_like(h)),
        }
        for name, edit in edits.items():
            if edit is None:
                logits = loaded.model(ids).logits
            else:
                with edit_resid_post(loaded.model, layer, edit):
                    logits = loaded.model(ids).logits
            # Loss of predicting each completion token from what precedes it.
            loss = F.cross_entropy(logits[0, start - 1 : -1].float(), ids[0, start:], reduction="sum")
            sums[name] += loss.item()
        count += ids.shape[1] - start
    clean, spliced, zero = (sums[name] / count for name in ("clean", "spliced", "zero_ablated"))
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return {"clean": clean, "spliced": spliced, "zero_ablated": zero, "delta": spliced - clean,
            "loss_recovered": recovered, "tokens": float(count)}


def _reconstruct(sae: Sae, hidden: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of (n, d_model) hidden states, computed in float32 on the SAE's device
    and handed back in the hidden states' dtype and device (the model may sit elsewhere, in bf16)."""
    recon = sae(hidden.to(sae.device, torch.float32)).recon
    return recon.to(hidden.device, hidden.dtype)
