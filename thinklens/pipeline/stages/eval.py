"""eval: held-out FVU, L0, dead/dense fractions, the LM-loss and KL cost of RUN/sae and sparse probing →
RUN/sae/eval.json, and the same numbers in SAEBench's layout in RUN/sae/saebench/."""

from __future__ import annotations

import json

from thinklens.files import atomic_path, fresh_result, result_settings, write_envelope
from thinklens.models.loader import file_sha256
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table
from thinklens.sae.evaluate import EvalConfig, evaluate
from thinklens.sae.saebench import core_result, sparse_probing_result


def run(config: EvalConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Evaluate the SAE unless eval.json already evaluates these weights with these settings."""
    rundir.require("sae_weights", "train")
    inputs = {"sae_sha256": file_sha256(rundir.sae_weights)}
    if fresh_result(rundir.eval_json, inputs, result_settings(config)) is not None:
        return StageResult.nothing_to_do(f"{rundir.eval_json} already evaluates this SAE with these settings")
    report = evaluate(rundir.sae, rundir.activations, rundir.traces, config)
    results = report.as_dict()
    sae_cfg = json.loads(rundir.sae_cfg.read_text())
    settings = result_settings(config)
    saebench = {"core": core_result(results, settings, sae_cfg)}
    if report.probes:
        saebench["sparse_probing"] = sparse_probing_result(report.probes, config.probe_ks, settings, sae_cfg)
    for eval_type, document in saebench.items():
        path = rundir.saebench_json(eval_type)
        with atomic_path(path) as temp:
            temp.write_text(json.dumps(document, indent=2) + "\n")
    write_envelope(rundir.eval_json, inputs, settings, results)  # last: it marks the stage done
    rows = [(name, f"{metrics.tokens:,}", f"{metrics.fvu:.3f}", f"{metrics.l0:.1f}", f"{metrics.dead_fraction:.1%}",
             f"{metrics.dense_fraction:.1%}") for name, metrics in [("all", report.overall), *report.segments.items()]]
    lines = []
    if report.lm:
        lm = report.lm
        lines.append(f"next-token loss: clean {lm['clean']:.3f}, spliced {lm['spliced']:.3f} (Δ {lm['delta']:+.3f}), "
                     f"zero-ablated {lm['zero_ablated']:.3f}; loss recovered {lm['loss_recovered']:.1%}")
        if "kl_div_score" in lm:
            lines.append(f"SAEBench scores: CE-loss {lm['loss_recovered']:.3f}, KL {lm['kl_div_score']:.3f}, "
                         f"explained variance {1 - report.overall.fvu:.3f}, cosine {report.overall.cossim:.3f}, "
                         f"alive {report.features['frac_alive']:.1%}")
    def accuracy(probe, value: float) -> str:
        interval = probe.interval(value)
        return f"{value:.2f} [{interval.low:.2f}, {interval.high:.2f}]"

    probe_rows = [(probe.task, str(probe.test), *(accuracy(probe, probe.top_k_accuracy[k]) for k in config.probe_ks),
                   accuracy(probe, probe.sae_accuracy), accuracy(probe, probe.llm_accuracy))
                  for probe in report.probes]
    if report.dead_fraction_training is not None:
        lines.append(f"dead over the training window: {report.dead_fraction_training:.1%} (no firing in the last "
                     f"{report.dead_window_tokens:,} training tokens); the table's dead column counts the held-out "
                     f"tokens only ({report.overall.tokens:,})")
    return StageResult(
        skipped=False,
        headline=f"eval → {rundir.eval_json}",
        tables=[Table(f"eval of {rundir.sae} on held-out sequences",
                      ("segment", "tokens", "FVU", "L0", "dead", "dense"), rows),
                *([Table("sparse probing: test accuracy [Wilson 95 %] (balanced classes; chance 0.50)",
                         ("task", "test", *(f"top {k}" for k in config.probe_ks), "all SAE", "model"),
                         probe_rows)] if probe_rows else [])],
        lines=lines,
        written=[rundir.eval_json, *(rundir.saebench_json(eval_type) for eval_type in saebench)],
        resolved={"fvu": report.overall.fvu, **report.lm},
    )


STAGE = Stage(
    name="eval",
    config=EvalConfig,
    run=run,
    help="Held-out FVU, L0, dead and dense fractions (overall and per segment) and the LM loss cost of RUN/sae.",
    reads=("sae", "activations", "traces"),
    writes=("eval_json", "saebench_json:core"),
    options={name: name for name in ("lm_sequences", "batch_size", "layer", "allow_other_model", "device")},
)
