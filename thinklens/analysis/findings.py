"""The claims of Goodfire's R1 study ("Under the Hood of a Reasoning Model", April 2025) as experiments.

Each claim is a statement about a number — a share, a ratio, a divergence, an AUROC — and a bar the
study's wording implies. The experiment measures the number on the run with a 95 % interval and
gives a verdict by one rule:

- **reproduced**: the whole interval lies on the claim's side of the bar;
- **not reproduced**: the whole interval lies on the other side;
- **inconclusive**: the interval contains the bar (more data would decide), or the number could
  not be measured on this run (the reason says why: e.g. an opening forced by the chat format
  cannot show the model's habit).

The claims measured here, their numbers and bars:
1. "> 95 % of reasoning traces begin with 'Okay,'": the share of traces whose reasoning opens with
   "Okay," (Wilson interval over traces); bar 0.95.
2. "Sinks sit towards the end of the opening prefix": attention received per position at the
   prefix's last tokens ÷ that at the rest of the prefix and the first thinking tokens (mean over
   layers and heads; bootstrap over traces); bar 2 (a sink is a several-fold attention magnet).
3. "A strong feature shift between prompt (with the prefix), thinking and answer": the smaller of
   JSD(prompt+prefix, thinking) and JSD(thinking, answer) over the SAE's feature distributions
   (group bootstrap); bar max(0.1 bit, 5 × the largest split-half JSD, the noise floor).
8. "Features for specific operations (division vs multiplication)": the AUROC, on held-out traces, of
   the best ÷ feature and of the best × feature at telling ÷ problems from × problems by their
   thinking (the smaller of the two; group bootstrap, at least a Wilson interval); bar 0.9.
The operator-swap sweep (`thinklens.analysis.swap`: ÷ problems pushed with the × feature and the
reverse, at each strength and position policy) gives three more; a point counts only unbroken:
5. "Swapping a problem's operator with SAE features": the share of answers equal to the swapped
   operator's result at the best unbroken after_prefix strength (Wilson); bar 0.5 (most answers).
4. "Steering from the first token fails; after the prefix it works": that share minus first_token's
   best (or the unsteered share, when every first_token point broke), Newcombe's interval; bar 0.
7. "Oversteering: it reverts before it breaks": the fall of the swapped share from the after_prefix
   peak to the lowest unbroken stronger point (Newcombe); bar 0. Not measurable when no strength
   moved the share clear of the baseline's, or when nothing unbroken lies beyond the peak.
Claim 6 (shorter thinking) is listed as untested until its experiment runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.analysis.swap import SwapConfig
from thinklens.figures import pyplot, save_figure
from thinklens.stats import Rate, group_bootstrap_weights, rate, rate_difference

Verdict = Literal["reproduced", "not reproduced", "inconclusive"]
VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "inconclusive")
UNTESTED = {
    6: "Steering example 2: decreasing the time spent thinking.",
}


class FindingsConfig(BaseModel):
    """Settings of the findings experiments that are not read from other stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples for the sink ratio's interval.")
    seed: int = Field(default=0, description="Seed of the bootstraps.")
    operator_segment: str = Field(default="thinking", description="Segment whose tokens the operator contrast reads.")
    swap: SwapConfig = Field(default_factory=SwapConfig, description="The operator-swap sweep (claims 4, 5, 7).")
    skip_swap: bool = Field(default=False, description="Leave out the operator-swap sweep (it generates).")
    device: str = Field(default="auto", description="Where the model and the SAE run for the sweep.")


@dataclass
class Finding:
    """One claim, its number with a 95 % interval, the bar, and the verdict."""

    claim: int
    title: str
    statement: str  # the study's claim
    metric: str  # what was measured, in words
    value: float
    low: float
    high: float
    bar: float
    holds_above: bool  # the claim holds when the number is above the bar (else below)
    verdict: str
    reason: str
    command: str
    details: dict[str, Any] = field(default_factory=dict)


def verdict(low: float, high: float, bar: float, holds_above: bool = True) -> tuple[str, str]:
    """The rule of the module docstring: (verdict, one-sentence reason)."""
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "inconclusive", "not measurable on this run"
    interval = f"the 95 % interval [{low:.3g}, {high:.3g}]"
    side, other = ("above", "below") if holds_above else ("below", "above")
    if (low > bar) if holds_above else (high < bar):
        return "reproduced", f"{interval} lies {side} the bar {bar:.3g}"
    if (high < bar) if holds_above else (low > bar):
        return "not reproduced", f"{interval} lies {other} the bar {bar:.3g}"
    return "inconclusive", f"{interval} contains the bar {bar:.3g}"


