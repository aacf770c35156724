"""train: an SAE on RUN/activations → RUN/sae (one process, or `--nproc N` ranks under torchrun);
`--distribute-layers` trains one per harvested layer (the others into RUN/saes/)."""

from __future__ import annotations

from pathlib import Path

from thinklens.distributed.torchrun import launch_training
from thinklens.pipeline.lock import LAUNCHER_HOLDS_LOCK
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult
from thinklens.sae.formats import sae_metadata
from thinklens.sae.parallel import launched_by_torchrun
from thinklens.sae.train import TrainConfig, TrainResult, plan_training, train, train_layers


def run(config: TrainConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Train (or resume training) the SAE(s); a finished SAE with the same settings is kept."""
    targets = _layer_dirs(config, rundir) if config.distribute_layers else None
    if config.nproc > 1 and not launched_by_torchrun():
        return _launch(config, rundir, targets)
    if targets is not None:
        results = train_layers(config, rundir.activations, targets, show_progress=progress)
        if not results or results[0].rank > 0:
            return StageResult.nothing_to_do("this rank's layers are done: rank 0 reports")
        if all(result.skipped for result in results) and results[0].ranks == 1:
            return StageResult.nothing_to_do("every layer's SAE is already trained with these settings")
        return _trained_layers(rundir, targets, f"train → one SAE per layer ({results[0].ranks} rank(s))")
    result = train(config, rundir.activations, rundir.sae, show_progress=progress)
    if result.rank > 0:
        return StageResult.nothing_to_do(f"rank {result.rank} of {result.ranks} done; rank 0 writes {result.sae_dir}")
    if result.skipped:
        return StageResult.nothing_to_do(f"{result.sae_dir} already holds an SAE trained with these settings")
    return _trained(result)


def _layer_dirs(config: TrainConfig, rundir: RunDir) -> dict[int, Path]:
    """Every harvested layer's SAE directory: the run's layer (--layer, default the first) is RUN/sae."""
    layers = rundir.activation_store.manifest().layers
    own = config.layer if config.layer is not None else layers[0]
    return {layer: rundir.sae if layer == own else rundir.layer_sae(layer)
            for layer in sorted(layers, key=lambda layer: layer != own)}


def _launch(config: TrainConfig, rundir: RunDir, targets: dict[int, Path] | None) -> StageResult:
    """`--nproc N`: checked here first, then the ranks run under torchrun (holding this process's run lock);
    the result is the SAE(s) they wrote."""
    if targets is None:
        plans = [plan_training(config, rundir.activations, rundir.sae, world=config.nproc)]
    else:
        plans = [plan_training(config if directory == rundir.sae else config.model_copy(update={"layer": layer}),
                               rundir.activations, directory)
                 for layer, directory in targets.items()]
    if all(plan.finished is not None for plan in plans):
        return StageResult.nothing_to_do(f"{rundir.sae} already holds an SAE trained with these settings")
    seconds = launch_training(config, rundir.root, env={LAUNCHER_HOLDS_LOCK: str(rundir.root.resolve())})
    if targets is not None:
        return _trained_layers(rundir, targets, f"train → one SAE per layer on {config.nproc} ranks",
                               {"wall time, start-up included": f"{seconds:.1f} s"})
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


def _trained_layers(rundir: RunDir, targets: dict[int, Path], headline: str,
                    extra: dict[str, str] | None = None) -> StageResult:
    """The SAEs of every layer, as their records say (whichever rank trained them)."""
    facts, resolved = {}, {}
    for layer, directory in targets.items():
        final = sae_metadata(directory)["final"]
        facts[f"layer {layer} → {directory.relative_to(rundir.root)}"] = (
            f"FVU {final['fvu']:.3f}  L0 {final['l0']:.1f}  dead {final['dead_fraction']:.1%}")
        resolved[f"layer_{layer}"] = final
    own = sae_metadata(rundir.sae)
    return StageResult(skipped=False, headline=headline, facts={**facts, **(extra or {})},
                       written=list(targets.values()),
                       resolved={"steps": own["steps"], "batch_size": own["training"]["batch_size"], **own["final"],
                                 "layers": resolved})


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
         "ranks with torchrun; --distribute-layers one SAE per harvested layer.",
    reads=("activations",),
    writes=("sae", "saes"),
    options={name: name for name in (
        "arch", "expansion", "k", "l1_coefficient", "layer", "tokens", "epochs", "batch_size", "min_steps", "lr",
        "seed", "holdout_fraction", "checkpoint_every", "wandb_project", "device", "dtype", "nproc",
        "distribute_layers")},
)
