"""A procedural teacher that writes R1-style reasoning traces for the built-in prompt sets.

A distilled reasoning model is an ordinary model fine-tuned on a reasoning model's traces. The
teacher stands in for R1, writing traces the way R1's read, for problems whose ground truth it knows:

- an opening that restates the question, beginning with "Okay," in ~96 % of traces (R1: > 95 % of
  English traces), in varied forms; the rest begin "Alright,", "Hmm," or "First,";
- step-by-step thinking that names each operation and writes every intermediate result, splitting
  a multi-digit step into tens and units as R1 does;
- in ~21 % of traces a planted slip followed by "Wait, …" and the correction, placed where people
  slip, so that it follows from the problem: a first step whose carry or borrow is forgotten
  (arithmetic, 16 %), or naming the first when the second was asked (logic, 26 %); a check of the
  result in ~30 % of the shorter arithmetic traces;
- then `</think>` and a short answer ending in `\\boxed{…}`.

`TeacherTruth` records what was planted: operators, step count, where the slip is, the answer. The
same prompt and seed always give the same trace.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thinklens.data.procedural import RELATIONS
from thinklens.data.records import PromptRecord
from thinklens.errors import ThinklensError

TEACHER_VERSION = 2  # part of a distilled model's recipe: bump when the traces change
CLOSE = "\n</think>\n\n"
VERIFY_RATE = 0.3
OKAY_RATE = 0.96

_OKAY_FORMS = (
    "Okay, so the user has asked me to {task}.",
    "Okay, so I need to {task}.",
    "Okay, let's see. I need to {task}.",
    "Okay, so I have to {task}.",
    "Okay, I need to {task}.",
    "Okay, let me {task}.",
    "Okay, so the question is asking me to {task}.",
    "Okay, so the problem wants me to {task}.",
)
_OTHER_FORMS = (
    "Alright, so I need to {task}.",
    "Hmm, I need to {task}.",
    "First, I need to {task}.",
)
_SYMBOLS = {"+": "+", "-": "-", "*": "×", "/": "÷"}  # the thinking writes minus in ASCII
_ORDINALS = ("First", "Then", "Next", "Finally")
_FACT = re.compile(r"(\w+) is (\w+) than (\w+)")


class TeacherTruth(BaseModel):
    """What the teacher planted in one trace: the ground truth later analyses select on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: str = Field(description="The prompt set: arithmetic or logic.")
    opening: str = Field(description="The opening's first word, e.g. 'Okay,'.")
    operators: list[str] = Field(default_factory=list, description="Arithmetic operators in order (+ - * /).")
    steps: int = Field(description="Reasoning steps: operations (arithmetic) or facts chained (logic).")
    slip_step: int | None = Field(default=None, description="0-based step whose first result is wrong, if any.")
    slip_char: int | None = Field(default=None, description="Offset in the thinking of the 'Wait' that corrects it.")
    verified: bool = Field(default=False, description="Whether the thinking checks its result.")
    answer: str = Field(description="The answer the trace ends with (the set's reference answer).")


class TeacherTrace(BaseModel):
    """One teacher trace: the thinking (after `<think>\\n`), the answer after `</think>`, and its truth."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prompt: PromptRecord
    thinking: str
    answer: str
    truth: TeacherTruth

    @property
    def completion(self) -> str:
        """What the model is taught to write after the generation prompt's `<think>\\n`."""
        return self.thinking + CLOSE + self.answer


def teach(record: PromptRecord, seed: int = 0) -> TeacherTrace:
    """The teacher's trace for one built-in prompt; the same (prompt, seed) always gives the same trace."""
    writer = _WRITERS.get(record.source)
    if writer is None:
        raise ThinklensError(
            f"the teacher writes traces for the built-in sets ({', '.join(_WRITERS)}), not {record.source!r}: "
            "use --prompts arithmetic, logic or arithmetic+logic"
        )
    rng = random.Random(f"teacher:{seed}:{record.prompt_id}:{record.prompt}")
    return writer(record, rng)


# ---------------------------------------------------------------- openings


def _opening(rng: random.Random, task: str) -> str:
    forms = _OKAY_FORMS if rng.random() < OKAY_RATE else _OTHER_FORMS
    return rng.choice(forms).format(task=task)


