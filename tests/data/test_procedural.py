"""Built-in procedural prompt sets: answers are right, sets are unique, deterministic, prefix-stable."""

import re
from fractions import Fraction

import pytest

from thinklens.data.procedural import BUILTIN_SETS, MAX_SET_SIZE, RELATIONS, builtin_prompts
from thinklens.errors import ThinklensError

_SYMBOL_TO_PYTHON = {"+": "+", "−": "-", "×": "*", "÷": "/"}


def _fold(operators: list[str], operands: list[int]) -> Fraction:
    """Apply the steps left to right, checking each intermediate value is a non-negative integer."""
    value = Fraction(operands[0])
    for op, b in zip(operators, operands[1:], strict=True):
        value = {"+": value + b, "-": value - b, "*": value * b, "/": value / b}[op]
        assert value.denominator == 1 and value >= 0, (operators, operands)
    return value


def _evaluate_expression(prompt: str) -> Fraction:
    """Evaluate the expression in an arithmetic prompt with Python's own precedence rules."""
    expression = re.sub(r"^(What is the value of|What is|Compute|Calculate|Evaluate|Work out) ", "", prompt)
    expression = expression.rstrip("?.")
    for symbol, python in _SYMBOL_TO_PYTHON.items():
        expression = expression.replace(symbol, python)
    assert re.fullmatch(r"[\d+\-*/() ]+", expression), prompt
    # Wrap every literal in Fraction so division is exact and checkable.
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expression), {"Fraction": Fraction})


def test_worked_examples_of_each_arithmetic_kind():
    records = builtin_prompts("arithmetic", 200, seed=0)
    record = next(
        r for r in records if r.metadata["operators"] == ["+", "*"] and r.metadata["kind"] == "expression"
    )
    a, b, c = record.metadata["operands"]
    # (a + b) × c must be parenthesised, or the text would mean a + b × c.
    assert f"({a} + {b}) × {c}" in record.prompt
    assert record.answer == str((a + b) * c)

    record = next(
        r
        for r in records
        if r.metadata["kind"] == "word" and r.metadata["steps"] == 1 and r.metadata["operator"] == "+"
    )
    a, b = record.metadata["operands"]
    # "Sam has 12 apples and buys 5 more." -> 12 + 5 = 17
    assert str(a) in record.prompt and str(b) in record.prompt
    assert record.answer == str(a + b)


def test_every_arithmetic_answer_is_the_evaluated_expression():
    records = builtin_prompts("arithmetic", 5000, seed=3)
    for record in records:
        meta = record.metadata
        assert meta["steps"] == len(meta["operators"]) == len(meta["operands"]) - 1
        assert 1 <= meta["steps"] <= 3
        assert meta["operator"] == meta["operators"][0]
        assert set(meta["operators"]) <= {"+", "-", "*", "/"}
        assert record.answer == str(_fold(meta["operators"], meta["operands"]))
        if meta["kind"] == "expression":
            assert record.answer == str(_evaluate_expression(record.prompt)), record.prompt
        else:
            assert meta["kind"] == "word"
            assert record.prompt.endswith("?")
            for operand in meta["operands"]:
                assert re.search(rf"\b{operand}\b", record.prompt), record.prompt


def test_arithmetic_covers_every_operator_kind_and_step_count():
    records = builtin_prompts("arithmetic", 2000)
    assert {r.metadata["operator"] for r in records} == {"+", "-", "*", "/"}
    assert {r.metadata["kind"] for r in records} == {"expression", "word"}
    assert {r.metadata["steps"] for r in records} == {1, 2, 3}
    word_problems = [r.prompt for r in records if r.metadata["kind"] == "word"]
    assert any("equally among" in p for p in word_problems)
    assert any("groups of" in p for p in word_problems)


