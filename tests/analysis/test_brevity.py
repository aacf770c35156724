"""The thinking-length experiment: the closing tag read from a real feature database, the sweep on a
real (tiny) model, the verdicts of claims 6, 4 and 7 on hand-made sweeps, and how claims 4 and 7
choose between the two steering experiments."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from thinklens.analysis.brevity import BrevityConfig, closing_token, run_brevity
from thinklens.analysis.steering_findings import brevity_findings, steering_findings, swap_findings
from thinklens.data.procedural import builtin_prompts
from thinklens.stats import rate
from thinklens.steering.from_run import open_variant

RUN = Path("runs/x")


def test_closing_token_is_the_commonest_last_thinking_token_with_a_tag(tmp_path):
    db = tmp_path / "features.db"
    connection = sqlite3.connect(db)
    connection.executescript("""
        CREATE TABLE vocab (token INTEGER PRIMARY KEY, decoded_token TEXT NOT NULL);
        CREATE TABLE token_ids (sequence_id INTEGER, token_idx INTEGER, token INTEGER, segment INTEGER);
        INSERT INTO vocab VALUES (1, ' so'), (2, '</'), (3, 'think'), (4, '>'), (5, '<tag>'), (6, ' 4');
    """)
    rows = [(s, i, t, 2) for s in range(3) for i, t in enumerate([1, 6, 2, 3, 4])]  # "so 4</think>" in the thinking
    rows += [(3, 0, 5, 2), (3, 1, 1, 2), (3, 2, 2, 2), (4, 0, 5, 2)]  # a '<' earlier does not count; a lone one does
    rows += [(5, 0, 2, 3)]  # in the answer: not the thinking's
    connection.executemany("INSERT INTO token_ids VALUES (?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()
    assert closing_token(db) == "</"  # 4 traces end their thinking with '</', 1 with '<tag>'
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).executescript("CREATE TABLE vocab (token INTEGER, decoded_token TEXT);"
                                         "CREATE TABLE token_ids (sequence_id, token_idx, token, segment);")
    assert closing_token(empty) is None


@pytest.mark.integration
def test_brevity_sweep_runs_on_a_real_model_and_counts_thinking_tokens(indexed_run, tmp_path):
    run = Path(indexed_run)
    records = builtin_prompts("arithmetic", 3, seed=5)
    variant = open_variant(run / "traces", run / "sae", run / "features.db", [0], device="cpu")
    config = BrevityConfig(strengths=(0, 4), prompts=3, max_new_tokens=12)
    points = run_brevity(config, variant, records, 0, tmp_path / "samples.jsonl", show_progress=False)
    assert [(p.policy, p.strength) for p in points] == [("first_token", 0.0), ("first_token", 4.0),
                                                        ("after_prefix", 0.0), ("after_prefix", 4.0)]
    assert points[0].thinking == points[2].thinking  # the baseline is shared by both policies
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 3  # the baseline generated once
    for sample in samples:  # an unclosed thinking is censored at what was generated
        assert 0 <= sample["thinking_tokens"] <= sample["generated_tokens"] <= 12
        assert sample["closed"] or sample["thinking_tokens"] > 0
    assert all(p.closed.n == 3 and p.correct.n == 3 for p in points)


def _point(policy: str, strength: float, thinking: list[int], broken: bool = False) -> dict:
    n = len(thinking)
    return {"policy": policy, "strength": strength, "thinking": thinking, "closed": rate(n, n).model_dump(),
            "correct": rate(n // 2, n).model_dump(), "perplexity": 2.0, "distinct2": 0.9, "broken": broken}


def _sweep(first: list[tuple[float, int, bool]], after: list[tuple[float, int, bool]], n: int = 24) -> dict:
    """Each prompt's unsteered thinking is 50–70 tokens; a steered point shifts every prompt by its offset."""
    base = [50 + (i * 7) % 21 for i in range(n)]
    points = [_point("first_token", 0.0, base), _point("after_prefix", 0.0, base)]
    for policy, steered in (("first_token", first), ("after_prefix", after)):
        points += [_point(policy, s, [t + offset for t in base], broken) for s, offset, broken in steered]
    return {"feature": 3, "selector": "segment=thinking,next_token=</", "points": points}


