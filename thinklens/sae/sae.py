"""Sparse autoencoders with one encode/decode path for training, indexing and steering.

Design choices:
- Architectures: `batchtopk_tied` (the public DeepSeek-R1 SAEs: one matrix W; encode keeps the top
  k·batch values of ReLU(x W + b_enc) across the whole batch; decode is f Wᵀ + b_dec), `batchtopk`
  (untied), `topk` (per token) and `relu` (L1 penalty). The BatchTopK ones get a global threshold
  calibrated on training inputs at the end of training, so that encoding at inference does not
  depend on the batch.
- Layout: every weight matrix is stored feature-major, (d_sae, d_in); a feature's direction is its
  decoder row. The encoder reads x·W_encᵀ; file formats transpose at the border.
- Codes are sparse (flat COO: row, feature, value). Decoding is an `embedding_bag` over the active
  rows of W_dec, and the encoder's weight gradient is a sparse × dense product over the active
  entries only, so neither costs a dense (tokens × d_sae × d_in) matmul.
- Inputs are scaled by `input_scale`, the power of two that brings the mean input norm nearest
  √d_in; saving folds it into the weights, exactly because it is a power of two.
- The decoder bias starts at the data's geometric median. A centred encoder reads x − b_dec (as
  SAELens's apply_b_dec_to_input) and stays centred while b_dec learns; an uncentred one (the R1
  release's x·W + b_enc) starts with b_enc = −b_dec·W_encᵀ, centred only at initialisation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from thinklens.sae.parallel import Ranks

Arch = Literal["batchtopk_tied", "batchtopk", "topk", "relu"]
ARCHS: tuple[str, ...] = ("batchtopk_tied", "batchtopk", "topk", "relu")


class SaeConfig(BaseModel):
    """Shape, sparsity and provenance of an SAE."""

    model_config = ConfigDict(extra="forbid")

    arch: Arch = Field(description="batchtopk_tied (R1 release), batchtopk, topk or relu.")
    d_in: int = Field(gt=0, description="Width of the activations (the model's d_model).")
    d_sae: int = Field(gt=0, description="Number of features.")
    k: int | None = Field(default=None, gt=0, description="Active features per token (top-k archs).")
    input_scale: float = Field(default=1.0, gt=0, description="Inputs are multiplied by this before encoding.")
    centred_encoder: bool = Field(
        default=False,
        description="The encoder reads x − b_dec (SAELens's apply_b_dec_to_input), so it stays centred as b_dec "
        "learns; otherwise x, with any centring in b_enc (the R1 release).",
    )
    model: str | None = Field(default=None, description="Model the SAE was trained on.")
    model_fingerprint: str | None = Field(default=None, description="Hash or revision of that model's weights.")
    layer: int | None = Field(default=None, description="Layer whose resid_post the SAE reads.")
    chat_format: str | None = Field(default=None, description="Reasoning format of the training traces.")

    @property
    def tied(self) -> bool:
        return self.arch == "batchtopk_tied"

    @property
    def hook_name(self) -> str | None:
        return None if self.layer is None else f"layers.{self.layer}.resid_post"


@dataclass
class SparseCodes:
    """Active features of a batch as flat COO, sorted by row: values[i] of `features[i]` on `rows[i]`."""

    values: torch.Tensor  # (nnz,)
    features: torch.Tensor  # (nnz,) int64
    rows: torch.Tensor  # (nnz,) int64, non-decreasing
    n_rows: int
    d_sae: int

    def dense(self) -> torch.Tensor:
        """(n_rows, d_sae) activations."""
        out = torch.zeros(self.n_rows, self.d_sae, dtype=self.values.dtype, device=self.values.device)
        return out.index_put_((self.rows, self.features), self.values)

    def offsets(self) -> torch.Tensor:
        """Start of each row's entries in the flat arrays (for embedding_bag)."""
        return torch.searchsorted(self.rows, torch.arange(self.n_rows, device=self.rows.device))

    def l0(self) -> torch.Tensor:
        """Active features per row, (n_rows,)."""
        return torch.bincount(self.rows[self.values > 0], minlength=self.n_rows)


