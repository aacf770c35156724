"""Train an SAE by streaming a harvested activation store.

The loop: next batch → forward → loss (+ AuxK) → backward → project, clip, step, schedule →
renormalise → track dead features → log, checkpoint if due; at the end the BatchTopK inference
threshold is calibrated on training inputs with the final weights. A checkpoint
holds weights, optimiser state, counters and the number of batches consumed, so a killed run
resumes exactly where it stopped (the reader is deterministic and is fast-forwarded).

On CUDA the encoder/decoder forward runs under bf16 autocast and the remaining float32 matmuls
use TF32 (`dtype: auto`); weights, gradients and the optimiser state stay float32. On CPU
everything is float32, bit for bit as before. The device is placement, not a setting of the
result: a run may resume on another device.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from thinklens.activations.reader import ActivationReader, ReaderConfig
from thinklens.activations.store import ActivationManifest, ActivationStore
from thinklens.errors import ThinklensError, refuse_other_identity
from thinklens.files import atomic_path, ensure_dir, result_settings, without_placement
from thinklens.models.loader import resolve_device
from thinklens.progress import progress_bar
from thinklens.sae.formats import CFG_FILE, sae_metadata, save_sae
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.parallel import Ranks, joined_from_environment, rank_device
from thinklens.sae.sae import Arch, Sae, SaeConfig, SaeOutput, SparseCodes

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "training_log.jsonl"


class TrainConfig(BaseModel):
    """Architecture, optimisation and data settings of one SAE training run."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    arch: Arch = Field(default="batchtopk_tied", description="SAE architecture.")
    expansion: int = Field(default=8, ge=1, description="Features per input dimension (d_sae = expansion × d_model).")
    k: int = Field(default=32, ge=1, description="Active features per token (top-k architectures).")
    l1_coefficient: float = Field(default=5.0, ge=0, description="L1 penalty weight (relu architecture).")
    layer: int | None = Field(default=None, description="Harvested layer to train on; default: the first one.")
    tokens: int | None = Field(default=None, ge=1, description="Training tokens; default: `epochs` passes.")
    epochs: int = Field(default=4, ge=1, description="Passes over the training split when `tokens` is not set.")
    batch_size: int | None = Field(
        default=None, ge=1, description="Tokens per step; default 4096, or 1/16 of the data when that is smaller."
    )
    min_steps: int = Field(
        default=200, ge=0, description="Small stores get more epochs to reach this many steps (unless --tokens)."
    )
    lr: float | None = Field(
        default=None, gt=0,
        description="Peak Adam learning rate; default 2e-3·√(4096 / d_sae) (1.9e-3 at 4608 features, 7.6e-4 at 28,672).",
    )
    warmup_steps: int | None = Field(default=None, ge=0, description="Linear warm-up steps; default 5 % of the run.")
    decay_fraction: float = Field(default=0.2, ge=0, le=1, description="Final share of steps with linear decay to 0.")
    grad_clip: float = Field(default=1.0, gt=0, description="Gradient norm clip.")
    aux_k: int = Field(default=256, ge=1, description="Dead features used by the AuxK loss.")
    aux_tokens: int = Field(
        default=512, ge=1,
        description="Tokens of each (shuffled) batch the AuxK loss is computed on: a mean over tokens, so a subset "
        "estimates it without bias, at a fraction of its cost (all of a 4096-token batch took 60 % of a step).")
    aux_coefficient: float = Field(
        default=1 / 8, ge=0,
        description="Weight of the AuxK loss (1/8: on a planted dictionary 1/32 left 9.6 % dead, 1/8 2.5 %).")
    dead_after_tokens: int = Field(default=50_000, ge=1, description="A feature unseen for this many tokens is dead.")
    normalize_inputs: bool = Field(
        default=True, description="Scale inputs by a power of two to mean norm ≈ √d_model (folded into the saved weights)."
    )
    centred_encoder: bool = Field(
        default=True,
        description="Encode x − b_dec, so the encoder follows b_dec as it learns (a shared mean much larger than "
        "the features otherwise drifts into every pre-activation and kills features).",
    )
    b_dec_init: str = Field(default="geometric_median", pattern="^(geometric_median|mean)$",
                            description="Decoder bias initialisation from a data sample.")
    init_tokens: int = Field(default=16384, ge=1, description="Sample size for the data-based initialisation.")
    buffer_tokens: int = Field(default=262_144, ge=1, description="Shuffle buffer of the reader, in tokens.")
    holdout_fraction: float = Field(default=0.05, ge=0, lt=1, description="Share of sequences held out for eval.")
    include_special: bool = Field(default=False, description="Train on special/chat-template tokens too.")
    include_massive: bool = Field(default=False, description="Train on massive-activation tokens too.")
    checkpoint_every: int = Field(default=200, ge=1, description="Steps between checkpoints.")
    seed: int = Field(default=0, description="Seed of initialisation and data order.")
    wandb_project: str | None = Field(default=None, description="Log to this W&B project (WANDB_MODE=offline works).")
    device: str = Field(
        default="auto", description="Where the SAE trains: 'auto' (cuda when available, else cpu), 'cpu', 'cuda:1', ..."
    )
    distribute_layers: bool = Field(
        default=False,
        description="Train an SAE for every layer the store holds, the layers shared out over the ranks (each rank "
        "trains its own on its own: sparsify's distribute_modules); the run's layer goes to RUN/sae, the others to "
        "RUN/saes/layers.L.resid_post.")
    nproc: int = Field(
        default=1, ge=1, le=1024,
        description="Training ranks on this node (torchrun, gloo on CPU / NCCL on CUDA); the SAE is the one-process "
        "SAE up to float rounding. Placement: a run may resume on another number of ranks.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="Forward precision: 'auto' is bf16 autocast + TF32 on CUDA and float32 on CPU; 'float32' forces "
        "full float32. Weights and optimiser state are float32 either way.",
    )


