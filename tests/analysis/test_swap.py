"""The operator swap: its metric on hand-written answers, the sweep on a real (tiny) model, and the
verdicts of claims 4, 5 and 7 on hand-made sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinklens.analysis.steering_findings import swap_findings
from thinklens.analysis.swap import SwapConfig, is_swapped, run_swap, swap_prompts, swapped_answers
from thinklens.data.procedural import builtin_prompts
from thinklens.data.records import PromptRecord
from thinklens.stats import rate
from thinklens.steering.from_run import open_variant


def _problem(operator: str, a: int, b: int, answer: str) -> PromptRecord:
    return PromptRecord(sequence_id=0, prompt_id="p", source="arithmetic", prompt="?", answer=answer,
                        metadata={"operator": operator, "operands": [a, b], "steps": 1, "kind": "word"})


def test_swapped_answer_is_the_other_operators_result():
    divide = _problem("/", 99, 3, "33")
    assert swapped_answers(divide) == ["297"]
    assert is_swapped("297", divide) and not is_swapped("33", divide) and not is_swapped(None, divide)
    multiply = _problem("*", 11, 3, "33")
    assert is_swapped("3.6666667", multiply) and is_swapped("3", multiply)  # a ÷ b, or its whole part
    assert not is_swapped("33", multiply) and not is_swapped("14", multiply)
    two_steps = PromptRecord(**{**divide.model_dump(), "metadata": {"operator": "/", "operands": [8, 2], "steps": 2}})
    assert swapped_answers(two_steps) is None and not is_swapped("16", two_steps)
    assert swapped_answers(_problem("+", 2, 3, "5")) is None
    expression = PromptRecord(**{**divide.model_dump(), "metadata": {**divide.metadata, "kind": "expression"}})
    assert swap_prompts([divide, expression, multiply], per_operator=5) == {"/": [divide], "*": [multiply]}


@pytest.mark.integration
def test_swap_sweep_runs_on_a_real_model_and_saves_every_sample(indexed_run, tmp_path):
    run = Path(indexed_run)
    records = builtin_prompts("arithmetic", 800, seed=3)
    prompts = swap_prompts(records, per_operator=2)
    assert len(prompts["/"]) == 2 and len(prompts["*"]) == 2
    variant = open_variant(run / "traces", run / "sae", run / "features.db", [0, 1], device="cpu")
    config = SwapConfig(strengths=(0, 4), prompts=2, max_new_tokens=8)
    points = run_swap(config, variant, prompts, {"/": 0, "*": 1}, tmp_path / "samples.jsonl", show_progress=False)
    assert [(p.policy, p.strength) for p in points] == [("first_token", 0.0), ("first_token", 4.0),
                                                        ("after_prefix", 0.0), ("after_prefix", 4.0)]
    assert all(p.swapped.n == 4 for p in points) and not points[0].broken
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4  # the baseline is generated once, for both policies
    assert {s["operator"] for s in samples} == {"/", "*"} and all(s["perplexity"] > 0 for s in samples)


def _point(policy: str, strength: float, swapped: int, n: int = 32, broken: bool = False) -> dict:
    return {"policy": policy, "strength": strength, "swapped": rate(swapped, n).model_dump(),
            "correct": rate(n - swapped, n).model_dump(), "perplexity": 2.0, "distinct2": 0.9, "broken": broken}


def _sweep(first: list[tuple[float, int, bool]], after: list[tuple[float, int, bool]]) -> dict:
    points = [_point("first_token", 0.0, 0)] + [_point("first_token", s, k, broken=b) for s, k, b in first]
    points += [_point("after_prefix", 0.0, 0)] + [_point("after_prefix", s, k, broken=b) for s, k, b in after]
    return {"features": {"/": 1, "*": 2}, "prompts": {"/": 16, "*": 16}, "points": points}


def test_the_three_steering_verdicts_on_worked_sweeps():
    run = Path("runs/x")
    # after_prefix swaps most answers at 2, falls back to 3/32 at 4 while coherent, breaks at 8;
    # first_token never swaps (and breaks at 8): all three claims hold.
    paradox = swap_findings(_sweep([(2, 1, False), (4, 0, False), (8, 0, True)],
                                   [(2, 28, False), (4, 3, False), (8, 0, True)]), run)
    assert {f.claim: f.verdict for f in paradox} == {4: "reproduced", 5: "reproduced", 7: "reproduced"}
    assert next(f for f in paradox if f.claim == 7).details["breaks_later"] is True
    # Both policies swap alike, and the swap keeps rising until it breaks: 4 and 7 are not reproduced.
    monotone = swap_findings(_sweep([(2, 20, False), (4, 27, False), (8, 0, True)],
                                    [(2, 21, False), (4, 28, False), (8, 0, True)]), run)
    verdicts = {f.claim: f.verdict for f in monotone}
    assert verdicts[5] == "reproduced" and verdicts[4] == "inconclusive"  # a 1/32 difference: interval holds 0
    assert verdicts[7] == "inconclusive"  # nothing unbroken beyond the peak at 4
    # Steering does nothing at any strength: 5 is not reproduced, 7 cannot be measured.
    flat = {f.claim: f for f in swap_findings(_sweep([(4, 0, False)], [(4, 1, False)]), run)}
    assert flat[5].verdict == "not reproduced" and flat[7].verdict == "inconclusive"
    assert "nothing to revert from" in flat[7].reason
    none = swap_findings(None, run)
    assert [f.verdict for f in none] == ["inconclusive"] * 3