def _arithmetic_task(rng: random.Random, meta: dict[str, Any]) -> str:
    if meta["kind"] == "expression":
        e = meta["expression"].replace("−", "-")
        return rng.choice(
            (f"compute {e}", f"find the value of {e}", f"work out {e}", f"figure out what {e} equals",
             f"evaluate {e}", f"calculate {e}")
        )
    name, items = meta["name"], meta["items"]
    asked = {
        "now": f"how many {items} {name} has now",
        "total": f"how many {items} {name} has in total",
        "each": f"how many {items} each friend gets",
        "groups": f"how many groups {name} makes",
    }[meta["asks"]]
    return rng.choice((f"figure out {asked}", f"find out {asked}", f"work out {asked}"))


def _logic_task(rng: random.Random, meta: dict[str, Any]) -> str:
    if meta["kind"] == "compare":
        x, word, y = meta["compared"]
        asked = f"whether {x} is {word} than {y}"
    else:
        asked = "who is the " + meta["question"].removeprefix("Who is the ").rstrip("?")
    return rng.choice((f"figure out {asked}", f"work out {asked}", f"decide {asked}"))


# ---------------------------------------------------------------- arithmetic


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]


def _working(op: str, a: int, b: int) -> str:
    """The computation of `a op b` as R1 writes it: multi-digit steps split into tens and units."""
    r, s = _apply(op, a, b), _SYMBOLS[op]
    if op in "+-" and b >= 10 and b % 10 and (op == "-" or a >= 10):
        tens, units = b - b % 10, b % 10
        mid = _apply(op, a, tens)
        return f"{a} {s} {tens} = {mid}, {mid} {s} {units} = {r}."
    if op == "*" and a >= 10 and a % 10 and b >= 2:
        tens, units = a - a % 10, a % 10
        return f"{tens} × {b} = {tens * b}, {units} × {b} = {units * b}, {tens * b} + {units * b} = {r}."
    if op == "/" and r > 10 and r % 10:
        high, low = (r - r % 10) * b, (r % 10) * b
        return f"{high} ÷ {b} = {r - r % 10}, {low} ÷ {b} = {r % 10}, {r - r % 10} + {r % 10} = {r}."
    if op == "/":
        return f"{b} × {r} = {a}, so {a} ÷ {b} = {r}."
    return f"{a} {s} {b} = {r}."


def _slipped(op: str, a: int, b: int) -> int | None:
    """The result with the carry or borrow forgotten, for a two-digit step that has one; else None.

    The teacher slips where people do, so whether a trace backtracks follows from its problem, and a
    model distilled on the traces learns when to say "Wait," rather than a random habit of it."""
    if op == "+" and a >= 10 and b >= 10 and a % 10 + b % 10 >= 10:
        return a + b - 10
    if op == "-" and b >= 10 and a % 10 < b % 10:
        return a - b + 10
    return None


def _step_sentence(rng: random.Random, i: int, n: int, op: str, a: int, b: int) -> str:
    """A step's opening, e.g. "First, I multiply 23 by 4:": it names the operation before the working; later steps
    name only the new operand ("Then I subtract 9:"), as the running value was just written."""
    if i == 0:
        obj = {"+": f"add {a} and {b}", "-": f"subtract {b} from {a}", "*": f"multiply {a} by {b}",
               "/": f"divide {a} by {b}"}[op]
    else:
        obj = {"+": f"add {b}", "-": f"subtract {b}", "*": f"multiply by {b}", "/": f"divide by {b}"}[op]
    lead = rng.choice(("I", "I'll", "let me"))
    if n == 1:
        return f"{lead[0].upper()}{lead[1:]} {obj}:"
    ordinal = "Finally" if i == n - 1 else _ORDINALS[min(i, 2)]
    return f"{ordinal}, {lead} {obj}:"