def _finding(claim: int, title: str, statement: str, metric: str, value: float, low: float, high: float, bar: float,
             command: str, details: dict[str, Any], holds_above: bool = True,
             forced: str | None = None) -> Finding:
    decided, reason = verdict(low, high, bar, holds_above)
    if forced:
        decided, reason = "inconclusive", forced
    return Finding(claim, title, statement, metric, value, low, high, bar, holds_above, decided, reason, command,
                   details)


def opening_finding(prefix: dict[str, Any], run: Path) -> Finding:
    """Claim 1 from the prefix statistics."""
    overall = prefix["overall"]
    hits = round(overall["okay_share"] * overall["traces"])
    share = rate(hits, overall["traces"])
    forced = prefix.get("forced_opening")
    return _finding(
        1, "Reasoning opens with \"Okay,\"", "> 95 % of English reasoning traces begin with \"Okay,\".",
        "share of traces whose reasoning opens with \"Okay,\" (Wilson 95 %)", share.share, share.low, share.high, 0.95,
        f"thinklens analyze {run}",
        {"traces": overall["traces"], "by_source": {s["source"]: s["okay_share"] for s in prefix["by_source"]},
         "top_openings": overall["top_openings"][:5], "forced_opening": forced},
        forced=(f"the chat format forces the opening {forced!r}: the share says nothing of the model's habit"
                if forced else None))


