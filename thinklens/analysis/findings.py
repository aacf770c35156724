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
8. "Interpretable features: backtracking, specific operations (division vs multiplication),
   answer-length preferences": the smallest held-out AUROC (at least a Wilson interval) of the
   best ÷ feature and the best × feature at telling ÷ problems from × problems by their thinking,
   and of the best backtracking feature at telling the thinking's backtracking tokens ("Wait") from
   its other tokens; bar 0.9. The backtracking feature's precision and recall, and the best feature
   of the tokens *just before* a backtrack (does any feature foresee it?), are in the details. No
   answer-length experiment is built yet: the details say whether the run's answers vary enough in
   length for one to matter.
Claims 4 to 7 come from the steering experiments (`thinklens.analysis.steering_findings`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.analysis.brevity import BrevityConfig
from thinklens.analysis.swap import SwapConfig
from thinklens.figures import pyplot, save_figure
from thinklens.stats import group_bootstrap_weights, rate

Verdict = Literal["reproduced", "not reproduced", "inconclusive"]
VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "inconclusive")


class FindingsConfig(BaseModel):
    """Settings of the findings experiments that are not read from other stages."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples for the sink ratio's interval.")
    seed: int = Field(default=0, description="Seed of the bootstraps.")
    operator_segment: str = Field(default="thinking", description="Segment whose tokens the operator contrast reads.")
    swap: SwapConfig = Field(default_factory=SwapConfig, description="The operator-swap sweep (claims 4, 5, 7).")
    brevity: BrevityConfig = Field(default_factory=BrevityConfig, description="The thinking-length sweep (claims 4, "
                                   "6, 7).")
    skip_steering: bool = Field(default=False, description="Leave out both steering sweeps (they generate).")
    backtrack_token: str = Field(default="Wait", description="The token that opens a backtrack in the thinking.")
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


def claim_finding(claim: int, title: str, statement: str, metric: str, value: float, low: float, high: float,
                  bar: float, command: str, details: dict[str, Any], holds_above: bool = True,
                  forced: str | None = None) -> Finding:
    """A finding with its verdict by the rule (`forced`: inconclusive, for that reason)."""
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
    return claim_finding(
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
        return claim_finding(2, "Sinks at the end of the prefix", statement, metric, math.nan, math.nan, math.nan, 2.0,
                        command, details, forced="fewer than 2 analysed traces have a matched prefix: re-run analyze "
                        "with more --sink-traces")
    end_sums, around_sums = np.array(ends), np.array(around)  # (traces, 2): weighted sum, positions

    def ratio(weights: np.ndarray) -> np.ndarray:
        end_mean = (weights @ end_sums[:, 0]) / (weights @ end_sums[:, 1])
        return end_mean / ((weights @ around_sums[:, 0]) / (weights @ around_sums[:, 1]))

    draws = group_bootstrap_weights(len(ends), config.bootstrap, config.seed)  # each trace its own group
    value = float(ratio(np.ones((1, len(ends))))[0])
    low, high = (float(v) for v in np.quantile(ratio(draws), [0.025, 0.975]))
    return claim_finding(2, "Sinks at the end of the prefix", statement, metric, value, low, high, 2.0, command, details)


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
        return claim_finding(3, "Feature shift between segments", statement, metric, math.nan, math.nan, math.nan, bar,
                        command, details, forced="the run lacks tokens of one of the segments (or predates the "
                        f"merged divergences: re-run `thinklens analyze {run}`)")
    smaller = min(wanted, key=lambda d: d["jsd"])
    return claim_finding(3, "Feature shift between segments", statement, metric, smaller["jsd"],
                    min(d["low"] for d in wanted), min(d["high"] for d in wanted), bar, command, details)


def features_finding(divide: dict[str, Any] | None, backtrack: dict[str, Any] | None,
                     foresee: dict[str, Any] | None, answer_tokens: tuple[float, float], run: Path,
                     segment: str) -> Finding:
    """Claim 8 from the contrasts of ÷ against × problems and of backtracking tokens against the rest of the
    thinking (`foresee`: the tokens just before a backtrack); `answer_tokens` is the 5–95 % range of the
    run's answer lengths, in tokens."""
    statement = "Interpretable features: backtracking, specific operations (division vs multiplication), answer-length "\
        "preferences."
    metric = (f"the smallest held-out AUROC of the best ÷ and × features (÷ vs × problems, {segment} tokens) and of the "
              "best backtracking feature (backtracking tokens vs the other thinking tokens); group bootstrap")
    command = f"thinklens contrast {run} --a 'operator=/' --b 'operator=*' --segment {segment}"
    parts: dict[str, dict[str, Any]] = {}
    missing = []
    if divide is None or not divide["held_out"].get("a") or not divide["held_out"].get("b"):
        missing.append("operations: the run lacks enough ÷ and × traces (the arithmetic prompt set has them)")
    else:
        parts["divide"], parts["multiply"] = divide["held_out"]["a"], divide["held_out"]["b"]
    if backtrack is None or not backtrack["held_out"].get("a"):
        missing.append("backtracking: the run's thinking has too few backtracking tokens to pick a feature on half of "
                       "the traces and test it on the other half")
    else:
        parts["backtracking"] = backtrack["held_out"]["a"]
    details: dict[str, Any] = {
        "divide_feature": parts.get("divide"), "multiply_feature": parts.get("multiply"),
        "backtracking_feature": parts.get("backtracking"),
        "foreseeing_feature": (foresee or {}).get("held_out", {}).get("a"),
        "top_divide": [_brief(f) for f in (divide or {}).get("a_features", [])[:5]],
        "top_multiply": [_brief(f) for f in (divide or {}).get("b_features", [])[:5]],
        "top_backtracking": [_brief(f) for f in (backtrack or {}).get("a_features", [])[:5]],
        "contrasts": [c["name"] for c in (divide, backtrack, foresee) if c],
        "answer_tokens_5_95": list(answer_tokens),
        "answer_length": "not looked for: the run's answers have a near-fixed length "
                         f"({answer_tokens[0]:.0f}–{answer_tokens[1]:.0f} tokens, 5–95 %)"
        if answer_tokens[1] <= 2 * answer_tokens[0] else "not looked for: the answers vary in length, but no answer-length "
        "experiment is built yet",
        "missing": missing}
    if not parts:
        return claim_finding(8, "Interpretable features", statement, metric, math.nan, math.nan, math.nan, 0.9,
                             command, details, forced="; ".join(missing))
    weakest = min(parts.values(), key=lambda h: h["auroc"])
    return claim_finding(8, "Interpretable features", statement, metric, weakest["auroc"],
                         min(h["low"] for h in parts.values()), min(h["high"] for h in parts.values()), 0.9, command,
                         details, forced="; ".join(missing) or None)


def _brief(feature: dict[str, Any]) -> dict[str, Any]:
    return {key: feature[key] for key in ("feature_id", "auroc", "auroc_low", "auroc_high", "log2_rate_ratio",
                                          "label")}


@dataclass
class FindingsReport:
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings]}


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