@dataclass
class TrainResult:
    sae_dir: Path
    steps: int
    tokens: int
    seconds: float
    final: dict[str, float]
    batch_size: int
    skipped: bool = False
    rank: int = 0  # this process's rank, of `ranks` (1: a single process)
    ranks: int = 1

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StepStats:
    loss: float
    fvu: float
    l0: float
    dead_fraction: float


def train(config: TrainConfig, activations_dir: Path, sae_dir: Path, show_progress: bool = True) -> TrainResult:
    """Train an SAE on `activations_dir` into `sae_dir`, resuming from its checkpoint if one exists.

    Launched as several ranks (`torchrun`, see `thinklens.sae.parallel`), each rank trains on its share
    of every global batch and rank 0 writes; the SAE is the single process's up to float rounding.
    """
    started = time.perf_counter()
    device = rank_device(resolve_device(config.device))  # before anything is read or written
    with joined_from_environment(device) as ranks:
        return _train(config, Path(activations_dir), Path(sae_dir), device, ranks, show_progress, started)


def train_layers(config: TrainConfig, activations_dir: Path, sae_dirs: dict[int, Path],
                 show_progress: bool = True) -> list[TrainResult]:
    """Train one SAE per layer in `sae_dirs` (layer → directory). Launched as several ranks, rank r trains
    layers[r::world], each alone (no gradients exchanged); one process trains them one after another. The
    run's own layer (`config.layer`, default the first) keeps `config` as given, so its record is the one
    a plain `train` makes; the others record their layer."""
    device = rank_device(resolve_device(config.device))
    default = config.layer if config.layer is not None else next(iter(sae_dirs))
    with joined_from_environment(device) as ranks:
        mine = list(sae_dirs)[ranks.rank::ranks.world]
        results = [_train(config if layer == default else config.model_copy(update={"layer": layer}),
                          Path(activations_dir), Path(sae_dirs[layer]), device, Ranks(),
                          show_progress and ranks.writer, time.perf_counter())
                   for layer in mine]
        ranks.barrier()  # every layer's SAE is on disk before any rank returns
    return [replace(result, rank=ranks.rank, ranks=ranks.world) for result in results]


@dataclass(frozen=True)
class TrainingPlan:
    """What a training run will do, checked before anything is written: the config with its automatic
    values resolved, the layer, the steps, and the finished result when there is nothing to do."""

    config: TrainConfig
    layer: int
    sae_config: SaeConfig
    total_steps: int
    finished: TrainResult | None


