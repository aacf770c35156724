"""Claims 4 to 7 from the two steering experiments: the operator swap (`thinklens.analysis.swap`)
and the thinking length (`thinklens.analysis.brevity`). A point counts only unbroken.

5. "Swapping a problem's operator with SAE features": the share of answers equal to the swapped
   operator's result at the best unbroken after_prefix strength (Wilson); bar 0.5 (most answers).
6. "Decreasing the time spent thinking": the relative change of mean thinking tokens at the unbroken
   after_prefix strength that shortens it most, against no steering (paired bootstrap over prompts);
   holds below the bar 0.
4. "Steering from the first token fails; after the prefix it works": after_prefix's best effect minus
   first_token's best (or no steering's, when every first_token point broke), on each experiment
   (swap: Newcombe's interval of the share difference; thinking: paired bootstrap of the difference
   of relative changes, signed so that > 0 favours after_prefix); bar 0.
7. "Oversteering: it reverts before it breaks": the fall of the effect from its after_prefix peak to
   the weakest unbroken stronger point; bar 0. Inconclusive when no strength moved the behaviour
   clear of the baseline (the fall is still measured, with its interval) or when nothing unbroken
   lies beyond the peak.

Claims 4 and 7 presuppose that steering after the prefix works, so each is judged on the first
experiment, in the order (swap, thinking), whose after_prefix peak lies clear of no steering (its
interval excludes the baseline); when neither does, on the swap. The other experiment's numbers are
kept in the finding's details.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from thinklens.analysis.findings import Finding, claim_finding
from thinklens.stats import Rate, rate_difference

CLAIMS = {
    4: ("Steering works after the prefix, not from the first token",
        "Steering from the first token of the response fails; it works after the prefix."),
    5: ("Operator swap", "Steering example 1: swapping a maths problem's operator (× ↔ ÷) with SAE features."),
    6: ("Shorter thinking", "Steering example 2: decreasing the time spent thinking."),
    7: ("The oversteering paradox", "Pushed too hard, the model reverts to its unsteered behaviour before, at still "
        "higher strengths, it breaks."),
}
BARS = {4: 0.0, 5: 0.5, 6: 0.0, 7: 0.0}
NOTHING_MOVED = "no after_prefix strength {what}, so there is nothing to revert from"
MEASURED_ANYWAY = ": the fall is measured but not judged"


def _unmeasured(claim: int, metric: str, command: str, reason: str, details: dict[str, Any],
                holds_above: bool = True) -> Finding:
    return claim_finding(claim, *CLAIMS[claim], metric, math.nan, math.nan, math.nan, BARS[claim], command, details,
                    holds_above=holds_above, forced=reason)


# ---- the operator swap: claims 5, and 4 and 7 on it -------------------------------------------------------------

def _share(point: dict[str, Any]) -> Rate:
    return Rate(**point["swapped"])


def _swap_best(points: list[dict[str, Any]], policy: str) -> dict[str, Any] | None:
    """The steered, unbroken point of `policy` with the largest share of swapped answers."""
    candidates = [p for p in points if p["policy"] == policy and p["strength"] > 0 and not p["broken"]]
    return max(candidates, key=lambda p: (_share(p).share, -p["strength"]), default=None)


def swap_findings(swap: dict[str, Any] | None, run: Path) -> list[Finding]:
    """Claims 4, 5 and 7 from the operator-swap sweep, each with `details["moved"]`: whether the after_prefix
    peak lies clear of no steering."""
    command = f"thinklens findings {run}"
    metrics = {
        4: "swapped-answer share at the best unbroken strength, after_prefix minus first_token (Newcombe 95 %)",
        5: "share of answers equal to the swapped operator's result at the best unbroken after_prefix strength "
           "(Wilson 95 %)",
        7: "fall of the swapped share from its after_prefix peak to the lowest unbroken stronger point (Newcombe 95 %)",
    }
    if swap is None:
        return [_unmeasured(c, metrics[c], command, "no ÷ and × operator features to steer with (claim 8's contrast "
                            "found none)", {"experiment": "operator swap", "moved": False}) for c in (4, 5, 7)]
    points = swap["points"]
    baseline = next(p for p in points if p["strength"] == 0.0)
    after, first = _swap_best(points, "after_prefix"), _swap_best(points, "first_token")
    moved = after is not None and _share(after).low > _share(baseline).high
    details = {"experiment": "operator swap", "moved": moved, "features": swap["features"], "prompts": swap["prompts"],
               "steer_with": swap.get("steer_with", "feature"), "points": [
                   {key: p[key] for key in ("policy", "strength", "broken", "perplexity")}
                   | {"swapped": str(Rate(**p["swapped"])), "correct": str(Rate(**p["correct"])),
                      "operation_swapped": str(Rate(**p["operation_swapped"])) if p.get("operation_swapped") else None}
                   for p in points]}
    if after is None:
        reason = "every steered after_prefix point broke: a finer grid of smaller strengths would decide"
        return [_unmeasured(c, metrics[c], command, reason, details) for c in (4, 5, 7)]
    share = _share(after)
    other = first or baseline  # first_token breaking at every strength is it failing: compare with no steering
    findings = [
        claim_finding(5, *CLAIMS[5], metrics[5], share.share, share.low, share.high, BARS[5], command,
                 {**details, "best_strength": after["strength"]}),
        claim_finding(4, *CLAIMS[4], metrics[4], *rate_difference(share, _share(other)), BARS[4], command,
                 {**details, "after_prefix_strength": after["strength"], "first_token_strength": other["strength"]}),
    ]
    coherent = [p for p in points if p["policy"] == "after_prefix" and p["strength"] > after["strength"]
                and not p["broken"]]
    unmoved = NOTHING_MOVED.format(what="moved the swapped share clear of the baseline's")
    if not coherent:
        findings.append(_unmeasured(7, metrics[7], command, unmoved if not moved else "past its peak the after_prefix "
                                    "sweep has no unbroken strength (it breaks at once): a finer grid would decide",
                                    details))
        return findings
    reverted = min(coherent, key=lambda p: _share(p).share)
    # Measured even when nothing moved (the number and its interval are still informative), but then not judged.
    findings.append(claim_finding(7, *CLAIMS[7], metrics[7], *rate_difference(share, _share(reverted)), BARS[7], command,
                             {**details, "peak_strength": after["strength"], "reverted_strength": reverted["strength"],
                              "breaks_later": any(p["broken"] for p in points if p["policy"] == "after_prefix"
                                                  and p["strength"] > reverted["strength"])},
                             forced=None if moved else unmoved + MEASURED_ANYWAY))
    return findings


# ---- the thinking length: claim 6, and 4 and 7 on it -----------------------------------------------------------

def _mean(point: dict[str, Any]) -> float:
    return float(np.mean(point["thinking"]))


def _brevity_best(points: list[dict[str, Any]], policy: str) -> dict[str, Any] | None:
    """The steered, unbroken point of `policy` with the shortest mean thinking."""
    candidates = [p for p in points if p["policy"] == policy and p["strength"] > 0 and not p["broken"]]
    return min(candidates, key=lambda p: (_mean(p), p["strength"]), default=None)


def _paired_changes(points: list[dict[str, Any]], baseline: dict[str, Any], draws: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's relative change of mean thinking against the baseline: (point estimates (P,),
    bootstrap draws (draws, P)), one resample of the prompts shared by every point (paired)."""
    base = np.asarray(baseline["thinking"], dtype=np.float64)
    steered = np.asarray([p["thinking"] for p in points], dtype=np.float64)  # (P, prompts)
    picks = np.random.default_rng(seed).integers(0, len(base), (draws, len(base)))
    estimate = steered.sum(axis=1) / base.sum() - 1
    drawn = steered[:, picks].sum(axis=2).T / np.maximum(base[picks].sum(axis=1), 1e-12)[:, None] - 1
    return estimate, drawn


