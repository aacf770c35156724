"""findings: the study's claims as experiments with verdicts → RUN/findings.json + RUN/analysis/findings.png."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from thinklens.analysis.brevity import closing_token, plot_brevity, run_brevity
from thinklens.analysis.findings import (
    FindingsConfig,
    FindingsReport,
    features_finding,
    opening_finding,
    plot_findings,
    shift_finding,
    sink_finding,
)
from thinklens.analysis.steering_findings import brevity_findings, steering_findings, swap_findings
from thinklens.analysis.swap import plot_swap, run_swap, swap_prompts
from thinklens.errors import ThinklensError
from thinklens.files import ensure_dir, fresh_result, result_settings, write_envelope
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table

OPERATOR_CONTRAST = "operator-divide-vs-multiply"
# Bumped when what a finding says from the same inputs changes (2: claims 6 and 8 measured, 4 and 7 on both
# experiments, 7 measured even when nothing moved), so an older findings.json is not kept as up to date.
RESULT_VERSION = 2


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
    inputs["result_version"] = RESULT_VERSION
    existing = fresh_result(rundir.findings_json, inputs, result_settings(config), [rundir.findings_png])
    if existing is not None:
        return StageResult.nothing_to_do(f"{rundir.findings_json} is up to date")
    results = {name: json.loads(path.read_text())["result"] for name, path in analyses.items()}
    contrasts = _contrasts(rundir, config, progress)
    swap = _operator_swap(rundir, config, contrasts["operator"], progress)
    brevity = _brevity(rundir, config, contrasts["end_of_thinking"], progress)
    report = FindingsReport(findings=sorted([
        opening_finding(results["prefix"], rundir.root),
        sink_finding(results["sinks"], rundir.root, config),
        shift_finding(results["shift"], rundir.root),
        features_finding(contrasts["operator"], contrasts["backtracking"], contrasts["foresee"],
                         _answer_lengths(rundir), rundir.root, config.operator_segment),
        *steering_findings(swap_findings(swap, rundir.root),
                           brevity_findings(brevity, rundir.root, config.bootstrap, config.seed)),
    ], key=lambda finding: finding.claim))
    ensure_dir(rundir.analysis)
    plot_findings(report, rundir.findings_png)
    write_envelope(rundir.findings_json, inputs, result_settings(config), report.to_json())
    rows = [(str(f.claim), f.title, f"{f.value:.3g}", f"[{f.low:.3g}, {f.high:.3g}]", f"{f.bar:.3g}", f.verdict)
            for f in report.findings]
    return StageResult(
        skipped=False,
        headline=f"findings → {rundir.findings_json}",
        tables=[Table("the study's claims on this run (95 % intervals; verdict rule in thinklens.analysis.findings)",
                      ("claim", "what", "value", "interval", "bar", "verdict"), rows)],
        lines=[f"({f.claim}) {f.reason}" for f in report.findings],
        written=[rundir.findings_json, rundir.findings_png],
        resolved={"verdicts": {str(f.claim): f.verdict for f in report.findings}},
    )


def _contrasts(rundir: RunDir, config: FindingsConfig, progress: bool) -> dict[str, dict[str, Any] | None]:
    """The contrasts the claims read: ÷ vs × problems; backtracking tokens vs the rest of the thinking;
    the tokens just before a backtrack (and just before the closing tag) vs the rest. None where the run
    lacks one of the sets."""
    from thinklens.features.contrast import ContrastConfig, read_traces

    operators = {trace["metadata"].get("operator") for trace in read_traces(rundir.traces)}
    thinking, backtrack = "segment=thinking", config.backtrack_token
    end = closing_token(rundir.features_db) if config.brevity.end_token is None else config.brevity.end_token
    wanted = {
        "operator": ContrastConfig(a="operator=/", b="operator=*", segment=config.operator_segment,
                                   name=OPERATOR_CONTRAST, seed=config.seed) if {"/", "*"} <= operators else None,
        "backtracking": ContrastConfig(a=f"{thinking},token={backtrack}", b=f"{thinking},token!={backtrack}",
                                       unit="token", name="backtracking", seed=config.seed),
        "foresee": ContrastConfig(a=f"{thinking},next_token={backtrack}", b=f"{thinking},next_token!={backtrack}",
                                  unit="token", name="before-backtracking", seed=config.seed),
        "end_of_thinking": ContrastConfig(a=f"{thinking},next_token={end}", b=f"{thinking},next_token!={end}",
                                          unit="token", name="end-of-thinking", seed=config.seed) if end else None,
    }
    return {key: _contrast_or_none(rundir, contrast, progress) for key, contrast in wanted.items()}


def _contrast_or_none(rundir: RunDir, contrast: Any, progress: bool) -> dict[str, Any] | None:
    from thinklens.pipeline.contrasts import contrast_in_run

    if contrast is None:
        return None
    try:
        return contrast_in_run(contrast, rundir, progress)[0].to_json()
    except ThinklensError:  # a set this run does not have (no "Wait" in its thinking, say): that part is unmeasured
        return None


def _answer_lengths(rundir: RunDir) -> tuple[float, float]:
    """The 5th and 95th percentiles of the stored traces' answer lengths, in tokens."""
    import numpy as np

    from thinklens.activations.store import ActivationStore
    from thinklens.data.segments import SEGMENT_NAMES

    index = ActivationStore(rundir.activations).index(["sequence_id", "segment"])
    sequence, segment = np.asarray(index["sequence_id"]), np.asarray(index["segment"])
    lengths = np.bincount(sequence[segment == SEGMENT_NAMES.index("answer")], minlength=int(sequence.max()) + 1)
    low, high = np.percentile(lengths, [5, 95])
    return float(low), float(high)