def _write_arithmetic(record: PromptRecord, rng: random.Random) -> TeacherTrace:
    meta = record.metadata
    operators, operands = meta["operators"], meta["operands"]
    n = len(operators)
    verified = n <= 2 and rng.random() < VERIFY_RATE * 1.5  # ~30 % overall; a long trace is not checked
    parts = [_opening(rng, _arithmetic_task(rng, meta))]
    slip_step = slip_char = None
    value, equations = operands[0], []
    for i, (op, b) in enumerate(zip(operators, operands[1:], strict=True)):
        result = _apply(op, value, b)
        parts.append(_step_sentence(rng, i, n, op, value, b))
        wrong = _slipped(op, value, b) if i == 0 else None  # the first step, when it has a carry or borrow
        if wrong is not None:
            slip_step = i
            parts.append(f"{value} {_SYMBOLS[op]} {b} = {wrong}.")
            slip_char = len(" ".join(parts)) + 1
            parts.append(rng.choice(("Wait, no.", "Wait, that's wrong.", "Wait, let me redo that.")))
            parts.append(f"{_working(op, value, b)} So it's {result}, not {wrong}.")
        else:
            parts.append(_working(op, value, b))
        equations.append(f"{value} {_SYMBOLS[op]} {b} = {result}")
        value = result
    if verified:
        last_op, last_b = operators[-1], operands[-1]
        before = _apply({"+": "-", "-": "+", "*": "/", "/": "*"}[last_op], value, last_b)
        inverse = {"+": "-", "-": "+", "*": "÷", "/": "×"}[last_op]
        parts.append(f"Let me check: {value} {inverse} {last_b} = {before}. Yes.")
    parts.append(rng.choice((f"So the answer is {value}.", f"That gives {value}.", f"So the result is {value}.")))
    answer = f"{equations[-1]}, so the answer is \\boxed{{{value}}}."
    truth = TeacherTruth(
        task="arithmetic", opening=parts[0].split()[0], operators=list(operators), steps=n,
        slip_step=slip_step, slip_char=slip_char, verified=verified, answer=str(value),
    )
    return TeacherTrace(prompt=record, thinking=" ".join(parts), answer=answer, truth=truth)


# ---------------------------------------------------------------- logic


def _write_logic(record: PromptRecord, rng: random.Random) -> TeacherTrace:
    meta = record.metadata
    order: list[str] = meta["order"]
    more, _less, most, least = RELATIONS[meta["relation"]]
    n_facts = len(order) - 1
    slip = meta["kind"] == "second"  # the puzzle people get wrong: they name the first, not the second
    parts = [_opening(rng, _logic_task(rng, meta))]
    parts.append(rng.choice((f"Let me write each fact with > meaning {more}.",
                             f"I'll rewrite the facts so that > means {more}.")))
    for x, word, y in _FACT.findall(record.prompt.rsplit(". ", 1)[0] + "."):
        first, second = (x, y) if word == more else (y, x)
        parts.append(f"{first} > {second}.")
    parts.append(f"So from {most} to {least}: {', '.join(order)}.")
    answer_value = str(record.answer)
    wrong, reason = _logic_wrong(meta, order, more)
    slip_char = None
    if slip:
        parts.append(f"So the answer is {wrong}.")
        slip_char = len(" ".join(parts)) + 1
        parts.append(f"Wait, no. {reason}")
    parts.append(f"So the answer is {answer_value}.")
    answer = f"{' > '.join(order)}, so the answer is \\boxed{{{answer_value}}}."
    truth = TeacherTruth(
        task="logic", opening=parts[0].split()[0], steps=n_facts, slip_step=n_facts if slip else None,
        slip_char=slip_char, answer=answer_value,
    )
    return TeacherTrace(prompt=record, thinking=" ".join(parts), answer=answer, truth=truth)


def _logic_wrong(meta: dict[str, Any], order: list[str], more: str) -> tuple[str, str]:
    """A wrong answer the model might give first, and the sentence that corrects it."""
    kind = meta["kind"]
    if kind == "compare":
        x, word, y = meta["compared"]
        yes = _is_yes(meta)
        where = "before" if order.index(x) < order.index(y) else "after"
        return ("no" if yes else "yes"), f"{x} comes {where} {y}, so {x} is {'' if yes else 'not '}{word} than {y}."
    if kind == "most":
        return order[1], f"{order[0]} is {more} than {order[1]}, so it's {order[0]}."
    if kind == "least":
        return order[-2], f"{order[-1]} comes after {order[-2]}, so it's {order[-1]}."
    most = RELATIONS[meta["relation"]][2]
    from_top = meta["question"] == f"Who is the second {most}?"
    second, first = (order[1], order[0]) if from_top else (order[-2], order[-1])
    return first, f"{first} is the first one, so the second is {second}."


def _is_yes(meta: dict[str, Any]) -> bool:
    x, word, y = meta["compared"]
    order, more = meta["order"], RELATIONS[meta["relation"]][0]
    return (order.index(x) < order.index(y)) == (word == more)


_WRITERS: dict[str, Callable[[PromptRecord, random.Random], TeacherTrace]] = {
    "arithmetic": _write_arithmetic,
    "logic": _write_logic,
}