def _interval(estimate: float, drawn: np.ndarray) -> tuple[float, float, float]:
    low, high = np.quantile(drawn, [0.025, 0.975])
    return float(estimate), float(low), float(high)


def brevity_findings(brevity: dict[str, Any] | None, run: Path, draws: int = 1000, seed: int = 0) -> list[Finding]:
    """Claims 6, 4 and 7 from the thinking-length sweep, each with `details["moved"]`."""
    command = f"thinklens findings {run}"
    metrics = {
        6: "relative change of mean thinking tokens at the unbroken after_prefix strength that shortens it most, "
           "against no steering (paired bootstrap over prompts, 95 %)",
        4: "relative shortening of thinking at the best unbroken strength, after_prefix minus first_token (paired "
           "bootstrap, 95 %)",
        7: "rise of mean thinking from the after_prefix shortest point to the longest unbroken stronger point, as a "
           "share of the unsteered mean (paired bootstrap, 95 %)",
    }
    if brevity is None:
        reason = "no end-of-thinking feature to steer with (its contrast found none, or the experiment was skipped)"
        return [_unmeasured(c, metrics[c], command, reason, {"experiment": "thinking length", "moved": False},
                            holds_above=c != 6) for c in (6, 4, 7)]
    points = brevity["points"]
    baseline = next(p for p in points if p["strength"] == 0.0)
    estimate, drawn = _paired_changes(points, baseline, draws, seed)
    change = {id(p): (estimate[i], drawn[:, i]) for i, p in enumerate(points)}
    details = {"experiment": "thinking length", "feature": brevity.get("feature"), "selector": brevity.get("selector"),
               "prompts": len(baseline["thinking"]), "steer_with": brevity.get("steer_with", "feature"), "points": [
                   {"policy": p["policy"], "strength": p["strength"], "broken": p["broken"],
                    "mean_thinking": round(_mean(p), 1), "change": "{:+.3f} [{:+.3f}, {:+.3f}]".format(
                        *_interval(*change[id(p)])),
                    "closed": str(Rate(**p["closed"])), "correct": str(Rate(**p["correct"]))} for p in points]}
    after, first = _brevity_best(points, "after_prefix"), _brevity_best(points, "first_token")
    if after is None:
        reason = "every steered after_prefix point broke: a finer grid of smaller strengths would decide"
        return [_unmeasured(c, metrics[c], command, reason, {**details, "moved": False}, holds_above=c != 6)
                for c in (6, 4, 7)]
    value, low, high = _interval(*change[id(after)])
    details["moved"] = moved = high < 0
    findings = [claim_finding(6, *CLAIMS[6], metrics[6], value, low, high, BARS[6], command,
                         {**details, "best_strength": after["strength"]}, holds_above=False)]
    other = first or baseline
    other_estimate, other_drawn = change[id(other)]
    findings.append(claim_finding(4, *CLAIMS[4], metrics[4],
                             *_interval(other_estimate - change[id(after)][0], other_drawn - change[id(after)][1]),
                             BARS[4], command, {**details, "after_prefix_strength": after["strength"],
                                                "first_token_strength": other["strength"]}))
    coherent = [p for p in points if p["policy"] == "after_prefix" and p["strength"] > after["strength"]
                and not p["broken"]]
    unmoved = NOTHING_MOVED.format(what="shortened the thinking clear of no steering")
    if not coherent:
        findings.append(_unmeasured(7, metrics[7], command, unmoved if not moved else "past its shortest point the "
                                    "after_prefix sweep has no unbroken strength (it breaks at once): a finer grid "
                                    "would decide", details))
    else:
        reverted = max(coherent, key=lambda p: _mean(p))
        rise = change[id(reverted)][0] - change[id(after)][0], change[id(reverted)][1] - change[id(after)][1]
        findings.append(claim_finding(7, *CLAIMS[7], metrics[7], *_interval(*rise), BARS[7], command,
                                 {**details, "peak_strength": after["strength"],
                                  "reverted_strength": reverted["strength"]},
                                 forced=None if moved else unmoved + MEASURED_ANYWAY))
    return findings


def steering_findings(swap: list[Finding], brevity: list[Finding]) -> list[Finding]:
    """Claims 4 to 7 from both experiments' findings: 5 from the swap, 6 from the thinking length, and 4
    and 7 from the first experiment whose after_prefix steering moved its behaviour (the module's rule)."""
    by_experiment = [{f.claim: f for f in swap}, {f.claim: f for f in brevity}]
    chosen = next((e for e in by_experiment if e[4].details.get("moved")), by_experiment[0])
    other = by_experiment[1] if chosen is by_experiment[0] else by_experiment[0]
    findings = [by_experiment[0][5], by_experiment[1][6]]
    for claim in (4, 7):
        finding = chosen[claim]
        finding.details = {**finding.details, "other_experiment": {
            "experiment": other[claim].details.get("experiment"), "value": other[claim].value,
            "low": other[claim].low, "high": other[claim].high, "verdict": other[claim].verdict,
            "reason": other[claim].reason}}
        findings.append(finding)
    return sorted(findings, key=lambda f: f.claim)
