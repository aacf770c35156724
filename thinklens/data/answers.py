"""Pull the final answer out of a model's answer text, and compare it with a reference answer.

`extract_answer` tries, in order: the last `\\boxed{...}`, the text after the last `####`, an
explicit "answer is X" / "Answer: X", a final yes/no, the last number, a leading yes/no (only
when the text has no number). `answers_match` compares numbers numerically (3/4 == 0.75,
"1,234" == 1234) and anything else as text, ignoring case, whitespace, surrounding punctuation,
`$` and `\\text{}`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

# A number: optional sign (not after a word, e.g. not the '-' of '5-3'), thousands groups or
# plain digits, optional decimals, optional '/denominator'.
_NUMBER = r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_STATED_RE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?(.*)", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z]+")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed)\s*\{([^{}]*)\}")
_SURROUNDING = " \t\n.,;:!?*\"'`"


def extract_answer(text: str) -> str | None:
    """The final answer in `text`, or None when it states none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return _clean(tail.splitlines()[0])
    stated = _stated_answer(text)
    if stated is not None:
        return stated
    words = _WORD_RE.findall(text)
    if words and words[-1].lower() in ("yes", "no"):
        return words[-1].lower()
    numbers = _NUMBER_RE.findall(_FRAC_RE.sub(r"\1/\2", text))
    if numbers:
        return numbers[-1].replace(",", "")
    if words and words[0].lower() in ("yes", "no"):
        return words[0].lower()
    return None


def answers_match(predicted: str | None, reference: str | None) -> bool | None:
    """Whether `predicted` equals `reference`: None without a reference, False without a prediction."""
    if reference is None:
        return None
    if predicted is None:
        return False
    predicted, reference = _normalise(predicted), _normalise(reference)
    a, b = _to_number(predicted), _to_number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return _squash(predicted) == _squash(reference)


def _last_boxed(text: str) -> str | None:
    """Contents of the last complete `\\boxed{...}` (or `\\fbox{...}`), braces matched."""
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None  # none, or only a truncated one


def _stated_answer(text: str) -> str | None:
    """X in the last "answer is X" / "Answer: X" that says something."""
    for match in reversed(list(_STATED_RE.finditer(text))):
        rest = _FRAC_RE.sub(r"\1/\2", match.group(1))
        rest = re.split(r"\.(?:\s|$)|\n", rest, maxsplit=1)[0]  # its sentence
        rest = rest.rsplit("=", 1)[-1].strip(" \t*$:`")  # "answer is 12 + 5 = 17": 17
        if not rest:
            continue
        number = re.match(_NUMBER, rest)
        if number:
            return number.group().replace(",", "")
        word = _WORD_RE.match(rest)
        if word and (word.group().lower() in ("yes", "no")):
            return word.group().lower()
        if word and word.group()[0].isupper():
            return word.group()  # a name, as in the logic sets
        cleaned = _clean(rest)
        if cleaned:
            return cleaned
    return None


def _clean(answer: str) -> str | None:
    """Strip `$`, `\\text{}`, markdown and trailing '.'; drop thousands commas from a number."""
    answer = _WRAPPER_RE.sub(r"\1", answer).strip(_SURROUNDING + "$")
    if re.fullmatch(_NUMBER, answer):
        answer = answer.replace(",", "")
    return answer or None


def _normalise(answer: str) -> str:
    answer = answer.replace("−", "-").replace("\\left", "").replace("\\right", "")
    answer = re.sub(r"\\[,;!: ]", "", answer)  # LaTeX spacing commands
    answer = _FRAC_RE.sub(r"\1/\2", _WRAPPER_RE.sub(r"\1", answer))
    return _clean(answer) or ""


def _to_number(answer: str) -> float | None:
    answer = answer.replace(" ", "").removesuffix("\\%").removesuffix("%")
    if not re.fullmatch(_NUMBER, answer):
        return None
    numerator, _, denominator = answer.replace(",", "").partition("/")
    if denominator and Fraction(denominator) == 0:
        return None
    return float(Fraction(numerator) / Fraction(denominator or 1))


def _squash(answer: str) -> str:
    return re.sub(r"\s+", "", answer).strip(_SURROUNDING).lower()


def visible_text(tokenizer: Any, text: str) -> str:
    """`text` without the tokenizer's special tokens: answers are searched in what a reader sees."""
    for token in tokenizer.all_special_tokens:
        text = text.replace(token, "")
    return text.strip()