@dataclass
class SaeOutput:
    """Reconstruction (in input units) and the codes that made it."""

    recon: torch.Tensor  # (n, d_in)
    codes: SparseCodes
    pre_acts: torch.Tensor  # (n, d_sae), detached


class _SelectedPreActs(torch.autograd.Function):
    """Pre-activations at the selected (row, feature) entries, with a sparse encoder gradient.

    Forward returns the already computed values of (x − centre)·W_encᵀ + b_enc; backward sends the
    gradient only to the encoder rows and biases of the selected features: grad W_enc = S · (x − centre)
    with S the sparse (d_sae, n) matrix of incoming gradients — nnz · d_in work instead of
    d_sae · n · d_in. A centre that learns (b_dec of a centred encoder) gets −grad b_enc · W_enc.
    """

    @staticmethod
    def forward(ctx, values, encoder_input, weight, bias, centre, rows, features):  # noqa: D102 - torch API
        ctx.save_for_backward(encoder_input, weight, rows, features)
        ctx.centred = centre is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):  # noqa: D102 - torch API
        encoder_input, weight, rows, features = ctx.saved_tensors
        grad_values = grad_values.to(encoder_input.dtype)  # bf16 under autocast; the weight gradient is float32
        grad_weight = sparse_product(features, rows, grad_values, weight.shape[0], encoder_input)  # (d_sae, d_in)
        grad_bias = torch.zeros(weight.shape[0], dtype=grad_values.dtype, device=grad_values.device)
        grad_bias.index_add_(0, features, grad_values)
        grad_centre = -(grad_bias @ weight) if ctx.centred and ctx.needs_input_grad[4] else None
        return None, None, grad_weight, grad_bias, grad_centre, None, None


class _SparseDecode(torch.autograd.Function):
    """Σ value · W row over each row's entries (embedding_bag), with W's gradient as a CSR product.

    Forward is `embedding_bag`; backward gives the values their gradient with embedding_bag's own kernel
    and W its gradient with `sparse_product`, which on CPU takes about half the time of embedding_bag's
    dense backward (that sorts the entries and accumulates row by row).
    """

    @staticmethod
    def forward(ctx, values, weight, rows, features, offsets):  # noqa: D102 - torch API
        ctx.save_for_backward(values, weight, rows, features, offsets)
        return F.embedding_bag(features, weight, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - torch API
        values, weight, rows, features, offsets = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, weight, features, offsets, rows, 0, -1)  # offset2bag of a sum bag is the row
        if ctx.needs_input_grad[1]:
            grad_weight = sparse_product(features, rows, values.to(grad_out.dtype), weight.shape[0], grad_out)
        return grad_values, grad_weight, None, None, None


def sparse_product(out_rows: torch.Tensor, in_rows: torch.Tensor, values: torch.Tensor, n_out: int,
                   dense: torch.Tensor) -> torch.Tensor:
    """(n_out, d) with row r = Σ values[i] · dense[in_rows[i]] over the entries i with out_rows[i] = r.

    A CSR × dense product: on CPU ~1.6× faster than the same COO product (which sorts and coalesces
    internally) and ~13× faster than gathering the rows and `index_add_`."""
    order = torch.argsort(out_rows, stable=True)
    crow = torch.zeros(n_out + 1, dtype=torch.long, device=dense.device)
    crow[1:] = torch.bincount(out_rows, minlength=n_out).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta", once per process
        matrix = torch.sparse_csr_tensor(crow, in_rows[order], values[order], (n_out, dense.shape[0]),
                                         check_invariants=False)
    return matrix @ dense


