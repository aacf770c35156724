"""Built-in procedural prompt sets with known answers: `arithmetic` and `logic`.

Each set is an endless stream of draws from a generator seeded by (set name, seed); a set of size
N is the first N draws whose prompt text has not been seen before. So a set is deterministic for
(name, seed) and prefix-stable: the first N prompts of a larger set are exactly the set of size N.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from thinklens.data.records import PromptRecord
from thinklens.errors import ThinklensError

MAX_SET_SIZE = 100_000

Draw = tuple[str, str, dict[str, Any]]  # (prompt, answer, metadata)

# ---------------------------------------------------------------- arithmetic

OPERATOR_SYMBOLS = {"+": "+", "-": "−", "*": "×", "/": "÷"}  # how the prompts write each operator
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_OPERATORS = ("+", "-", "*", "/")

_EXPRESSION_TEMPLATES = (
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "Evaluate {e}.",
    "What is the value of {e}?",
    "Work out {e}.",
)

_NAMES = (
    "Sam", "Maya", "Leo", "Priya", "Omar", "Lena", "Ravi", "Chloe", "Diego", "Hana",
    "Ivan", "Zoe", "Kofi", "Nina", "Tom", "Aisha", "Ben", "Mei", "Luca", "Sara",
    "Alice", "Bob", "Carol", "Dave",
)  # fmt: skip
_ITEMS = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells",
    "coins", "cards", "balloons", "oranges", "beads", "toy cars", "flowers",
)  # fmt: skip
_CONTAINERS = ("boxes", "bags", "jars", "baskets")
_QUESTION_ASKS = {
    "How many {items} does {name} have now?": "now",
    "How many {items} does {name} have in total?": "total",
    "How many {items} does each friend get?": "each",
    "How many groups does {name} make?": "groups",
}

# Verb phrases for one step of a word problem, read as "Sam {phrase}." The second element, when
# set, is the question the problem must end with, so that phrase may only be the last step.
_WORD_STEPS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "+": (
        ("buys {b} more", None),
        ("finds {b} more", None),
        ("is given {b} more", None),
        ("picks up {b} more", None),
    ),
    "-": (
        ("loses {b}", None),
        ("gives {b} away", None),
        ("sells {b}", None),
        ("uses {b} of them", None),
    ),
    "*": (
        ("ends up with {b} times as many", None),
        ("multiplies the collection by {b}", None),
    ),
    "/": (
        ("splits them into {b} equal piles, keeping one pile", None),
        ("shares them equally among {b} friends", "How many {items} does each friend get?"),
        ("puts them into groups of {b}", "How many groups does {name} make?"),
    ),
}


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b  # operands are chosen so that division is exact


def _first_step(rng: random.Random, op: str, small: bool) -> tuple[int, int]:
    """A start value and operand for the first step with operator `op`."""
    hi = 60 if small else 99
    if op == "/":
        b = rng.randint(2, 10 if small else 12)
        return b * rng.randint(2, 12 if small else 30), b
    if op == "-":
        a = rng.randint(5, hi)
        return a, rng.randint(1, a - 1)
    if op == "*":
        return rng.randint(2, 20 if small else hi), rng.randint(2, 6 if small else 12)
    return rng.randint(2, hi), rng.randint(1, 30 if small else hi)


def _next_step(rng: random.Random, value: int, small: bool) -> tuple[str, int]:
    """An operator and operand that keep `value` a positive integer of moderate size."""
    cap = 500 if small else 5000
    max_factor = 6 if small else 12
    for op in rng.sample(_OPERATORS, len(_OPERATORS)):
        if op == "+":
            return op, rng.randint(1, 30 if small else 99)
        if op == "-" and value >= 2:
            return op, rng.randint(1, value - 1)
        if op == "*" and value * 2 <= cap:
            return op, rng.randint(2, min(max_factor, cap // value))
        if op == "/":
            divisors = [d for d in range(2, max_factor + 1) if value % d == 0]
            if divisors:
                return op, rng.choice(divisors)
    raise AssertionError("unreachable: '+' is always possible")


def _arithmetic_chain(rng: random.Random, steps: int, small: bool) -> tuple[list[str], list[int], int]:
    """Operators, operands (start value first) and the integer result of a random chain."""
    op = rng.choice(_OPERATORS)
    a, b = _first_step(rng, op, small)
    operators, operands = [op], [a, b]
    value = _apply(op, a, b)
    for _ in range(steps - 1):
        op, b = _next_step(rng, value, small)
        operators.append(op)
        operands.append(b)
        value = _apply(op, value, b)
    return operators, operands, value


def _render_expression(operators: list[str], operands: list[int]) -> str:
    """Infix text that evaluates left to right under the usual precedence, e.g. '(12 + 5) × 3'."""
    text, text_precedence = str(operands[0]), 3
    for op, b in zip(operators, operands[1:], strict=True):
        if _PRECEDENCE[op] > text_precedence:
            text, text_precedence = f"({text})", 3
        text = f"{text} {OPERATOR_SYMBOLS[op]} {b}"
        text_precedence = min(text_precedence, _PRECEDENCE[op])
    return text


def _render_word(rng: random.Random, operators: list[str], operands: list[int]) -> tuple[str, dict[str, str]]:
    """The problem's text, and what it is about: {name, items, asks} (asks: now, total, each or groups)."""
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    question = "How many {items} does {name} have now?"
    sentences = []
    for i, (op, b) in enumerate(zip(operators, operands[1:], strict=True)):
        last = i == len(operators) - 1
        if i == 0 and op == "*" and rng.random() < 0.5:
            container = rng.choice(_CONTAINERS)
            sentences.append(f"{name} has {operands[0]} {container} with {b} {items} in each.")
            if last:
                question = "How many {items} does {name} have in total?"
            continue
        phrase, final_question = rng.choice([s for s in _WORD_STEPS[op] if last or s[1] is None])
        phrase = phrase.format(b=b)
        if i == 0:
            sentences.append(f"{name} has {operands[0]} {items} and {phrase}.")
        else:
            sentences.append(f"Then {name} {phrase}.")
        if final_question is not None:
            question = final_question
    sentences.append(question.format(items=items, name=name))
    return " ".join(sentences), {"name": name, "items": items, "asks": _QUESTION_ASKS[question]}


