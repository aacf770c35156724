"""The verdict rule on worked examples, and each claim's experiment on hand-made analysis results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from thinklens.analysis.findings import (
    VERDICTS,
    FindingsConfig,
    features_finding,
    opening_finding,
    shift_finding,
    sink_finding,
    verdict,
)

RUN = Path("runs/x")


@pytest.mark.parametrize(("low", "high", "bar", "above", "expected"), [
    (0.96, 0.99, 0.95, True, "reproduced"),  # the whole interval above the bar
    (0.50, 0.90, 0.95, True, "not reproduced"),  # the whole interval below it
    (0.90, 0.97, 0.95, True, "inconclusive"),  # the interval holds the bar: more data would decide
    (0.95, 0.99, 0.95, True, "inconclusive"),  # touching the bar is not clearing it
    (0.01, 0.04, 0.05, False, "reproduced"),  # a claim that holds below its bar
    (0.06, 0.09, 0.05, False, "not reproduced"),
    (math.nan, math.nan, 0.5, True, "inconclusive"),
])
def test_verdict_rule_worked_examples(low, high, bar, above, expected):
    decided, reason = verdict(low, high, bar, above)
    assert decided == expected and decided in VERDICTS
    assert ("bar" in reason) or ("not measurable" in reason)


def _prefix(okay: float, traces: int, forced: str | None = None) -> dict:
    overall = {"traces": traces, "okay_share": okay, "top_openings": [("Okay, so the", traces)]}
    return {"overall": overall, "by_source": [{"source": "arithmetic", "okay_share": okay}], "forced_opening": forced}


def test_opening_share_uses_a_wilson_interval_and_a_forced_opening_is_not_evidence():
    assert opening_finding(_prefix(1.0, 512), RUN).verdict == "reproduced"  # Wilson low 0.993
    assert opening_finding(_prefix(1.0, 20), RUN).verdict == "inconclusive"  # 20/20: low 0.84 < 0.95
    assert opening_finding(_prefix(0.6, 500), RUN).verdict == "not reproduced"
    forced = opening_finding(_prefix(1.0, 512, forced="Okay,"), RUN)
    assert forced.verdict == "inconclusive" and "forces" in forced.reason


def _sinks(end: float, around: float, traces: int, jitter: float = 0.0) -> dict:
    per_trace = []
    for i in range(traces):
        wobble = 1 + jitter * ((i % 3) - 1)
        per_trace.append({"prefix_end": {"positions": 3, "attention_mass": end * wobble},
                          "prefix": {"positions": 12, "attention_mass": around},
                          "thinking_start": {"positions": 3, "attention_mass": around}})
    return {"per_trace": per_trace, "places": []}


def test_sink_ratio_is_bootstrapped_over_traces():
    config = FindingsConfig(bootstrap=200)
    strong = sink_finding(_sinks(0.1, 0.01, 16, jitter=0.2), RUN, config)
    assert strong.verdict == "reproduced" and strong.value == pytest.approx(10.0, rel=0.05)
    assert strong.low < strong.value < strong.high
    assert sink_finding(_sinks(0.01, 0.01, 16), RUN, config).verdict == "not reproduced"  # ratio 1
    assert sink_finding(_sinks(0.1, 0.01, 1), RUN, config).verdict == "inconclusive"  # one trace: no interval


def _divergence(a: str, b: str, jsd: float, spread: float = 0.01) -> dict:
    return {"a": a, "b": b, "jsd": jsd, "low": jsd - spread, "high": jsd + spread}


def test_shift_bar_is_the_larger_of_a_tenth_of_a_bit_and_five_noise_floors():
    shift = {"merged_divergences": [_divergence("prompt+prefix", "thinking", 0.4)],
             "divergences": [_divergence("thinking", "answer", 0.3)], "split_half": {"thinking": 0.005}}
    finding = shift_finding(shift, RUN)
    assert finding.verdict == "reproduced" and finding.value == 0.3 and finding.bar == 0.1
    noisy = {**shift, "split_half": {"thinking": 0.08}}  # sampling alone gives 0.08: 0.3 is not "strong"
    assert shift_finding(noisy, RUN).bar == pytest.approx(0.4)
    assert shift_finding(noisy, RUN).verdict == "not reproduced"
    assert shift_finding({"divergences": [], "split_half": {}}, RUN).verdict == "inconclusive"


def test_features_finding_takes_the_weakest_part_and_says_what_it_could_not_measure():
    held = {"a": {"feature_id": 5, "auroc": 0.99, "low": 0.95, "high": 1.0},
            "b": {"feature_id": 7, "auroc": 0.93, "low": 0.85, "high": 0.98}}
    contrast = {"name": "c", "held_out": held, "a_features": [], "b_features": [], "tokens": {}, "traces": {}}
    backtrack = {"name": "backtracking", "held_out": {"a": {"feature_id": 9, "auroc": 0.99, "low": 0.96, "high": 1.0,
                                                            "precision": {}, "recall": {}}, "b": None},
                 "a_features": [], "b_features": []}
    both = features_finding(contrast, backtrack, None, (21, 28), RUN, "thinking")
    assert both.value == 0.93 and both.low == 0.85 and both.verdict == "inconclusive"  # the × side holds the bar
    assert both.details["backtracking_feature"]["feature_id"] == 9 and "near-fixed" in both.details["answer_length"]
    sure = {**contrast, "held_out": {**held, "b": {**held["b"], "auroc": 0.97, "low": 0.92}}}
    assert features_finding(sure, backtrack, None, (21, 28), RUN, "thinking").verdict == "reproduced"
    # A part the run lacks makes the claim inconclusive, and the reason names it.
    no_backtracking = features_finding(sure, None, None, (21, 28), RUN, "thinking")
    assert no_backtracking.verdict == "inconclusive" and "backtracking" in no_backtracking.reason
    assert no_backtracking.value == pytest.approx(0.97)
    nothing = features_finding(None, None, None, (5, 50), RUN, "thinking")
    assert nothing.verdict == "inconclusive" and "÷ and ×" in nothing.reason
    assert "no answer-length experiment" in nothing.details["answer_length"]