def _solve_logic(prompt: str, relation: str) -> list[str]:
    """The order (most first) implied by the facts of a logic prompt."""
    more, less, _, _ = RELATIONS[relation]
    facts = prompt.rsplit(". ", 1)[0]
    beats: set[tuple[str, str]] = set()
    for x, word, y in re.findall(r"(\w+) is (\w+) than (\w+)", facts):
        assert word in (more, less), prompt
        beats.add((x, y) if word == more else (y, x))
    names = {n for pair in beats for n in pair}
    # With a chain of n - 1 adjacent facts, the i-th name is above exactly n - 1 - i others
    # (after closing the relation transitively).
    above = {n: {y for x, y in beats if x == n} for n in names}
    for _ in names:
        for n in names:
            above[n] |= {z for y in above[n] for z in above[y]}
    return sorted(names, key=lambda n: -len(above[n]))


def test_every_logic_answer_follows_from_the_facts():
    records = builtin_prompts("logic", 3000, seed=1)
    for record in records:
        meta = record.metadata
        more, _, most, least = RELATIONS[meta["relation"]]
        order = _solve_logic(record.prompt, meta["relation"])
        assert order == meta["order"] and len(order) == meta["n_entities"]
        assert 3 <= meta["n_entities"] <= 5
        question = record.prompt.rsplit(". ", 1)[1]
        if meta["kind"] == "most":
            assert question == f"Who is the {most}?" and record.answer == order[0]
        elif meta["kind"] == "least":
            assert question == f"Who is the {least}?" and record.answer == order[-1]
        elif meta["kind"] == "second":
            expected = order[1] if question == f"Who is the second {most}?" else order[-2]
            assert record.answer == expected
        else:
            x, word, y = re.fullmatch(r"Is (\w+) (\w+) than (\w+)\?", question).groups()
            x_more = order.index(x) < order.index(y)
            assert record.answer == ("yes" if x_more == (word == more) else "no")


def test_logic_worked_example():
    record = builtin_prompts("logic", 2, seed=0)[1]
    # "Mei is stronger than Kofi. Mei is weaker than Carol. Kofi is stronger than Chloe.
    #  Is Mei weaker than Kofi?"  ->  Carol > Mei > Kofi > Chloe, so Mei is not weaker: "no".
    assert record.prompt.endswith("Is Mei weaker than Kofi?")
    assert record.metadata["order"] == ["Carol", "Mei", "Kofi", "Chloe"]
    assert record.answer == "no"


def test_logic_states_facts_in_shuffled_order():
    # If facts were never shuffled, the first fact would always mention the top of the order.
    records = builtin_prompts("logic", 200)
    first_mentions_top = [r.prompt.split(".")[0].count(r.metadata["order"][0]) > 0 for r in records]
    assert 0 < sum(first_mentions_top) < len(records)
    assert {r.metadata["kind"] for r in records} == {"most", "least", "second", "compare"}
    assert {r.metadata["relation"] for r in records} == set(RELATIONS)
    assert {r.answer for r in records if r.metadata["kind"] == "compare"} == {"yes", "no"}


@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_100k_prompts_are_unique_and_quick(name):
    records = builtin_prompts(name, MAX_SET_SIZE, seed=0)
    assert len(records) == MAX_SET_SIZE
    assert len({r.prompt for r in records}) == MAX_SET_SIZE
    assert [r.sequence_id for r in records[:3]] == [0, 1, 2]
    assert records[17].prompt_id == f"{name}-000017"
    assert records[-1].prompt_id == f"{name}-099999"
    assert {r.source for r in records} == {name}


@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_sets_are_deterministic_and_prefix_stable(name):
    small = builtin_prompts(name, 50, seed=7)
    assert builtin_prompts(name, 50, seed=7) == small
    assert builtin_prompts(name, 500, seed=7)[:50] == small
    assert builtin_prompts(name, 50, seed=8) != small


def test_unknown_set_names_the_built_in_sets():
    with pytest.raises(ThinklensError, match="arithmetic, logic"):
        builtin_prompts("algebra", 10)


@pytest.mark.parametrize("limit", [0, -1, MAX_SET_SIZE + 1])
def test_limit_out_of_range_is_a_user_error(limit):
    with pytest.raises(ThinklensError, match="pass a limit"):
        builtin_prompts("arithmetic", limit)
