"""findings: the study's claims as experiments with verdicts → RUN/findings.json + RUN/analysis/findings.png."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from thinklens.analysis.findings import (
    UNTESTED,
    FindingsConfig,
    FindingsReport,
    opening_finding,
    operator_finding,
    plot_findings,
    shift_finding,
    sink_finding,
    swap_findings,
)
from thinklens.analysis.swap import plot_swap, run_swap, swap_prompts
from thinklens.errors import ThinklensError
from thinklens.files import fresh_result, result_settings, write_envelope
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table

OPERATOR_CONTRAST = "operator-divide-vs-multiply"


def run(config: FindingsConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Measure each claim from the run's analyses (and the operator contrast), unless nothing changed."""
    analyses = {name: rundir.analysis_json(name) for name in ("prefix", "sinks", "shift")}
    missing = [name for name, path in analyses.items() if not path.is_file()]
    if missing:
        raise ThinklensError(f"findings read the analyses {', '.join(missing)}: run `thinklens analyze {rundir.root}` "
                             "first")
    for artifact, stage in (("sae_weights", "train"), ("features_db", "index")):
        rundir.require(artifact, stage)
    inputs = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in analyses.items()}
    inputs["sae_sha256"] = hashlib.sha256(rundir.sae_weights.read_bytes()).hexdigest()
    existing = fresh_result(rundir.findings_json, inputs, result_settings(config), [rundir.findings_png])
    if existing is not None:
        return StageResult.nothing_to_do(f"{rundir.findings_json} is up to date")
    results = {name: json.loads(path.read_text())["result"] for name, path in analyses.items()}
    contrast = _operator_contrast(rundir, config, progress)
    report = FindingsReport(
        findings=sorted([
            opening_finding(results["prefix"], rundir.root),
            sink_finding(results["sinks"], rundir.root, config),
            shift_finding(results["shift"], rundir.root),
            operator_finding(contrast, rundir.root, config.operator_segment),
            *swap_findings(_operator_swap(rundir, config, contrast, progress), rundir.root),
        ], key=lambda finding: finding.claim),
        untested=UNTESTED,
    )
    rundir.analysis.mkdir(parents=True, exist_ok=True)
    plot_findings(report, rundir.findings_png)
    write_envelope(rundir.findings_json, inputs, result_settings(config), report.to_json())
    rows = [(str(f.claim), f.title, f"{f.value:.3g}", f"[{f.low:.3g}, {f.high:.3g}]", f"{f.bar:.3g}", f.verdict)
            for f in report.findings]
    return StageResult(
        skipped=False,
        headline=f"findings → {rundir.findings_json}",
        tables=[Table("the study's claims on this run (95 % intervals; verdict rule in thinklens.analysis.findings)",
                      ("claim", "what", "value", "interval", "bar", "verdict"), rows)],
        lines=[f"({f.claim}) {f.reason}" for f in report.findings]
        + [f"({claim}) untested: {text}" for claim, text in UNTESTED.items()],
        written=[rundir.findings_json, rundir.findings_png],
        resolved={"verdicts": {str(f.claim): f.verdict for f in report.findings}},
    )


def _operator_contrast(rundir: RunDir, config: FindingsConfig, progress: bool) -> dict[str, Any] | None:
    """The contrast of ÷ against × problems (None when the run lacks one of them)."""
    from thinklens.features.contrast import ContrastConfig, read_traces
    from thinklens.pipeline.contrasts import contrast_in_run

    operators = {trace["metadata"].get("operator") for trace in read_traces(rundir.traces)}
    if not {"/", "*"} <= operators:
        return None
    contrast = ContrastConfig(a="operator=/", b="operator=*", segment=config.operator_segment, name=OPERATOR_CONTRAST,
                              seed=config.seed)
    return contrast_in_run(contrast, rundir, progress)[0].to_json()


def _operator_swap(rundir: RunDir, config: FindingsConfig, contrast: dict[str, Any] | None,
                   progress: bool) -> dict[str, Any] | None:
    """The operator-swap sweep with the contrast's held-out ÷ and × features (kept when nothing changed);
    None when there are no such features or the sweep is skipped."""
    if config.skip_swap or contrast is None or not all(contrast["held_out"].get(side) for side in ("a", "b")):
        return None
    features = {"/": contrast["held_out"]["a"]["feature_id"], "*": contrast["held_out"]["b"]["feature_id"]}
    path = rundir.analysis_json("swap")
    inputs = {"sae_sha256": hashlib.sha256(rundir.sae_weights.read_bytes()).hexdigest(),
              "traces": rundir.trace_store.meta()["identity"], "features": features}
    settings = config.swap.model_dump(mode="json")
    existing = fresh_result(path, inputs, settings, [rundir.analysis_png("swap")])
    if existing is not None:
        return existing
    from thinklens.features.contrast import load_direction
    from thinklens.steering.from_run import open_variant, run_prompts

    held_out = len(rundir.trace_store)  # prompts past the run's own: the SAE never saw their traces
    records = run_prompts(rundir.traces, held_out + 64 * config.swap.prompts)  # ~1 in 20 is a one-step ÷ word problem
    prompts = swap_prompts([r for r in records if r.sequence_id >= held_out] or records, config.swap.prompts)
    if not prompts["/"] or not prompts["*"]:
        return None
    variant = open_variant(rundir.traces, rundir.sae, rundir.features_db, list(features.values()),
                           device=config.device)
    direction = load_direction(Path(contrast["direction_path"])) if config.swap.steer_with == "direction" else None
    points = run_swap(config.swap, variant, prompts, features, rundir.analysis / "swap_samples.jsonl",
                      show_progress=progress, direction=direction)
    plot_swap(points, rundir.analysis_png("swap"))
    result = {"features": features, "steer_with": config.swap.steer_with, "prompts": {op: len(records) for op, records in prompts.items()},
              "held_out_prompts": any(r.sequence_id >= held_out for r in prompts["/"]),
              "points": [point.to_json() for point in points]}
    write_envelope(path, inputs, settings, result)
    return result


STAGE = Stage(
    name="findings",
    config=FindingsConfig,
    run=run,
    help="The R1 study's claims as experiments: a number, a 95 % interval and a verdict each → RUN/findings.json.",
    reads=("traces", "activations", "sae", "features_db", "analysis_json:prefix", "analysis_json:sinks",
           "analysis_json:shift"),
    writes=("findings_json", "findings_png", "analysis_json:swap", "analysis_png:swap"),
    options={"bootstrap": "bootstrap", "seed": "seed", "operator_segment": "operator_segment",
             "swap_prompts": "swap.prompts", "swap_strengths": "swap.strengths", "swap_with": "swap.steer_with",
             "skip_swap": "skip_swap",
             "device": "device"},
)
