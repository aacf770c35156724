"""The procedural teacher: worked examples of its traces, and the statistics of 1,000 of them."""

from __future__ import annotations

import re

import pytest

from thinklens.data.answers import answers_match, extract_answer
from thinklens.data.procedural import builtin_prompts
from thinklens.data.records import PromptRecord
from thinklens.data.teacher import CLOSE, TeacherTrace, teach
from thinklens.errors import ThinklensError


def _find(source: str, predicate) -> PromptRecord:
    return next(record for record in builtin_prompts(source, 400, seed=3) if predicate(record))


def test_a_one_step_multiplication_is_split_into_tens_and_units():
    record = PromptRecord(
        sequence_id=0, prompt_id="arithmetic-000000", source="arithmetic", prompt="What is 47 × 6?", answer="282",
        metadata={"kind": "expression", "expression": "47 × 6", "operator": "*", "operators": ["*"],
                  "operands": [47, 6], "steps": 1},
    )
    trace = teach(record)
    assert "multiply 47 by 6: 40 × 6 = 240, 7 × 6 = 42, 240 + 42 = 282." in trace.thinking
    assert trace.answer == "47 × 6 = 282, so the answer is \\boxed{282}."
    assert trace.completion == trace.thinking + "\n</think>\n\n" + trace.answer
    assert trace.truth.operators == ["*"] and trace.truth.steps == 1 and trace.truth.answer == "282"
    assert teach(record) == trace  # deterministic for (prompt, seed)


def test_a_forgotten_carry_is_followed_by_wait_and_the_correction():
    record = _find("arithmetic", lambda r: r.metadata["steps"] == 2 and teach(r).truth.slip_step is not None)
    trace = teach(record)
    thinking, truth = trace.thinking, trace.truth
    assert truth.slip_step == 0 and thinking[truth.slip_char :].startswith("Wait")
    op, (a, b) = record.metadata["operators"][0], record.metadata["operands"][:2]
    assert op in "+-" and ((a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10))
    # The wrong result stands just before the Wait, and the correction names it: "So it's R, not W."
    wrong = re.search(r"= (\d+)\.\s*$", thinking[: truth.slip_char]).group(1)
    corrected = re.search(r"So it's (\d+), not (\d+)\.", thinking[truth.slip_char :])
    assert corrected.group(2) == wrong and abs(int(corrected.group(1)) - int(wrong)) == 10
    assert answers_match(extract_answer(trace.answer), record.answer)


def test_logic_traces_restate_every_fact_and_order_the_entities():
    record = _find("logic", lambda r: r.metadata["kind"] == "most" and r.metadata["n_entities"] == 4)
    trace = teach(record)
    order = record.metadata["order"]
    assert trace.thinking.count(" > ") + trace.thinking.startswith(">") >= 3
    assert ", ".join(order) in trace.thinking and " > ".join(order) in trace.answer
    assert trace.truth.steps == 3 and trace.truth.answer == order[0]
    assert trace.answer.endswith(f"\\boxed{{{order[0]}}}.")


def test_a_long_division_is_split_like_a_long_multiplication():
    record = PromptRecord(
        sequence_id=0, prompt_id="arithmetic-000001", source="arithmetic", prompt="Compute 91 ÷ 7.", answer="13",
        metadata={"kind": "expression", "expression": "91 ÷ 7", "operator": "/", "operators": ["/"],
                  "operands": [91, 7], "steps": 1},
    )
    assert "divide 91 by 7: 70 ÷ 7 = 10, 21 ÷ 7 = 3, 10 + 3 = 13." in teach(record).thinking


def test_only_built_in_sets_can_be_taught():
    with pytest.raises(ThinklensError, match="built-in sets"):
        teach(PromptRecord(sequence_id=0, prompt_id="x", source="my.jsonl", prompt="hi"))


def _traces(n: int) -> list[TeacherTrace]:
    return [teach(record, seed=1) for source in ("arithmetic", "logic") for record in builtin_prompts(source, n // 2, seed=5)]


def test_statistics_of_a_thousand_traces():
    traces = _traces(1000)
    n = len(traces)
    okay = sum(t.thinking.startswith("Okay,") for t in traces) / n
    assert 0.93 <= okay <= 0.99  # R1: > 95 % of English traces
    others = {t.thinking.split()[0] for t in traces if not t.thinking.startswith("Okay,")}
    assert others <= {"Alright,", "Hmm,", "First,"} and len(others) == 3
    openings = {t.thinking.split(".")[0].split(" to ")[0] for t in traces}
    assert len(openings) >= 8  # varied forms, not one sentence
    slips = [t for t in traces if t.truth.slip_step is not None]
    assert 0.17 <= len(slips) / n <= 0.25
    assert all(t.thinking[t.truth.slip_char :].startswith("Wait") for t in slips)
    assert all("Wait" not in t.thinking for t in traces if t.truth.slip_step is None)
    arithmetic = [t for t in traces if t.truth.task == "arithmetic"]
    assert 0.2 <= sum(t.truth.verified for t in arithmetic) / len(arithmetic) <= 0.4
    # every trace is closed once and its boxed answer is the set's reference answer
    assert all(t.completion.count(CLOSE) == 1 for t in traces)
    assert all(answers_match(extract_answer(t.answer), t.prompt.answer) for t in traces)
    # length grows with the number of steps
    by_steps = {}
    for t in traces:
        if t.truth.task == "arithmetic":
            by_steps.setdefault(t.truth.steps, []).append(len(t.thinking))
    means = [sum(v) / len(v) for _, v in sorted(by_steps.items())]
    assert means == sorted(means) and len(means) == 3