class Sae(nn.Module):
    """A sparse autoencoder of any of the supported architectures."""

    def __init__(self, config: SaeConfig) -> None:
        super().__init__()
        if config.arch != "relu" and config.k is None:
            raise ValueError(f"arch {config.arch} needs k")
        self.config = config
        d_sae, d_in = config.d_sae, config.d_in
        directions = F.normalize(torch.randn(d_sae, d_in), dim=-1)  # unit-norm random feature directions
        self.W_dec = nn.Parameter(directions)  # (d_sae, d_in)
        self.W_enc = None if config.tied else nn.Parameter(directions.clone())  # encoder = decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))  # BatchTopK inference threshold; −1: not learnt

    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W_dec if self.W_enc is None else self.W_enc

    @property
    def device(self) -> torch.device:
        """Where the SAE's weights are (inputs are moved here to be encoded)."""
        return self.b_dec.device

    # ------------------------------------------------------------------ encode / decode
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_sae) pre-activations of (n, d_in) inputs in model units."""
        return torch.addmm(self.b_enc, self.encoder_input(x), self.encoder_weight.T)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder matrix reads: the scaled input, minus b_dec for a centred encoder."""
        scaled = x * self.config.input_scale
        return scaled - self.b_dec if self.config.centred_encoder else scaled

    def encode(self, x: torch.Tensor, batch_dependent: bool | None = None) -> SparseCodes:
        """Sparse codes of `x` (n, d_in). BatchTopK selects across the batch while training (or when
        `batch_dependent`), and by the learnt threshold otherwise."""
        return self._encode(x, batch_dependent)[0]

    def _encode(self, x: torch.Tensor, batch_dependent: bool | None, pre_out: torch.Tensor | None = None,
                ranks: Ranks | None = None) -> tuple[SparseCodes, torch.Tensor]:
        with torch.no_grad():
            encoder_input = self.encoder_input(x)
            weight = self.encoder_weight.T
            if pre_out is not None and (pre_out.shape, pre_out.dtype) == ((x.shape[0], self.config.d_sae), weight.dtype):
                pre = torch.addmm(self.b_enc, encoder_input, weight, out=pre_out)
            else:
                pre = torch.addmm(self.b_enc, encoder_input, weight)  # (n, d_sae)
        rows, features = self._select(pre, batch_dependent, ranks)
        values = self.values_at(encoder_input, pre, rows, features)
        return SparseCodes(values, features, rows, x.shape[0], self.config.d_sae), pre

    def feature_activations(self, x: torch.Tensor, feature: int) -> torch.Tensor:
        """One feature's inference-mode activation on each row of `x` (n,): what `encode(x,
        batch_dependent=False)` gives it. Where a feature's value depends only on its own pre-activation
        (ReLU; BatchTopK by its learnt threshold) just that column is computed; TopK needs every column."""
        if self.config.arch == "topk" or (self.config.arch != "relu" and self.threshold < 0):
            codes = self.encode(x, batch_dependent=False)
            out = torch.zeros(x.shape[0], dtype=codes.values.dtype, device=codes.values.device)
            hit = codes.features == feature
            return out.index_put_((codes.rows[hit],), codes.values[hit])
        with torch.no_grad():
            pre = self.encoder_input(x) @ self.encoder_weight[feature] + self.b_enc[feature]
        floor = 0.0 if self.config.arch == "relu" else float(self.threshold)
        return torch.where(pre > floor, F.relu(pre), torch.zeros_like(pre))

    def values_at(
        self, encoder_input: torch.Tensor, pre: torch.Tensor, rows: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """ReLU of the pre-activations at (rows, features), differentiable w.r.t. the encoder (sparsely).

        `encoder_input` is `self.encoder_input(x)` computed without a graph, `pre` the pre-activations."""
        values = pre[rows, features]
        if torch.is_grad_enabled() and self.encoder_weight.requires_grad:
            centre = self.b_dec if self.config.centred_encoder else None
            values = _SelectedPreActs.apply(values, encoder_input, self.encoder_weight, self.b_enc, centre, rows,
                                            features)
        return F.relu(values)

    def _select(self, pre: torch.Tensor, batch_dependent: bool | None,
                ranks: Ranks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, features) of the active entries, sorted by row; a batch selection spans `ranks`' global batch."""
        arch, k = self.config.arch, self.config.k
        if arch == "topk":
            features = pre.topk(k, dim=-1).indices  # (n, k)
            rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
            return rows, features.flatten()
        if arch == "relu":
            rows, features = (pre > 0).nonzero(as_tuple=True)
            return rows, features
        use_batch = self.training if batch_dependent is None else batch_dependent
        if use_batch or self.threshold < 0:
            return batch_topk_entries(pre, k, ranks)
        return (pre > self.threshold).nonzero(as_tuple=True)

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        """(n, d_in) reconstruction in model units."""
        return (self.feature_sum(codes) + self.b_dec) / self.config.input_scale

    def feature_sum(self, codes: SparseCodes) -> torch.Tensor:
        """Σ value · decoder row over each row's active features, (n, d_in), in scaled units, no bias."""
        weights = codes.values.to(self.W_dec.dtype)  # bf16 codes from an autocast encoder: decode in W_dec's dtype
        if torch.is_grad_enabled() and (weights.requires_grad or self.W_dec.requires_grad):
            return _SparseDecode.apply(weights, self.W_dec, codes.rows, codes.features, codes.offsets())
        return F.embedding_bag(codes.features, self.W_dec, codes.offsets(), mode="sum", per_sample_weights=weights)

    def forward(self, x: torch.Tensor, pre_out: torch.Tensor | None = None, ranks: Ranks | None = None) -> SaeOutput:
        """Encode and decode `x`. `pre_out`, a (n, d_sae) buffer reused across steps, receives the
        pre-activations (a fresh 75 MB tensor per step costs its page faults: ~20 % of the encoder matmul
        on CPU); the output's `pre_acts` is then that buffer, valid until the next call. With `ranks`, `x` is
        this rank's slice of a global batch and BatchTopK selects over the global batch."""
        codes, pre = self._encode(x, None, pre_out, ranks)
        return SaeOutput(self.decode(codes), codes, pre)

    @torch.no_grad()
    def calibrate_threshold(self, batches: list[torch.Tensor]) -> None:
        """Set the BatchTopK inference threshold from batches of training inputs: the mean over them of
        the batch's cut (its smallest selected pre-activation), so that encoding by the threshold keeps
        about k features per token, as batch selection did (Bussmann et al. 2024)."""
        if self.config.arch not in ("batchtopk", "batchtopk_tied"):
            return
        cuts = []
        for x in batches:
            pre = self.pre_acts(x.to(self.device, torch.float32))
            kept = pre[batch_topk_entries(pre, self.config.k)]
            if kept.numel():
                cuts.append(kept.min())
        if cuts:
            self.threshold.copy_(torch.stack(cuts).mean())

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, geometric_median: bool = True, scale_inputs: bool = True) -> None:
        """Set input_scale, b_dec (geometric median or mean) and b_enc from a sample (n, d_in)."""
        if scale_inputs:
            mean_norm = sample.norm(dim=-1).mean().item()
            # A power of two, so that folding the scale into the weights on save is exact.
            scale = 2.0 ** round(math.log2(math.sqrt(self.config.d_in) / mean_norm))
            self.config = self.config.model_copy(update={"input_scale": scale})
        scaled = sample * self.config.input_scale
        centre = geometric_median_of(scaled) if geometric_median else scaled.mean(dim=0)
        self.b_dec.copy_(centre)
        # Either way the encoder first sees x − b_dec; a centred encoder keeps seeing it as b_dec learns.
        self.b_enc.copy_(torch.zeros_like(self.b_enc) if self.config.centred_encoder
                         else -(centre @ self.encoder_weight.T))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows (untied only; a tied W keeps its learnt norms)."""
        if not self.config.tied:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of W_dec's gradient that would change row norms (untied only)."""
        if self.config.tied or self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)