def _kept(rundir: RunDir, name: str, settings_of: Any,
          chosen: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """An experiment's result file, its inputs (the SAE, the traces, the `chosen` features) and settings,
    and its result when those are unchanged since it was written (else None)."""
    path = rundir.analysis_json(name)
    inputs = {"sae_sha256": hashlib.sha256(rundir.sae_weights.read_bytes()).hexdigest(),
              "traces": rundir.trace_store.meta()["identity"], **chosen}
    settings = settings_of.model_dump(mode="json")
    return path, inputs, settings, fresh_result(path, inputs, settings, [rundir.analysis_png(name)])


def _operator_swap(rundir: RunDir, config: FindingsConfig, contrast: dict[str, Any] | None,
                   progress: bool) -> dict[str, Any] | None:
    """The operator-swap sweep with the contrast's held-out ÷ and × features (kept when nothing changed);
    None when there are no such features or the sweep is skipped."""
    if config.skip_steering or contrast is None or not all(contrast["held_out"].get(side) for side in ("a", "b")):
        return None
    features = {"/": contrast["held_out"]["a"]["feature_id"], "*": contrast["held_out"]["b"]["feature_id"]}
    path, inputs, settings, existing = _kept(rundir, "swap", config.swap, {"features": features})
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


def _brevity(rundir: RunDir, config: FindingsConfig, contrast: dict[str, Any] | None,
             progress: bool) -> dict[str, Any] | None:
    """The thinking-length sweep with the end-of-thinking contrast's held-out feature (kept when nothing
    changed); None without that feature, or when the steering experiments are skipped."""
    if config.skip_steering or contrast is None or not contrast["held_out"].get("a"):
        return None
    feature = contrast["held_out"]["a"]["feature_id"]
    path, inputs, settings, existing = _kept(rundir, "brevity", config.brevity, {"feature": feature})
    if existing is not None:
        return existing
    from thinklens.features.contrast import load_direction
    from thinklens.steering.from_run import open_variant, run_prompts

    held_out = len(rundir.trace_store)  # prompts past the run's own, as for the swap
    records = run_prompts(rundir.traces, held_out + config.brevity.prompts)
    prompts = [r for r in records if r.sequence_id >= held_out][: config.brevity.prompts] or records[
        : config.brevity.prompts]
    variant = open_variant(rundir.traces, rundir.sae, rundir.features_db, [feature], device=config.device)
    direction = load_direction(Path(contrast["direction_path"])) if config.brevity.steer_with == "direction" else None
    points = run_brevity(config.brevity, variant, prompts, feature, rundir.analysis / "brevity_samples.jsonl",
                         show_progress=progress, direction=direction)
    plot_brevity(points, rundir.analysis_png("brevity"))
    result = {"feature": feature, "selector": contrast["a"], "steer_with": config.brevity.steer_with,
              "held_out_prompts": any(r.sequence_id >= held_out for r in prompts),
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
    writes=("findings_json", "findings_png", "analysis_json:swap", "analysis_png:swap", "analysis_json:brevity",
            "analysis_png:brevity"),
    options={"bootstrap": "bootstrap", "seed": "seed", "operator_segment": "operator_segment",
             "swap_prompts": "swap.prompts", "swap_strengths": "swap.strengths", "swap_with": "swap.steer_with",
             "brevity_prompts": "brevity.prompts", "brevity_strengths": "brevity.strengths",
             "brevity_with": "brevity.steer_with", "skip_steering": "skip_steering", "device": "device"},
)