def plan_training(config: TrainConfig, activations_dir: Path, sae_dir: Path, world: int = 1) -> TrainingPlan:
    """The plan of training `sae_dir` on `activations_dir` over `world` ranks; bad settings raise
    ThinklensError naming the fix (a launcher calls this before it starts any rank)."""
    manifest = ActivationStore(activations_dir).manifest()
    # Train's layer is a choice among the harvested ones (default the first), checked like any SAE's.
    layer = resolve_sae_layer(None, manifest.layers, manifest.layers[0] if config.layer is None else config.layer,
                              holder=f"the activations in {activations_dir}")
    n_train = ActivationReader(activations_dir, _reader_config(config, layer, epochs=1)).n_tokens
    config = _resolve_batch_size(config, n_train, world)
    _check_sizes(config, n_train, manifest.d_model, activations_dir, world)
    total_steps = _total_steps(config, n_train)
    config = _resolve_schedule(config, config.expansion * manifest.d_model, total_steps)
    return TrainingPlan(config, layer, _sae_config(config, manifest, layer), total_steps,
                        _finished_training(sae_dir, config))


def _train(config: TrainConfig, activations_dir: Path, sae_dir: Path, device: torch.device, ranks: Ranks,
           show_progress: bool, started: float) -> TrainResult:
    plan = plan_training(config, activations_dir, sae_dir, ranks.world)
    if plan.finished is not None:
        return replace(plan.finished, rank=ranks.rank, ranks=ranks.world)
    config, layer, total_steps = plan.config, plan.layer, plan.total_steps
    trainer = _Trainer(config, plan.sae_config, total_steps, device, ranks)
    checkpoint = sae_dir / CHECKPOINT_FILE
    if checkpoint.is_file():
        trainer.load_checkpoint(checkpoint, config)
    else:
        trainer.sae.init_from_data(
            _init_sample(activations_dir, config, layer).to(device),
            geometric_median=config.b_dec_init == "geometric_median",
            scale_inputs=config.normalize_inputs,
        )
        for tensor in trainer.sae.state_dict().values():
            ranks.broadcast_(tensor)  # every rank computed the same start; rank 0's is the one
    batches = _batches(activations_dir, config, layer, total_steps, skip=trainer.step, ranks=ranks)
    logger = _Logger(sae_dir, config, resume_step=trainer.step, active=ranks.writer)
    try:
        stats = _train_steps(trainer, batches, logger, checkpoint, total_steps, show_progress and ranks.writer)
    except BaseException:
        logger.close()  # its lines past the checkpoint are dropped on resume; open, they could land later
        raise
    final = {"loss": stats.loss, "fvu": stats.fvu, "l0": stats.l0, "dead_fraction": stats.dead_fraction}
    if ranks.writer:
        trainer.sae.calibrate_threshold(list(_init_sample(activations_dir, config, layer).split(config.batch_size)))
        metadata = {"training": result_settings(config), "steps": trainer.step, "final": final,
                    "dead_features": trainer.dead_record()}
        logger.close()  # the whole log on disk before the SAE that says training finished
        save_sae(trainer.sae, sae_dir, metadata=metadata)
        checkpoint.unlink(missing_ok=True)  # a kill before this leaves a checkpoint the next call removes
    ranks.barrier()  # every rank returns once the SAE is on disk
    seconds = time.perf_counter() - started
    return TrainResult(sae_dir, trainer.step, trainer.step * config.batch_size, seconds, final, config.batch_size,
                       rank=ranks.rank, ranks=ranks.world)


