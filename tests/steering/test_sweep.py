"""Sweeps: every sample saved, regimes by the documented rule, the oversteering pattern, plots."""

from __future__ import annotations

import json

import pytest

from thinklens.steering.regimes import PointSummary, RegimeThresholds, oversteering_pattern, summarise
from thinklens.steering.sweep import SweepConfig

pytestmark = pytest.mark.integration


def _rows(policy: str, strength: float, readback: float, perplexity: float, distinct2: float = 0.9) -> list[dict]:
    metrics = {"readback": readback, "thinking_tokens": 10, "backtracking_total": 0, "correct": None,
               "operator_kept": None, "regex_count": 0, "perplexity": perplexity, "distinct2": distinct2,
               "finished_with_answer": True, "hit_cap": False}
    # Two samples per point whose readback differs by 0.2: the baseline's spread is 0.1.
    return [{"policy": policy, "strength": strength, "metrics": {**metrics, "readback": readback + d}}
            for d in (-0.1, 0.1)]


def test_regimes_follow_the_documented_rule_worked_example():
    # Baseline readback 1.0 (spread 0.1), perplexity 5. Shifts: 1.05 → 0.5 spreads (unchanged),
    # 2.0 → 10 spreads (steered), 1.02 → 0.2 after a steered point (reverted), perplexity 20 = 4× (broken).
    rows = _rows("after_prefix", 0.0, 1.0, 5.0) + _rows("after_prefix", 1.0, 1.05, 5.0) + \
        _rows("after_prefix", 4.0, 2.0, 6.0) + _rows("after_prefix", 16.0, 1.02, 6.0) + \
        _rows("after_prefix", 64.0, 1.0, 20.0)
    points = summarise(rows, ("after_prefix",), RegimeThresholds())
    assert [(p.strength, p.regime) for p in points] == [
        (0.0, "unchanged"), (1.0, "unchanged"), (4.0, "steered"), (16.0, "reverted"), (64.0, "broken")]
    assert points[2].shift == pytest.approx(10.0)
    assert points[4].ppl_ratio == pytest.approx(4.0)
    assert oversteering_pattern(points) == {"after_prefix": True}
    assert oversteering_pattern([PointSummary("first_token", 1.0, {}, 0, 1, 1, "broken")]) == {"first_token": False}


def test_sweep_on_a_real_run_saves_samples_summary_and_plots(indexed_run, tmp_path):
    from thinklens.steering.from_run import open_variant, run_prompts
    from thinklens.steering.sweep import run_sweep

    feature = 0
    variant = open_variant(indexed_run / "traces", indexed_run / "sae", indexed_run / "features.db", [feature], "cpu")
    config = SweepConfig(feature=feature, strengths=(0.0, 4.0, 400.0), prompts=2, samples=2, max_new_tokens=10,
                         regex=r"\d")
    result = run_sweep(config, variant, run_prompts(indexed_run / "traces", 2), tmp_path / "sweep", show_progress=False)
    samples = [json.loads(line) for line in (tmp_path / "sweep" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 3 * 2 * 2  # policies × strengths × prompts × samples
    first = samples[0]
    assert {"prompt", "spec", "seed", "output", "logprobs", "metrics", "steering_start"} <= set(first)
    assert len(first["logprobs"]) == len(first["token_ids"])
    # Same seeds at every strength: the baseline samples are identical for both policies.
    baseline = {(s["policy"], s["prompt_id"], s["sample"]): s["output"] for s in samples if s["strength"] == 0.0}
    assert {v for k, v in baseline.items() if k[0] == "first_token"} == {v for k, v in baseline.items() if k[0] == "after_prefix"}
    assert {p.regime for p in result.points} <= {"unchanged", "steered", "reverted", "broken"}
    assert len(result.points) == 6 and set(result.oversteering) == {"first_token", "after_prefix"}
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert len(summary["points"]) == 6
    for name in ("behaviour", "coherence"):
        png = tmp_path / "sweep" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert (tmp_path / "sweep" / f"{name}.svg").read_text().count("<path") > 20