_CUT_SAMPLE = 1 << 16  # pre-activations sampled to estimate the batch's cut


def batch_topk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k·n largest positive entries of `pre` (n, d_sae) across the whole batch (ties at
    the cut all kept); see `batch_topk_entries`."""
    rows, features = batch_topk_entries(pre, k)
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[rows, features] = True
    return mask


def batch_topk_entries(pre: torch.Tensor, k: int, ranks: Ranks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features), sorted by row, of the k·n largest positive entries of `pre` (n, d_sae) across
    the whole batch. Ties at the cut are all kept.

    Exact, at about the cost of one pass over `pre`: the cut is first estimated from a fixed-seed
    random sample (`kthvalue`, with a margin that makes it fall below the true cut); the entries at
    or above the estimate (few) are gathered in one pass, and the exact cut is found among them.
    Should the estimate land above the true cut (fewer than k·n entries reach it), it is lowered
    until it does not.

    With `ranks` of a data-parallel group, `pre` is this rank's slice of the global batch and the
    selection is the global batch's: the lowest of the ranks' estimates, the candidates counted across
    ranks, and the exact cut found among every rank's candidates (values only travel, ~1.5·k·n floats),
    so each rank keeps exactly the entries one process holding the whole batch would keep there.
    """
    ranks = ranks or Ranks()
    n, d_sae = pre.shape
    flat = pre.flatten()
    entries = flat.numel() * ranks.world
    total = min(k * n * ranks.world, entries)
    if total == entries:
        return (pre > 0).nonzero(as_tuple=True)
    sample_size = min(flat.numel(), _CUT_SAMPLE)
    generator = torch.Generator(device=pre.device).manual_seed(0)
    sample = flat[torch.randint(flat.numel(), (sample_size,), device=pre.device, generator=generator)]
    share = total / entries
    # Aim for ~1.5× the entries needed, plus four standard deviations of the sample's error.
    aim = min(1.0, 1.5 * share + 4 * math.sqrt(share / sample_size))
    while True:
        kept = max(1, min(sample_size, math.ceil(aim * sample_size)))
        estimate = ranks.min_(sample.kthvalue(sample_size - kept + 1).values if aim < 1 else flat.min())
        candidates = _indices_at_least(flat, estimate)  # flat indices, ascending: row-major order
        if int(ranks.sum_(torch.tensor(len(candidates), device=pre.device))) >= total:
            break
        aim = min(1.0, aim * 2)
    values = flat[candidates]
    everyone = ranks.gather(values)
    cut = everyone.kthvalue(len(everyone) - total + 1).values
    chosen = candidates[(values >= cut) & (values > 0)]
    return chosen // d_sae, chosen % d_sae


def _indices_at_least(flat: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the entries of `flat` that are ≥ `cut`, for a cut that few entries reach.

    `nonzero` over the whole boolean mask is most of the cost on CPU; read as 8-byte words, the mask is
    scanned 8 entries at a time, and only the words holding a candidate (~8 % at 1 % density) are
    expanded. Same indices, in about 60 % of the time."""
    mask = flat >= cut
    if flat.device.type != "cpu" or mask.numel() % 8:
        return mask.nonzero().squeeze(1)
    words = mask.view(torch.int64).nonzero().squeeze(1)  # words with at least one candidate
    word, byte = mask.view(-1, 8)[words].nonzero(as_tuple=True)
    return words[word] * 8 + byte


@torch.no_grad()
def geometric_median_of(points: torch.Tensor, iterations: int = 50, tolerance: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to `points` (n, d)."""
    median = points.mean(dim=0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=-1).clamp_min(1e-8)
        updated = (weights[:, None] * points).sum(dim=0) / weights.sum()
        if (updated - median).norm() < tolerance * median.norm().clamp_min(1e-8):
            return updated
        median = updated
    return median
