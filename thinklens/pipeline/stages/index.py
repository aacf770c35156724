"""index: encode RUN/activations with RUN/sae → RUN/features.db."""

from __future__ import annotations

from thinklens.distributed.index import build_index  # one process, or Ray with --workers
from thinklens.features.build import IndexConfig
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


def run(config: IndexConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Build the feature database unless one for this SAE and these settings exists."""
    result = build_index(config, rundir.sae, rundir.activations, rundir.traces, rundir.features_db,
                         show_progress=progress)
    if result.skipped:
        return StageResult.nothing_to_do(f"{result.db_path} already indexes this SAE with these settings")
    return StageResult(
        skipped=False,
        headline=f"index → {result.db_path}",
        facts={
            "tokens / indexed": f"{result.tokens:,} / {result.indexed_tokens:,}",
            "tokens/s": f"{result.tokens_per_second:,.0f}",
            "size": f"{result.db_bytes / 2**20:,.1f} MiB ({result.db_bytes / result.tokens:,.0f} bytes/token)",
        },
        written=[rundir.features_db],
        resolved={"db_bytes": result.db_bytes},
    )


STAGE = Stage(
    name="index",
    config=IndexConfig,
    run=run,
    help="Encode RUN/activations with RUN/sae into RUN/features.db (public R1 schema + our own tables).",
    reads=("sae", "activations", "traces"),
    writes=("features_db",),
    options={"top": "top", "quantile_samples": "quantile_samples", "all": "store_all", "batch_size": "batch_size",
             "layer": "layer", "allow_other_model": "allow_other_model", "device": "device", "workers": "workers",
             "ray_address": "ray_address", "checkpoint_seconds": "checkpoint_seconds"},
)
