"""collect: reasoning traces for a prompt set → RUN/traces."""

from __future__ import annotations

from thinklens.data.collect import CollectConfig
from thinklens.data.traces import summarize_traces
from thinklens.distill.organism import ensure_organism
from thinklens.distributed.collect import collect
from thinklens.models.default import ORGANISM_NAME
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


def run(config: CollectConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Generate (or import) the traces not yet in RUN/traces; `smollm2-r1` is made first if this machine lacks it."""
    if config.model.model == ORGANISM_NAME:
        ensure_organism(show_progress=progress, device=config.model.device)
    result = collect(config, rundir.traces, show_progress=progress)
    if result.n_written == 0:  # run.yaml keeps what the run that wrote them resolved
        return StageResult.nothing_to_do(f"all {result.n_prompts} traces are already in {result.traces_dir}")
    summary = summarize_traces(rundir.trace_store)
    return StageResult(
        skipped=False,
        headline=f"collect → {result.traces_dir}",
        facts={
            "traces written / skipped": f"{result.n_written} / {result.n_skipped}",
            "format": str(result.format),
            "generated tokens": f"{result.generated_tokens:,}",
            "tokens/s": f"{result.tokens_per_second:,.1f}",
            "traces in store": f"{summary['traces']:.0f}",
            "prefix matched": f"{summary['prefix_matched']:.0%}",
            "thinking closed": f"{summary['thinking_closed']:.0%}",
            "hit the token cap": f"{summary['hit_token_cap']:.0%}",
            "answers correct": f"{summary['accuracy']:.0%}",
        },
        written=[rundir.traces],
        resolved={"format": result.format},
    )


STAGE = Stage(
    name="collect",
    config=CollectConfig,
    run=run,
    help="Generate reasoning traces for a prompt set into RUN/traces (resumes; finished prompts are skipped).",
    writes=("traces",),
    options={
        "model": "model.model", "prompts": "prompts", "limit": "limit", "format": "format",
        "forced_opening": "forced_opening", "max_new_tokens": "generation.max_new_tokens",
        "greedy": "generation.greedy", "temperature": "generation.temperature", "top_p": "generation.top_p",
        "seed": "generation.seed", "batch_size": "generation.batch_size", "prompt_seed": "prompt_seed",
        "split": "split", "import_traces": "import_traces", "prefix_pattern": "prefix.pattern",
        "prefix_max_tokens": "prefix.max_tokens", "device": "model.device", "dtype": "model.dtype",
        "device_map": "model.device_map", "revision": "model.revision", "workers": "workers",
        "ray_address": "ray_address", "engine": "engine",
    },
    short={"model": "-m", "prompts": "-p", "limit": "-n"},
)
