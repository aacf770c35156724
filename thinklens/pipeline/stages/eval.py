"""eval: held-out FVU, L0, dead/dense fractions and the LM-loss cost of RUN/sae → RUN/sae/eval.json."""

from __future__ import annotations

from thinklens.files import fresh_result, result_settings, write_envelope
from thinklens.models.loader import file_sha256
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table
from thinklens.sae.evaluate import EvalConfig, evaluate


def run(config: EvalConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Evaluate the SAE unless eval.json already evaluates these weights with these settings."""
    rundir.require("sae_weights", "train")
    inputs = {"sae_sha256": file_sha256(rundir.sae_weights)}
    if fresh_result(rundir.eval_json, inputs, result_settings(config)) is not None:
        return StageResult.nothing_to_do(f"{rundir.eval_json} already evaluates this SAE with these settings")
    report = evaluate(rundir.sae, rundir.activations, rundir.traces, config)
    write_envelope(rundir.eval_json, inputs, result_settings(config), report.as_dict())
    rows = [(name, f"{metrics.tokens:,}", f"{metrics.fvu:.3f}", f"{metrics.l0:.1f}", f"{metrics.dead_fraction:.1%}",
             f"{metrics.dense_fraction:.1%}") for name, metrics in [("all", report.overall), *report.segments.items()]]
    lines = []
    if report.lm:
        lm = report.lm
        lines.append(f"next-token loss: clean {lm['clean']:.3f}, spliced {lm['spliced']:.3f} (Δ {lm['delta']:+.3f}), "
                     f"zero-ablated {lm['zero_ablated']:.3f}; loss recovered {lm['loss_recovered']:.1%}")
    if report.dead_fraction_training is not None:
        lines.append(f"dead over the training window: {report.dead_fraction_training:.1%} (no firing in the last "
                     f"{report.dead_window_tokens:,} training tokens); the table's dead column counts the held-out "
                     f"tokens only ({report.overall.tokens:,})")
    return StageResult(
        skipped=False,
        headline=f"eval → {rundir.eval_json}",
        tables=[Table(f"eval of {rundir.sae} on held-out sequences",
                      ("segment", "tokens", "FVU", "L0", "dead", "dense"), rows)],
        lines=lines,
        written=[rundir.eval_json],
        resolved={"fvu": report.overall.fvu, **report.lm},
    )


STAGE = Stage(
    name="eval",
    config=EvalConfig,
    run=run,
    help="Held-out FVU, L0, dead and dense fractions (overall and per segment) and the LM loss cost of RUN/sae.",
    reads=("sae", "activations", "traces"),
    writes=("eval_json",),
    options={name: name for name in ("lm_sequences", "batch_size", "layer", "device")},
)
