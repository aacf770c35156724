"""The regime of each point of a strength sweep, and the oversteering pattern.

Each (policy, strength) point of a sweep gets a regime:

- `broken`: coherence collapsed — perplexity under the unsteered model above `broken_ppl_ratio` ×
  the baseline's, or distinct-2 below `broken_distinct2_ratio` × the baseline's;
- `steered`: not broken, and the behaviour moved: the largest shift of a behaviour metric from the
  baseline (strength 0), in units of the baseline's spread across samples, is ≥ `steered_effect`.
  A spread is never taken below `MIN_SPREAD` of its metric (0.1 for shares such as correctness, 2
  thinking tokens, half a word for counts, 0.05 for the read-back activation) nor 5 % of the
  baseline mean, so that one sample flipping a metric that never varied at baseline is not a shift;
- `reverted`: not broken, behaviour back within `steered_effect` of the baseline, after a smaller
  strength of the same policy was `steered` — the oversteering paradox;
- `unchanged`: otherwise.

A policy shows the oversteering pattern when its regimes, by increasing strength, go steered →
reverted → broken.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

REGIMES = ("unchanged", "steered", "reverted", "broken")
BEHAVIOUR = ("readback", "thinking_tokens", "backtracking", "correct", "operator_kept", "regex_count")
COHERENCE = ("perplexity", "distinct2", "finished_with_answer", "hit_cap")
MIN_SPREAD = {"readback": 0.05, "thinking_tokens": 2.0, "backtracking": 0.5, "correct": 0.1, "operator_kept": 0.1,
              "regex_count": 0.5, "perplexity": 0.1, "distinct2": 0.02, "finished_with_answer": 0.1, "hit_cap": 0.1}


class RegimeThresholds(BaseModel):
    """The documented rule's thresholds (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steered_effect: float = Field(default=1.0, gt=0, description="Behaviour shift (in baseline spreads) that counts as steered.")
    broken_ppl_ratio: float = Field(default=3.0, gt=1, description="Perplexity ratio to baseline that counts as broken.")
    broken_distinct2_ratio: float = Field(default=0.6, gt=0, lt=1, description="Distinct-2 ratio below which it is broken.")


@dataclass
class PointSummary:
    policy: str
    strength: float
    means: dict[str, float]
    shift: float  # largest behaviour shift from baseline, in baseline spreads
    ppl_ratio: float
    distinct2_ratio: float
    regime: str = "unchanged"


def _value(row: dict, name: str) -> float | None:
    metrics = row["metrics"]
    value = metrics["backtracking_total"] if name == "backtracking" else metrics.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def summarise(rows: list[dict], policies: Sequence[str], thresholds: RegimeThresholds) -> list[PointSummary]:
    """Means per (policy, strength) of the sweep's sample rows, shifts from the baseline, and regimes."""
    baseline_rows = [row for row in rows if row["strength"] == 0.0]
    base_mean, base_spread = {}, {}
    for name in BEHAVIOUR + COHERENCE:
        values = [v for v in (_value(row, name) for row in baseline_rows) if v is not None]
        base_mean[name] = statistics.fmean(values) if values else math.nan
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        base_spread[name] = max(spread, 0.05 * abs(base_mean[name]) if values else 0.0, MIN_SPREAD[name])
    points = []
    for policy in policies:
        for strength in sorted({row["strength"] for row in rows}):
            subset = [row for row in rows if row["policy"] == policy and row["strength"] == strength] or (
                baseline_rows if strength == 0.0 else [])
            if not subset:
                continue
            means = {}
            for name in BEHAVIOUR + COHERENCE:
                values = [v for v in (_value(row, name) for row in subset) if v is not None]
                means[name] = statistics.fmean(values) if values else math.nan
            shifts = [abs(means[name] - base_mean[name]) / base_spread[name] for name in BEHAVIOUR
                      if not math.isnan(means[name]) and not math.isnan(base_mean[name])]
            point = PointSummary(
                policy=policy,
                strength=strength,
                means=means,
                shift=max(shifts) if shifts else 0.0,
                ppl_ratio=means["perplexity"] / base_mean["perplexity"] if base_mean["perplexity"] else math.nan,
                distinct2_ratio=means["distinct2"] / base_mean["distinct2"] if base_mean["distinct2"] else math.nan,
            )
            points.append(point)
    for policy in policies:
        steered_before = False
        for point in (p for p in points if p.policy == policy):
            if point.ppl_ratio > thresholds.broken_ppl_ratio or point.distinct2_ratio < thresholds.broken_distinct2_ratio:
                point.regime = "broken"
            elif point.shift >= thresholds.steered_effect:
                point.regime = "steered"
                steered_before = True
            elif steered_before:
                point.regime = "reverted"
    return points


def oversteering_pattern(points: list[PointSummary]) -> dict[str, bool]:
    """Per policy: do the regimes go steered → reverted → broken as strength grows?"""
    result = {}
    for policy in dict.fromkeys(point.policy for point in points):
        regimes = [p.regime for p in points if p.policy == policy]
        try:
            steered = regimes.index("steered")
            reverted = regimes.index("reverted", steered)
            result[policy] = "broken" in regimes[reverted:]
        except ValueError:
            result[policy] = False
    return result
