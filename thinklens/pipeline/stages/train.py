"""train: an SAE on RUN/activations → RUN/sae."""

from __future__ import annotations

from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult
from thinklens.sae.train import TrainConfig, train


def run(config: TrainConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Train (or resume training) the SAE; a finished SAE with the same settings is kept."""
    result = train(config, rundir.activations, rundir.sae, show_progress=progress)
    if result.skipped:
        return StageResult.nothing_to_do(f"{result.sae_dir} already holds an SAE trained with these settings")
    final = result.final
    return StageResult(
        skipped=False,
        headline=f"train → {result.sae_dir}",
        facts={
            "steps / tokens": f"{result.steps:,} / {result.tokens:,}",
            "tokens/s": f"{result.tokens_per_second:,.0f}",
            "last batch FVU / L0 / dead": f"{final['fvu']:.3f} / {final['l0']:.1f} / {final['dead_fraction']:.1%}",
        },
        written=[rundir.sae],
        resolved={"steps": result.steps, "batch_size": result.batch_size, **final},
    )


STAGE = Stage(
    name="train",
    config=TrainConfig,
    run=run,
    help="Train an SAE on RUN/activations into RUN/sae (resumes from its checkpoint).",
    reads=("activations",),
    writes=("sae",),
    options={name: name for name in (
        "arch", "expansion", "k", "l1_coefficient", "layer", "tokens", "epochs", "batch_size", "min_steps", "lr",
        "seed", "holdout_fraction", "checkpoint_every", "wandb_project", "device", "dtype")},
)
