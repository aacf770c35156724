"""train: an SAE on RUN/activations → RUN/sae (one process, or `--nproc N` ranks under torchrun)."""

from __future__ import annotations

from thinklens.distributed.torchrun import launch_training
from thinklens.pipeline.lock import LAUNCHER_HOLDS_LOCK
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult
from thinklens.sae.formats import sae_metadata
from thinklens.sae.parallel import launched_by_torchrun
from thinklens.sae.train import TrainConfig, TrainResult, plan_training, train


def run(config: TrainConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Train (or resume training) the SAE; a finished SAE with the same settings is kept."""
    if config.nproc > 1 and not launched_by_torchrun():
        return _launch(config, rundir)
    result = train(config, rundir.activations, rundir.sae, show_progress=progress)
    if result.rank > 0:
        return StageResult.nothing_to_do(f"rank {result.rank} of {result.ranks} done; rank 0 writes {result.sae_dir}")
    if result.skipped:
        return StageResult.nothing_to_do(f"{result.sae_dir} already holds an SAE trained with these settings")
    return _trained(result)


def _launch(config: TrainConfig, rundir: RunDir) -> StageResult:
    """`--nproc N`: checked here first, then the ranks run under torchrun (holding this process's run lock);
    the result is the SAE they wrote."""
    if plan_training(config, rundir.activations, rundir.sae, world=config.nproc).finished is not None:
        return StageResult.nothing_to_do(f"{rundir.sae} already holds an SAE trained with these settings")
    seconds = launch_training(config, rundir.root, env={LAUNCHER_HOLDS_LOCK: str(rundir.root.resolve())})
    metadata = sae_metadata(rundir.sae)
    final, steps, batch_size = metadata["final"], int(metadata["steps"]), int(metadata["training"]["batch_size"])
    return StageResult(  # rank 0 printed the training's own figures above
        skipped=False,
        headline=f"train → {rundir.sae} on {config.nproc} ranks",
        facts={"steps / tokens": f"{steps:,} / {steps * batch_size:,}",
               "wall time, start-up included": f"{seconds:.1f} s"},
        written=[rundir.sae],
        resolved={"steps": steps, "batch_size": batch_size, **final},
    )


def _trained(result: TrainResult) -> StageResult:
    final = result.final
    ranks = f" (rank 0 of {result.ranks})" if result.ranks > 1 else ""
    return StageResult(
        skipped=False,
        headline=f"train → {result.sae_dir}{ranks}",
        facts={
            "steps / tokens": f"{result.steps:,} / {result.tokens:,}",
            "tokens/s": f"{result.tokens_per_second:,.0f}",
            "last batch FVU / L0 / dead": f"{final['fvu']:.3f} / {final['l0']:.1f} / {final['dead_fraction']:.1%}",
        },
        written=[result.sae_dir],
        resolved={"steps": result.steps, "batch_size": result.batch_size, **final},
    )


STAGE = Stage(
    name="train",
    config=TrainConfig,
    run=run,
    help="Train an SAE on RUN/activations into RUN/sae (resumes from its checkpoint); --nproc N trains on N "
         "ranks with torchrun.",
    reads=("activations",),
    writes=("sae",),
    options={name: name for name in (
        "arch", "expansion", "k", "l1_coefficient", "layer", "tokens", "epochs", "batch_size", "min_steps", "lr",
        "seed", "holdout_fraction", "checkpoint_every", "wandb_project", "device", "dtype", "nproc")},
)
