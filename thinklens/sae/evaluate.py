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
  own activations in the spliced and ablated runs. KL(clean ‖ spliced) and KL(clean ‖ ablated) of the
  next-token distributions give SAEBench's KL score, 1 − KL_spliced / KL_ablated.
- SAEBench's core metrics besides (cosine, shrinkage, L1, feature-frequency shares, mean max
  encoder/decoder cosine, fraction alive) and sparse probing on the traces' labels (`probing.py`);
  `saebench.py` writes both in SAEBench's result layout.
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
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.models.loader import LoadedModel, load_model, resolve_device
from thinklens.sae.formats import check_same_model, check_width, load_sae, sae_metadata
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.probing import ProbeResult, ProbeTask, pooled_activations, probe_tasks, sparse_probe
from thinklens.sae.sae import Sae, SaeOutput


class EvalConfig(BaseModel):
    """How much held-out data to evaluate on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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
    allow_other_model: bool = Field(
        default=False, description="Use an SAE trained on another model than the run's (a deliberate transfer).")
    probe_ks: tuple[int, ...] = Field(default=(1, 2, 5), description="Feature counts of the sparse probes.")
    probe_traces: int = Field(
        default=2000, ge=0, description="Traces pooled for sparse probing (0: skip); memory ∝ traces × d_sae.")


@dataclass
class SegmentMetrics:
    tokens: int
    fvu: float
    l0: float
    dead_fraction: float = float("nan")
    dense_fraction: float = float("nan")
    l1: float = float("nan")  # mean Σ code values per token
    mse: float = float("nan")  # mean squared error per element
    cossim: float = float("nan")  # mean cosine of x and x̂
    l2_norm_in: float = float("nan")  # mean ‖x‖
    l2_norm_out: float = float("nan")  # mean ‖x̂‖
    l2_ratio: float = float("nan")  # mean ‖x̂‖ / ‖x‖ (shrinkage below 1)
    relative_reconstruction_bias: float = float("nan")  # Σ‖x̂‖² / Σ x̂·x (1: no systematic shrinkage)


@dataclass
class EvalReport:
    overall: SegmentMetrics  # its dead_fraction counts the held-out tokens only (see `tokens`)
    segments: dict[str, SegmentMetrics]
    # clean, spliced, zero_ablated, delta, loss_recovered, kl_spliced, kl_zero_ablated, kl_div_score, tokens
    lm: dict[str, float] = field(default_factory=dict)
    dead_fraction_training: float | None = None  # no firing in the last `dead_window_tokens` training tokens
    dead_window_tokens: int | None = None  # None for SAEs whose training recorded no window
    features: dict[str, float] = field(default_factory=dict)  # SAEBench's misc metrics (see feature_metrics)
    probes: list[ProbeResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "overall": self.overall.__dict__,
            "segments": {name: metrics.__dict__ for name, metrics in self.segments.items()},
            "lm": self.lm,
            "dead_fraction_training": self.dead_fraction_training,
            "dead_window_tokens": self.dead_window_tokens,
            "features": self.features,
            "probes": [probe.__dict__ for probe in self.probes],
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

    _SUMS = ("squared_error", "squared_norm", "l1", "cossim", "norm_in", "norm_out", "ratio", "dot", "recon_squared")

    def __init__(self, d_in: int, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.d_in, self.tokens, self.active = d_in, 0, 0
        self.sums = dict.fromkeys(self._SUMS, 0.0)
        self.total = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.fired = torch.zeros(d_sae, dtype=torch.long, device=device)  # tokens on which each feature fired

    def add(self, x: torch.Tensor, output: SaeOutput) -> None:
        active = output.codes.values > 0
        x, recon = x.double(), output.recon.double()
        norm_in, norm_out = x.norm(dim=-1), recon.norm(dim=-1)
        dot = (x * recon).sum(dim=-1)
        batch = {
            "squared_error": (x - recon).pow(2).sum(), "squared_norm": x.pow(2).sum(),
            "l1": output.codes.values.double().sum(), "cossim": (dot / (norm_in * norm_out).clamp_min(1e-12)).sum(),
            "norm_in": norm_in.sum(), "norm_out": norm_out.sum(), "ratio": (norm_out / norm_in.clamp_min(1e-12)).sum(),
            "dot": dot.sum(), "recon_squared": norm_out.pow(2).sum(),
        }
        for name, value in batch.items():
            self.sums[name] += value.item()
        self.tokens += len(x)
        self.total += x.sum(dim=0)
        self.active += int(active.sum())
        self.fired += torch.bincount(output.codes.features[active], minlength=len(self.fired))

    def merge(self, other: _Accumulator) -> None:
        self.tokens += other.tokens
        for name in self._SUMS:
            self.sums[name] += other.sums[name]
        self.total += other.total
        self.active += other.active
        self.fired += other.fired

    def metrics(self, dense_threshold: float) -> SegmentMetrics:
        if self.tokens == 0:
            return SegmentMetrics(0, float("nan"), float("nan"))
        sums, n = self.sums, self.tokens
        centred = sums["squared_norm"] - self.total.pow(2).sum().item() / n  # Σ‖x − x̄‖²
        rate = self.fired.double() / n
        return SegmentMetrics(
            tokens=n,
            fvu=sums["squared_error"] / max(centred, 1e-12),
            l0=self.active / n,
            dead_fraction=(self.fired == 0).double().mean().item(),
            dense_fraction=(rate > dense_threshold).double().mean().item(),
            l1=sums["l1"] / n,
            mse=sums["squared_error"] / (n * self.d_in),
            cossim=sums["cossim"] / n,
            l2_norm_in=sums["norm_in"] / n,
            l2_norm_out=sums["norm_out"] / n,
            l2_ratio=sums["ratio"] / n,
            relative_reconstruction_bias=sums["recon_squared"] / sums["dot"] if sums["dot"] else float("nan"),
        )


@torch.no_grad()
def feature_metrics(sae: Sae, fired: torch.Tensor, tokens: int, chunk: int = 2048) -> dict[str, float]:
    """SAEBench's misc metrics: firing-frequency shares, the mean over features of the largest cosine
    with another feature's encoder (and decoder) row, and the share alive on the evaluated tokens."""
    rate = fired.double().cpu() / max(tokens, 1)
    total = rate.sum().clamp_min(1e-12)

    def mean_max_cosine(weight: torch.Tensor) -> float:
        rows = F.normalize(weight.detach().float(), dim=-1)
        best = torch.empty(len(rows), device=rows.device)
        for start in range(0, len(rows), chunk):
            similarity = rows[start:start + chunk] @ rows.T
            similarity[torch.arange(len(similarity)), torch.arange(start, start + len(similarity))] = -1.0
            best[start:start + chunk] = similarity.max(dim=1).values
        return best.mean().item()

    return {
        "freq_over_1_percent": (rate > 0.01).double().mean().item(),
        "freq_over_10_percent": (rate > 0.1).double().mean().item(),
        "normalized_freq_over_1_percent": (rate[rate > 0.01].sum() / total).item(),
        "normalized_freq_over_10_percent": (rate[rate > 0.1].sum() / total).item(),
        "average_max_encoder_cosine_sim": mean_max_cosine(sae.encoder_weight),
        "average_max_decoder_cosine_sim": mean_max_cosine(sae.W_dec),
        "frac_alive": (fired > 0).double().mean().item(),
    }


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
    check_same_model(sae, store.manifest().model, store.manifest().model_fingerprint,
                     f"the activations in {activations_dir}", config.allow_other_model)
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
                        dead_fraction_training=dead_training, dead_window_tokens=window,
                        features=feature_metrics(sae, overall.fired, overall.tokens))
    if config.lm_sequences:
        loaded = loaded or load_model(store.model_config(device=config.device))
        report.lm = lm_cost(sae, layer, loaded, store, traces_dir, fraction, config.lm_sequences,
                            exclude_special, exclude_massive)
    if config.probe_traces:
        report.probes = probe(sae, store, layer, traces_dir, config)
    return report


