"""harvest: the residual stream of the asked layers over RUN/traces → RUN/activations."""

from __future__ import annotations

from thinklens.activations.harvest import HarvestConfig
from thinklens.distributed.harvest import harvest  # one process, or Ray with --workers
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


def run(config: HarvestConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Capture every trace's activations, resuming shard by shard."""
    result = harvest(config, rundir.traces, rundir.activations, show_progress=progress)
    if result.shards_written == 0:
        return StageResult.nothing_to_do(
            f"{result.activations_dir} already holds all {result.token_count:,} tokens")
    index = rundir.activation_store.index(["special", "massive"]).to_pydict()
    return StageResult(
        skipped=False,
        headline=f"harvest → {result.activations_dir}",
        facts={
            "shards written / skipped": f"{result.shards_written} / {result.shards_skipped}",
            "tokens in store": f"{result.token_count:,}",
            "tokens/s": f"{result.tokens_per_second:,.0f}",
            "special / template tokens": f"{sum(index['special']):,}",
            "massive-activation tokens": f"{sum(index['massive']):,} (excluded from training by default)",
        },
        written=[rundir.activations],
        resolved={"tokens": result.token_count},
    )


STAGE = Stage(
    name="harvest",
    config=HarvestConfig,
    run=run,
    help="Capture the residual stream of LAYER(s) over RUN/traces into RUN/activations (resumes).",
    reads=("traces",),
    writes=("activations",),
    options={"layer": "layers", "dtype": "dtype", "shard_tokens": "shard_tokens", "batch_tokens": "batch_tokens",
             "massive_ratio": "massive_ratio", "device": "device", "workers": "workers", "ray_address": "ray_address"},
    short={"layer": "-l"},
    needs_section=True,
)