def test_the_thinking_length_verdicts_on_worked_sweeps():
    # after_prefix halves the thinking at 2, drifts back to the unsteered length at 4, breaks at 8;
    # first_token does nothing: 6, 4 and 7 all hold.
    paradox = {f.claim: f for f in brevity_findings(_sweep([(2, 0, False), (4, 1, False), (8, 0, True)],
                                                            [(2, -30, False), (4, -1, False), (8, -40, True)]), RUN)}
    assert {c: f.verdict for c, f in paradox.items()} == {4: "reproduced", 6: "reproduced", 7: "reproduced"}
    base = _sweep([], [])["points"][0]["thinking"]
    assert paradox[6].value == pytest.approx(-30 / (sum(base) / len(base))) and paradox[6].high < 0
    assert paradox[6].details["best_strength"] == 2 and paradox[7].details["reverted_strength"] == 4
    assert paradox[6].details["moved"] is True
    # Steering lengthens the thinking: 6 is not reproduced, and 7 has nothing to revert from.
    longer = {f.claim: f for f in brevity_findings(_sweep([(4, 5, False)], [(4, 20, False)]), RUN)}
    assert longer[6].verdict == "not reproduced" and longer[7].verdict == "inconclusive"
    assert "nothing to revert from" in longer[7].reason and longer[6].details["moved"] is False
    # Nothing moves, but stronger unbroken points exist: the fall is measured, with its interval, not judged.
    flat = {f.claim: f for f in brevity_findings(_sweep([(2, 0, False)], [(2, 0, False), (4, 1, False)]), RUN)}
    assert flat[7].verdict == "inconclusive" and math.isfinite(flat[7].value) and flat[7].low <= flat[7].high
    assert "measured but not judged" in flat[7].reason
    # Everything after the prefix breaks: nothing is measurable.
    broken = brevity_findings(_sweep([(4, 0, False)], [(4, -30, True)]), RUN)
    assert [f.verdict for f in broken] == ["inconclusive"] * 3 and "broke" in broken[0].reason
    assert [f.verdict for f in brevity_findings(None, RUN)] == ["inconclusive"] * 3


def test_claims_4_and_7_are_judged_on_the_experiment_whose_steering_worked():
    still_swap = {"features": {"/": 1, "*": 2}, "prompts": {"/": 16, "*": 16}, "points": [
        {"policy": policy, "strength": s, "swapped": rate(0, 32).model_dump(), "correct": rate(16, 32).model_dump(),
         "perplexity": 2.0, "distinct2": 0.9, "broken": False} for policy in ("first_token", "after_prefix")
        for s in (0.0, 4.0)]}
    shorter = _sweep([(2, 0, False), (4, 1, False)], [(2, -30, False), (4, -1, False)])
    findings = {f.claim: f for f in steering_findings(swap_findings(still_swap, RUN), brevity_findings(shorter, RUN))}
    assert sorted(findings) == [4, 5, 6, 7]
    assert findings[4].details["experiment"] == "thinking length" and findings[4].verdict == "reproduced"
    assert findings[4].details["other_experiment"]["experiment"] == "operator swap"
    assert findings[5].verdict == "not reproduced" and findings[6].verdict == "reproduced"
    # When neither moved, the swap decides (the study's first example).
    flat = _sweep([(4, 0, False)], [(4, 0, False)])
    neither = {f.claim: f for f in steering_findings(swap_findings(still_swap, RUN), brevity_findings(flat, RUN))}
    assert neither[4].details["experiment"] == "operator swap"
    assert neither[7].details["other_experiment"]["verdict"] == "inconclusive"