def probe(sae: Sae, store: ActivationStore, layer: int, traces_dir: Path, config: EvalConfig) -> list[ProbeResult]:
    """Sparse probing on the tasks the traces support, over at most `probe_traces` traces."""
    tasks = probe_tasks(traces_dir)
    chosen = np.unique(np.concatenate([task.sequence_ids for task in tasks]))[: config.probe_traces] if tasks else []
    if len(chosen) == 0:
        return []
    codes, activations = pooled_activations(sae, store, layer, chosen, config.batch_size)
    results = []
    for task in tasks:
        kept = np.isin(task.sequence_ids, chosen)
        subset = ProbeTask(task.name, task.sequence_ids[kept], task.labels[kept])
        rows = np.searchsorted(chosen, subset.sequence_ids)
        result = sparse_probe(subset, codes[rows], activations[rows], config.probe_ks)
        if result is not None:
            results.append(result)
    return results


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
    traces = TraceStore(traces_dir).read(["sequence_id", "token_ids", "generation_start"],
                                         where=ds.field("sequence_id").isin(held.tolist())).to_pylist()
    sums = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0, "kl_spliced": 0.0, "kl_zero_ablated": 0.0}
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
        clean_log_probs = None
        for name, edit in edits.items():
            if edit is None:
                logits = loaded.model(ids).logits
            else:
                with edit_resid_post(loaded.model, layer, edit):
                    logits = loaded.model(ids).logits
            # Loss of predicting each completion token from what precedes it.
            log_probs = F.log_softmax(logits[0, start - 1 : -1].float(), dim=-1)
            sums[name] += F.nll_loss(log_probs, ids[0, start:], reduction="sum").item()
            if clean_log_probs is None:
                clean_log_probs = log_probs
            else:  # KL(clean ‖ edited) of the next-token distributions
                sums[f"kl_{name}"] += F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="sum").item()
        count += ids.shape[1] - start
    clean, spliced, zero, kl_spliced, kl_zero = (sums[name] / count for name in sums)
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return {"clean": clean, "spliced": spliced, "zero_ablated": zero, "delta": spliced - clean,
            "loss_recovered": recovered, "kl_spliced": kl_spliced, "kl_zero_ablated": kl_zero,
            "kl_div_score": 1 - kl_spliced / kl_zero if kl_zero else float("nan"), "tokens": float(count)}


def _reconstruct(sae: Sae, hidden: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of (n, d_model) hidden states, computed in float32 on the SAE's device
    and handed back in the hidden states' dtype and device (the model may sit elsewhere, in bf16)."""
    recon = sae(hidden.to(sae.device, torch.float32)).recon
    return recon.to(hidden.device, hidden.dtype)