def sink_finding(sinks: dict[str, Any], run: Path, config: FindingsConfig) -> Finding:
    """Claim 2 from the sink analysis's per-trace places, bootstrapped over traces."""
    ends, around = [], []
    for trace in sinks.get("per_trace", []):
        end = trace.get("prefix_end")
        neighbours = [trace[p] for p in ("prefix", "thinking_start") if p in trace]
        if end is None or not neighbours or not math.isfinite(end["attention_mass"]):
            continue
        weights = np.array([n["positions"] for n in neighbours], dtype=float)
        values = np.array([n["attention_mass"] for n in neighbours], dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        ends.append((end["attention_mass"] * end["positions"], end["positions"]))
        around.append(((values[finite] * weights[finite]).sum(), weights[finite].sum()))
    details: dict[str, Any] = {"traces": len(ends), "places": {p["place"]: {
        key: p[key] for key in ("positions", "attention_mass", "norm_ratio_peak", "sink_share",
                                "share_of_sinks_after_first")} for p in sinks.get("places", [])}}
    command = f"thinklens analyze {run} --sink-traces N"
    statement = ("Attention sinks sit towards the end of the opening prefix, not only at the start of the response: "
                 "the model treats the prefix as part of the prompt.")
    metric = ("attention received per position at the prefix's last tokens ÷ at the rest of the prefix and the first "
              "thinking tokens (bootstrap over traces)")
    if len(ends) < 2:
        return _finding(2, "Sinks at the end of the prefix", statement, metric, math.nan, math.nan, math.nan, 2.0,
                        command, details, forced="fewer than 2 analysed traces have a matched prefix: re-run analyze "
                        "with more --sink-traces")
    end_sums, around_sums = np.array(ends), np.array(around)  # (traces, 2): weighted sum, positions

    def ratio(weights: np.ndarray) -> np.ndarray:
        end_mean = (weights @ end_sums[:, 0]) / (weights @ end_sums[:, 1])
        return end_mean / ((weights @ around_sums[:, 0]) / (weights @ around_sums[:, 1]))

    draws = group_bootstrap_weights(len(ends), config.bootstrap, config.seed)  # each trace its own group
    value = float(ratio(np.ones((1, len(ends))))[0])
    low, high = (float(v) for v in np.quantile(ratio(draws), [0.025, 0.975]))
    return _finding(2, "Sinks at the end of the prefix", statement, metric, value, low, high, 2.0, command, details)


def shift_finding(shift: dict[str, Any], run: Path) -> Finding:
    """Claim 3 from the segment shift's merged divergences and its split-half noise floor."""
    merged = {(d["a"], d["b"]): d for d in shift.get("merged_divergences", [])}
    pairs = {(d["a"], d["b"]): d for d in shift.get("divergences", [])}
    wanted = [merged.get(("prompt+prefix", "thinking")), pairs.get(("thinking", "answer"))]
    floor = max(shift.get("split_half", {}).values(), default=0.0)
    bar = max(0.1, 5 * floor)
    statement = "A strong feature-distribution shift between prompt (with the prefix), thinking and answer."
    metric = "the smaller of JSD(prompt+prefix, thinking) and JSD(thinking, answer), bits (group bootstrap)"
    details = {"divergences": [d for d in wanted if d], "all_pairs": list(pairs.values()),
               "split_half_noise": shift.get("split_half", {})}
    command = f"thinklens analyze {run}"
    if any(d is None for d in wanted):
        return _finding(3, "Feature shift between segments", statement, metric, math.nan, math.nan, math.nan, bar,
                        command, details, forced="the run lacks tokens of one of the segments (or predates the "
                        f"merged divergences: re-run `thinklens analyze {run}`)")
    smaller = min(wanted, key=lambda d: d["jsd"])
    return _finding(3, "Feature shift between segments", statement, metric, smaller["jsd"],
                    min(d["low"] for d in wanted), min(d["high"] for d in wanted), bar, command, details)


def operator_finding(divide: dict[str, Any] | None, run: Path, segment: str) -> Finding:
    """Claim 8 (operations) from the contrast of ÷ against × problems."""
    statement = "Interpretable features for specific operations (division vs multiplication)."
    metric = (f"held-out AUROC of the best ÷ feature and of the best × feature on {segment} tokens of ÷ vs × problems "
              "(the smaller; group bootstrap)")
    command = f"thinklens contrast {run} --a 'operator=/' --b 'operator=*' --segment {segment}"
    if divide is None:
        return _finding(8, "Operator features", statement, metric, math.nan, math.nan, math.nan, 0.9, command,
                        {"contrast": None},
                        forced="the run has no traces of both ÷ and × problems (the arithmetic prompt set has them)")
    if not divide["held_out"].get("a") or not divide["held_out"].get("b"):
        return _finding(8, "Operator features", statement, metric, math.nan, math.nan, math.nan, 0.9, command,
                        {"contrast": divide["name"], "traces": divide["traces"]},
                        forced="too few ÷ or × traces to pick a feature on half of them and test it on the other half")
    held = divide["held_out"]
    weaker = min(held.values(), key=lambda h: h["auroc"])
    details = {"contrast": divide["name"], "divide_feature": held["a"], "multiply_feature": held["b"],
               "top_divide": [_brief(f) for f in divide["a_features"][:5]],
               "top_multiply": [_brief(f) for f in divide["b_features"][:5]],
               "tokens": divide["tokens"], "traces": divide["traces"]}
    return _finding(8, "Operator features", statement, metric, weaker["auroc"],
                    min(h["low"] for h in held.values()), min(h["high"] for h in held.values()), 0.9, command, details)


def _coherent_best(points: list[dict[str, Any]], policy: str) -> dict[str, Any] | None:
    """The steered, unbroken point of `policy` with the largest share of swapped answers."""
    candidates = [p for p in points if p["policy"] == policy and p["strength"] > 0 and not p["broken"]]
    return max(candidates, key=lambda p: (p["swapped"]["hits"] / p["swapped"]["n"], -p["strength"]), default=None)


def _share(point: dict[str, Any]) -> Rate:
    return Rate(**point["swapped"])


def swap_findings(swap: dict[str, Any] | None, run: Path) -> list[Finding]:
    """Claims 4, 5 and 7 from the operator-swap sweep (`thinklens.analysis.swap`)."""
    command = f"thinklens findings {run}"
    claims = {
        4: ("Steering works after the prefix, not from the first token",
            "Steering from the first token of the response fails; it works after the prefix.",
            "swapped-answer share at the best unbroken strength, after_prefix minus first_token (Newcombe 95 %)"),
        5: ("Operator swap", "Steering example 1: swapping a maths problem's operator (× ↔ ÷) with SAE features.",
            "share of answers equal to the swapped operator's result at the best unbroken after_prefix strength "
            "(Wilson 95 %)"),
        7: ("The oversteering paradox", "Pushed too hard, the model reverts to its unsteered behaviour before, at "
            "still higher strengths, it breaks.",
            "fall of the swapped share from its after_prefix peak to the lowest unbroken stronger point "
            "(Newcombe 95 %)"),
    }
    bars = {4: 0.0, 5: 0.5, 7: 0.0}

    def unmeasured(claim: int, reason: str, details: dict[str, Any] | None = None) -> Finding:
        title, statement, metric = claims[claim]
        return _finding(claim, title, statement, metric, math.nan, math.nan, math.nan, bars[claim], command,
                        details or {}, forced=reason)

    if swap is None:
        return [unmeasured(c, "no ÷ and × operator features to steer with (claim 8's contrast found none)")
                for c in (4, 5, 7)]
    points = swap["points"]
    details = {"features": swap["features"], "prompts": swap["prompts"], "points": [
        {key: p[key] for key in ("policy", "strength", "broken", "perplexity")}
        | {"swapped": str(Rate(**p["swapped"])), "correct": str(Rate(**p["correct"])),
           "operation_swapped": str(Rate(**p["operation_swapped"])) if p.get("operation_swapped") else None}
        for p in points], "steer_with": swap.get("steer_with", "feature")}
    after, first = _coherent_best(points, "after_prefix"), _coherent_best(points, "first_token")
    baseline = next(p for p in points if p["strength"] == 0.0)
    findings = []
    if after is None:
        findings += [unmeasured(5, "every steered after_prefix point broke: a finer grid of smaller strengths would "
                                "decide", details)]
    else:
        share = _share(after)
        findings.append(_finding(5, *claims[5], share.share, share.low, share.high, bars[5], command,
                                 {**details, "best_strength": after["strength"]}))
    if after is None:
        findings.append(unmeasured(4, "no unbroken after_prefix point to compare", details))
    else:
        other = first or baseline  # first_token breaking at every strength is it failing: compare with no steering
        value, low, high = rate_difference(_share(after), _share(other))
        findings.append(_finding(4, *claims[4], value, low, high, bars[4], command,
                                 {**details, "after_prefix_strength": after["strength"],
                                  "first_token_strength": other["strength"]}))
    findings.append(_paradox(points, after, baseline, claims[7], bars[7], command, details))
    return sorted(findings, key=lambda f: f.claim)


def _paradox(points: list[dict[str, Any]], peak: dict[str, Any] | None, baseline: dict[str, Any],
             claim: tuple[str, str, str], bar: float, command: str, details: dict[str, Any]) -> Finding:
    def unmeasured(reason: str) -> Finding:
        return _finding(7, *claim, math.nan, math.nan, math.nan, bar, command, details, forced=reason)

    if peak is None or _share(peak).low <= _share(baseline).high:
        return unmeasured("no after_prefix strength moved the swapped share clear of the baseline's, so there is "
                          "nothing to revert from")
    stronger = [p for p in points if p["policy"] == "after_prefix" and p["strength"] > peak["strength"]]
    coherent = [p for p in stronger if not p["broken"]]
    if not coherent:
        return unmeasured("past its peak the after_prefix sweep has no unbroken strength (it breaks at once): a finer "
                          "grid would decide")
    reverted = min(coherent, key=lambda p: _share(p).share)
    value, low, high = rate_difference(_share(peak), _share(reverted))
    return _finding(7, *claim, value, low, high, bar, command,
                    {**details, "peak_strength": peak["strength"], "reverted_strength": reverted["strength"],
                     "breaks_later": any(p["broken"] for p in stronger if p["strength"] > reverted["strength"])})


def _brief(feature: dict[str, Any]) -> dict[str, Any]:
    return {key: feature[key] for key in ("feature_id", "auroc", "auroc_low", "auroc_high", "log2_rate_ratio",
                                          "label")}


@dataclass
class FindingsReport:
    findings: list[Finding]
    untested: dict[int, str]

    def to_json(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings],
                "untested": [{"claim": claim, "statement": text, "reason": "needs the steering experiments, not "
                              "built yet"} for claim, text in self.untested.items()]}


def plot_findings(report: FindingsReport, path: Path) -> Path:
    """One panel per measured claim: the number with its 95 % interval against the bar."""
    plt = pyplot()
    findings = report.findings
    figure, axes = plt.subplots(1, max(1, len(findings)), figsize=(3.2 * max(1, len(findings)), 3.0), squeeze=False)
    colours = {"reproduced": "#2e7d32", "not reproduced": "#c62828", "inconclusive": "#8d8d8d"}
    for axis, finding in zip(axes[0], findings, strict=False):
        axis.axhline(finding.bar, color="#555", linestyle="--", linewidth=1, label="bar")
        if math.isfinite(finding.value):
            axis.errorbar([0], [finding.value], yerr=[[max(finding.value - finding.low, 0)],
                                                      [max(finding.high - finding.value, 0)]],
                          fmt="o", color=colours[finding.verdict], capsize=6, markersize=7)
        axis.set_xticks([])
        axis.set_title(f"({finding.claim}) {finding.title}\n{finding.verdict}", fontsize=8,
                       color=colours[finding.verdict])
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    return save_figure(figure, path)