def _check_sizes(config: TrainConfig, n_train: int, d_model: int, activations_dir: Path, world: int) -> None:
    """Refuse, with the fix, a batch larger than the data, one that does not split over the ranks, or a k
    larger than the SAE."""
    if n_train < config.batch_size:
        raise ThinklensError(
            f"only {n_train} training tokens in {activations_dir}, fewer than one batch of {config.batch_size}: "
            "collect and harvest more traces or lower --batch-size"
        )
    if config.batch_size % world:
        raise ThinklensError(f"a batch of {config.batch_size} tokens does not split over {world} ranks: pass a "
                             f"--batch-size divisible by {world}")
    d_sae = config.expansion * d_model
    if config.arch != "relu" and config.k > d_sae:
        raise ThinklensError(f"k = {config.k} active features of {d_sae} (expansion {config.expansion} × d_model "
                             f"{d_model}): pass --k at most {d_sae}, or a larger --expansion")


def _train_steps(trainer: _Trainer, batches: Any, logger: _Logger, checkpoint: Path, total_steps: int,
                 show_progress: bool) -> StepStats:
    """The training loop: a step, its log line, and every `checkpoint_every` steps the log flushed then a
    checkpoint; a non-finite loss stops it with the checkpoint kept. Returns the last step's stats."""
    config = trainer.config
    stats = StepStats(math.nan, math.nan, math.nan, math.nan)
    with progress_bar("train", total=total_steps, enabled=show_progress) as bar, _fast_matmuls(trainer.tf32):
        bar.advance(trainer.step)
        for batch in batches:
            stats = trainer.train_step(batch.to(trainer.device, non_blocking=True))
            if not math.isfinite(stats.loss):
                kept = f"the checkpoint in {checkpoint} is kept" if checkpoint.is_file() else "nothing was saved"
                raise ThinklensError(f"training diverged at step {trainer.step} (loss {stats.loss}): lower --lr (it "
                                     f"was {trainer.lr():.3g}) and train again; {kept}")
            logger.log(trainer.step, stats, trainer.lr())
            bar.advance(1, tokens=len(batch), status=_status(stats))
            if trainer.step % config.checkpoint_every == 0 and trainer.step < total_steps and trainer.ranks.writer:
                logger.flush()
                trainer.save_checkpoint(checkpoint)
    return stats