def _draw_arithmetic(rng: random.Random) -> Draw:
    kind = rng.choice(("expression", "word"))
    steps = rng.randint(1, 3)
    operators, operands, value = _arithmetic_chain(rng, steps, small=kind == "word")
    about: dict[str, str] = {}
    if kind == "expression":
        template = rng.choice(_EXPRESSION_TEMPLATES)
        about["expression"] = _render_expression(operators, operands)
        prompt = template.format(e=about["expression"])
    else:
        prompt, about = _render_word(rng, operators, operands)
    metadata = {
        **about,
        "kind": kind,
        "operator": operators[0],
        "operators": operators,
        "operands": operands,
        "steps": steps,
    }
    return prompt, str(value), metadata


# ---------------------------------------------------------------- logic

# relation: (more, less, most, least)
RELATIONS: dict[str, tuple[str, str, str, str]] = {
    "taller": ("taller", "shorter", "tallest", "shortest"),
    "older": ("older", "younger", "oldest", "youngest"),
    "faster": ("faster", "slower", "fastest", "slowest"),
    "heavier": ("heavier", "lighter", "heaviest", "lightest"),
    "stronger": ("stronger", "weaker", "strongest", "weakest"),
    "richer": ("richer", "poorer", "richest", "poorest"),
}
_LOGIC_KINDS = ("most", "least", "second", "compare")


def _draw_logic(rng: random.Random) -> Draw:
    relation = rng.choice(tuple(RELATIONS))
    more, less, most, least = RELATIONS[relation]
    n = rng.randint(3, 5)
    order = rng.sample(_NAMES, n)  # order[0] has the most of the relation

    # A chain of adjacent facts pins down the whole order; each is said one way or the other.
    facts = [
        f"{order[i]} is {more} than {order[i + 1]}"
        if rng.random() < 0.5
        else f"{order[i + 1]} is {less} than {order[i]}"
        for i in range(n - 1)
    ]
    rng.shuffle(facts)
    sentences, i = [], 0
    while i < len(facts):
        if i + 1 < len(facts) and rng.random() < 0.3:
            sentences.append(f"{facts[i]} and {facts[i + 1]}.")
            i += 2
        else:
            sentences.append(f"{facts[i]}.")
            i += 1

    kind = rng.choice(_LOGIC_KINDS)
    extra: dict[str, Any] = {}
    if kind == "most":
        question, answer = f"Who is the {most}?", order[0]
    elif kind == "least":
        question, answer = f"Who is the {least}?", order[-1]
    elif kind == "second":
        if rng.random() < 0.5:
            question, answer = f"Who is the second {most}?", order[1]
        else:
            question, answer = f"Who is the second {least}?", order[-2]
    else:
        x, y = rng.sample(order, 2)
        word = rng.choice((more, less))
        x_has_more = order.index(x) < order.index(y)
        question = f"Is {x} {word} than {y}?"
        answer = "yes" if x_has_more == (word == more) else "no"
        extra["compared"] = [x, word, y]

    prompt = " ".join([*sentences, question])
    metadata = {"kind": kind, "relation": relation, "n_entities": n, "order": order, "question": question, **extra}
    return prompt, answer, metadata


# ---------------------------------------------------------------- registry

_GENERATORS: dict[str, Callable[[random.Random], Draw]] = {
    "arithmetic": _draw_arithmetic,
    "logic": _draw_logic,
}
BUILTIN_SETS: tuple[str, ...] = tuple(_GENERATORS)


def builtin_prompts(name: str, limit: int, seed: int = 0) -> list[PromptRecord]:
    """The first `limit` prompts of built-in set `name` for `seed`, all with distinct text.

    The same (name, seed) always gives the same prompts, and a smaller `limit` gives a prefix of
    a larger one.
    """
    generate = _GENERATORS.get(name)
    if generate is None:
        raise ThinklensError(
            f"unknown built-in prompt set {name!r}; choose one of: {', '.join(BUILTIN_SETS)}"
        )
    if not 1 <= limit <= MAX_SET_SIZE:
        raise ThinklensError(
            f"built-in prompt sets hold 1 to {MAX_SET_SIZE} prompts; pass a limit in that range, not {limit}"
        )
    rng = random.Random(f"{name}:{seed}")  # str seeds hash with SHA-512: stable across processes
    seen: set[str] = set()
    records: list[PromptRecord] = []
    while len(records) < limit:
        prompt, answer, metadata = generate(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        i = len(records)
        records.append(
            PromptRecord(
                sequence_id=i,
                prompt_id=f"{name}-{i:06d}",
                source=name,
                prompt=prompt,
                answer=answer,
                metadata=metadata,
            )
        )
    return records