def _finished_training(sae_dir: Path, config: TrainConfig) -> TrainResult | None:
    """The result of a completed run with the same settings (nothing to do), or None to train.

    A completed SAE trained with other settings is refused rather than overwritten.
    """
    if not (sae_dir / CFG_FILE).is_file():
        return None
    metadata = sae_metadata(sae_dir)
    refuse_other_identity(sae_dir, _settings_of_record(metadata.get("training", {})), result_settings(config),
                          "an SAE trained with other settings", f"remove {sae_dir} or train into another run")
    (sae_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # left by a kill between saving the SAE and removing it
    steps = int(metadata.get("steps", 0))
    return TrainResult(sae_dir, steps, steps * (config.batch_size or 0), 0.0, metadata.get("final", {}),
                       config.batch_size or 0, skipped=True)


def _settings_of_record(recorded: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings in today's terms: without placement, and with the defaults of fields added
    since (an SAE trained before `dtype` existed trained in float32 on CPU, which is what 'auto' is there; one
    trained before `centred_encoder` had an uncentred encoder)."""
    added = {"dtype": TrainConfig.model_fields["dtype"].default, "centred_encoder": False}
    return {**added, **without_placement(recorded)}


@contextmanager
def _fast_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 for float32 matmuls on CUDA while training, restored afterwards."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class _Trainer:
    """The SAE, its optimiser and the counters that a checkpoint must carry."""

    def __init__(self, config: TrainConfig, sae_config: SaeConfig, total_steps: int,
                 device: torch.device | None = None, ranks: Ranks | None = None) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.ranks = ranks or Ranks()
        self.device = device or torch.device("cpu")
        self.sae = Sae(sae_config).train().to(self.device)  # created on CPU first: the same init on every device
        # Fused: one kernel per step for all parameters (the same update as the default loop, in less time).
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)
        self.total_steps = total_steps
        self.step = 0
        self.tokens_since_fired = torch.zeros(sae_config.d_sae, dtype=torch.long, device=self.device)
        on_cuda = self.device.type == "cuda"
        self.bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and on_cuda)  # autocast the forward
        self.tf32 = on_cuda and config.dtype != "float32"
        self.pre_buffer: torch.Tensor | None = None  # the float32 forward's pre-activations, reused every step

    def forward(self, x: torch.Tensor) -> SaeOutput:
        """The SAE's forward, under bf16 autocast when asked (the loss is then computed in float32)."""
        if not self.bf16:
            if self.pre_buffer is None or self.pre_buffer.shape[0] != len(x):
                self.pre_buffer = x.new_empty(len(x), self.sae.config.d_sae)
            return self.sae(x, self.pre_buffer, self.ranks)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.sae(x, ranks=self.ranks)

    def lr(self) -> float:
        """Warm-up, constant, then linear decay to zero over the last `decay_fraction` of steps."""
        config, step = self.config, self.step
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        decay_start = self.total_steps * (1 - config.decay_fraction)
        if step >= decay_start and config.decay_fraction > 0:
            return config.lr * warm * max(0.0, (self.total_steps - step) / (self.total_steps - decay_start))
        return config.lr * warm

    def train_step(self, x: torch.Tensor) -> StepStats:
        """One optimiser step on `x`: the whole batch, or this rank's share of the global batch (every rank
        then applies the same averaged gradient, so the weights stay identical across ranks)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        output = self.forward(x)
        scale = self.sae.config.input_scale
        error = (x - output.recon) * scale  # (n, d_in) in the scaled units the SAE works in
        mse = error.pow(2).sum(dim=-1).mean()
        loss = mse + self._penalty(output) + self._aux_loss(x, output, error.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.ranks.mean_gradients(list(self.sae.parameters()))
        self.sae.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.sae.normalize_decoder()
        self._track(x, output)
        self.step += 1
        return self._stats(x, loss, mse, output)

    @torch.no_grad()
    def _stats(self, x: torch.Tensor, loss: torch.Tensor, mse: torch.Tensor, output: SaeOutput) -> StepStats:
        """The step's figures over the global batch, from sums reduced across ranks in one message.

        Σ‖x − x̄‖² = Σ‖x‖² − n‖x̄‖², in float64: residual streams' means are large."""
        wide = x.double()
        active = (output.codes.values > 0).sum().double()
        sums = self.ranks.sum_(torch.cat([torch.stack([loss.detach().double(), mse.detach().double() * len(x),
                                                      wide.pow(2).sum(), active]), wide.sum(dim=0)]))
        n = len(x) * self.ranks.world
        variance = (sums[2] - sums[4:].pow(2).sum() / n) * self.sae.config.input_scale**2
        dead = (self.tokens_since_fired > self.config.dead_after_tokens).float().mean().item()
        return StepStats((sums[0] / self.ranks.world).item(), (sums[1] / variance).item(), (sums[3] / n).item(), dead)

    def _penalty(self, output: SaeOutput) -> torch.Tensor:
        if self.sae.config.arch != "relu":
            return output.codes.values.new_zeros(())
        norms = self.sae.W_dec.norm(dim=-1)[output.codes.features]
        return self.config.l1_coefficient * (output.codes.values * norms).sum() / output.codes.n_rows

    def _aux_loss(self, x: torch.Tensor, output: SaeOutput, error: torch.Tensor) -> torch.Tensor:
        """AuxK: the top `aux_k` dead features must explain the residual error (Gao et al. 2024).

        Computed on the global batch's first `aux_tokens` tokens (batches come shuffled: a random subset),
        of which this rank holds the first `n` of its rows; its error variance is reduced across ranks. The
        returned term is this rank's part, scaled so that the ranks' averaged gradients are the whole one's."""
        dead = self.tokens_since_fired > self.config.dead_after_tokens
        if self.config.aux_coefficient == 0 or not bool(dead.any()) or self.sae.config.arch == "relu":
            return error.new_zeros(())
        world = self.ranks.world
        subset = min(len(x) * world, self.config.aux_tokens)
        n = max(0, min(len(x), subset - self.ranks.share(len(x) * world).start))
        x, error, pre_acts = x[:n], error[:n], output.pre_acts[:n]
        wide = error.double()
        sums = self.ranks.sum_(torch.cat([wide.pow(2).sum().view(1), wide.sum(dim=0)]))
        variance = ((sums[0] - sums[1:].pow(2).sum() / subset) / subset).clamp_min(1e-8).to(error.dtype)
        if n == 0:
            return error.new_zeros(())
        dead_ids = dead.nonzero().squeeze(-1)
        k = min(self.config.aux_k, len(dead_ids))
        picked = pre_acts[:, dead_ids].topk(k, dim=-1).indices  # (n, k) into dead_ids
        features = dead_ids[picked].flatten()
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        with torch.no_grad():
            encoder_input = self.sae.encoder_input(x)
        values = self.sae.values_at(encoder_input, pre_acts, rows, features)
        aux_recon = self.sae.feature_sum(SparseCodes(values, features, rows, n, self.sae.config.d_sae))
        return world * self.config.aux_coefficient * (error - aux_recon).pow(2).sum() / subset / variance

    @torch.no_grad()
    def _track(self, x: torch.Tensor, output: SaeOutput) -> None:
        """Dead-feature counters."""
        fired = self.ranks.sum_(torch.bincount(output.codes.features[output.codes.values > 0],
                                               minlength=self.sae.config.d_sae))
        self.tokens_since_fired += x.shape[0] * self.ranks.world
        self.tokens_since_fired[fired > 0] = 0

    def dead_record(self) -> dict[str, float | int | None]:
        """Share of features that did not fire in the last `dead_after_tokens` training tokens (SAELens'
        rule), with the window it was measured over: the whole run when that was shorter."""
        trained = self.step * (self.config.batch_size or 0)
        window = min(self.config.dead_after_tokens, trained)
        if window == 0:
            return {"fraction": None, "window_tokens": 0}
        # A full window: the training rule itself (`>`); a short run: never fired at all.
        dead = self.tokens_since_fired > window if trained > window else self.tokens_since_fired >= trained
        return {"fraction": dead.float().mean().item(), "window_tokens": window}

    def save_checkpoint(self, path: Path) -> None:
        state = {
            "sae": self.sae.state_dict(),
            "sae_config": self.sae.config.model_dump(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens_since_fired": self.tokens_since_fired,
            "training": result_settings(self.config),
        }
        with atomic_path(path) as temp:
            torch.save(state, temp)

    def load_checkpoint(self, path: Path, config: TrainConfig) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if _settings_of_record(state["training"]) != result_settings(config):
            raise ThinklensError(f"{path} belongs to a run with other settings: remove it to start over")
        self.sae.config = SaeConfig(**state["sae_config"])
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.tokens_since_fired = state["tokens_since_fired"].to(self.device)


def _resolve_batch_size(config: TrainConfig, n_train: int, world: int = 1) -> TrainConfig:
    """The config with its automatic batch size filled in (what the SAE metadata records); over several
    ranks, rounded down to split evenly (a whole run's default: 4096 splits over any power of two)."""
    if config.batch_size is not None:
        return config
    size = min(4096, max(128, n_train // 16))
    return config.model_copy(update={"batch_size": max(world, size - size % world)})


def _total_steps(config: TrainConfig, n_train: int) -> int:
    """Steps of the run: `tokens` or `epochs` passes, and at least `min_steps` (in whole epochs) unless `tokens`."""
    steps_per_epoch = n_train // config.batch_size
    total_steps = (config.tokens or config.epochs * n_train) // config.batch_size
    if config.tokens is None and total_steps < config.min_steps:
        total_steps = math.ceil(config.min_steps / steps_per_epoch) * steps_per_epoch
    return total_steps


def default_lr(d_sae: int) -> float:
    """Peak learning rate for a width: 2e-3 at 4096 features, ∝ 1/√d_sae (sparsify's scaling).

    Measured (benchmarks/recovery.py, benchmarks/train.py): 4e-4 left a 512-wide SAE recovering 80 % of
    a planted dictionary and SmolLM2's layer 15 at FVU 0.055 after 200 steps; this rule recovers all of
    it and reaches FVU 0.022."""
    return 2e-3 * math.sqrt(4096 / d_sae)


def _resolve_schedule(config: TrainConfig, d_sae: int, total_steps: int) -> TrainConfig:
    """The config with its automatic learning rate and warm-up filled in."""
    update: dict[str, Any] = {}
    if config.lr is None:
        update["lr"] = default_lr(d_sae)
    if config.warmup_steps is None:
        update["warmup_steps"] = round(0.05 * total_steps)
    return config.model_copy(update=update) if update else config


def _reader_config(config: TrainConfig, layer: int, epochs: int, split: str = "train") -> ReaderConfig:
    return ReaderConfig(
        layer=layer,
        batch_size=config.batch_size or 4096,
        buffer_tokens=config.buffer_tokens,
        seed=config.seed,
        epochs=epochs,
        exclude_special=not config.include_special,
        exclude_massive=not config.include_massive,
        split=split,
        holdout_fraction=config.holdout_fraction,
        drop_last=True,
    )


def _batches(activations_dir: Path, config: TrainConfig, layer: int, total_steps: int, skip: int,
             ranks: Ranks | None = None) -> Iterator[torch.Tensor]:
    """Exactly `total_steps` full batches, cycling epochs; the first `skip` are consumed unseen (resume).
    Over several ranks, this rank's share of each (the reader reads only that share's rows)."""
    ranks = ranks or Ranks()
    reader = ActivationReader(activations_dir, replace(_reader_config(config, layer, epochs=10**9),
                                                       rank=ranks.rank, world=ranks.world))
    for step, batch in enumerate(reader):
        if step >= total_steps:
            return
        if step >= skip:
            yield batch


def _init_sample(activations_dir: Path, config: TrainConfig, layer: int) -> torch.Tensor:
    """A shuffled sample of training tokens for the data-based initialisation."""
    sample = replace(
        _reader_config(config, layer, epochs=1),
        batch_size=config.init_tokens,
        buffer_tokens=2 * config.init_tokens,  # a small buffer: the first batch comes without a full pass
        drop_last=False,
    )
    return next(iter(ActivationReader(activations_dir, sample)))


def _sae_config(config: TrainConfig, manifest: ActivationManifest, layer: int) -> SaeConfig:
    d_model = manifest.d_model
    return SaeConfig(
        arch=config.arch,
        d_in=d_model,
        d_sae=config.expansion * d_model,
        k=None if config.arch == "relu" else config.k,
        centred_encoder=config.centred_encoder,
        model=manifest.model,
        model_fingerprint=manifest.model_fingerprint,
        layer=layer,
        chat_format=manifest.chat_format,
    )


def _status(stats: StepStats) -> str:
    return f"loss {stats.loss:.4g}  FVU {stats.fvu:.3f}  L0 {stats.l0:.1f}  dead {stats.dead_fraction:.1%}"


class _Logger:
    """JSON lines in sae/training_log.jsonl, and W&B when a project is set."""

    def __init__(self, directory: Path, config: TrainConfig, resume_step: int, active: bool = True) -> None:
        """Resuming from the checkpoint of `resume_step`, the log keeps exactly one line per step up to it:
        lines a killed run wrote past its checkpoint are dropped, as those steps are trained again. An
        inactive logger (a rank other than 0) writes nothing."""
        self.file = None
        self.run = None
        if not active:
            return
        ensure_dir(directory)
        path = directory / LOG_FILE
        kept = []
        if resume_step > 0 and path.is_file():
            seen: set[int] = set()
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by the kill
                if step <= resume_step and step not in seen:
                    seen.add(step)
                    kept.append(line + "\n")
        with atomic_path(path) as temp:
            temp.write_text("".join(kept))
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()
        if config.wandb_project:
            try:
                import wandb  # optional dependency
            except ImportError:
                raise ThinklensError("--wandb-project needs W&B: run `pip install wandb` (WANDB_MODE=offline works)") from None

            self.run = wandb.init(project=config.wandb_project, config=config.model_dump(mode="json"), resume="allow")

    def log(self, step: int, stats: StepStats, lr: float) -> None:
        if self.file is None:
            return
        record = {"step": step, **stats.__dict__, "lr": lr}
        self.file.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(record, step=step)

    def flush(self) -> None:
        """Every line so far on disk: called before a checkpoint, so the log never lags the weights."""
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.run is not None:
            self.run.finish()
