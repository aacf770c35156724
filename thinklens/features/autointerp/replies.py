"""Reading the models' answers, and what a scorer's predictions are worth.

Models answer loosely: JSON inside prose, a list with a trailing comment, yes/no words. The parsers
take the first JSON object (explainer) or list (scorer) in the reply and check its shape; anything
else is `Unparsable`, which the caller retries once and then records as such.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np


class Unparsable(ValueError):
    """A reply without the JSON it was asked for."""


@dataclass(frozen=True)
class Explanation:
    label: str
    description: str
    interestingness: float | None


def parse_explanation(reply: str, instructions: str = "") -> Explanation:
    """The explainer's `{"label", "description", "interestingness"}`: the first JSON object in `reply` (nested
    ones too) with a label that does not just echo the prompt's `instructions` (small models copy them)."""
    decoder = json.JSONDecoder()
    echoed = None
    for start in (m.start() for m in re.finditer(r"\{", reply)):
        try:
            data, _ = decoder.raw_decode(reply, start)
        except ValueError:
            continue
        label = str(data.get("label", "")).strip() if isinstance(data, dict) else ""
        if label and label.lower() in instructions.lower():
            echoed = label
        elif label:
            interest = data.get("interestingness")
            interest = float(interest) if isinstance(interest, int | float) and math.isfinite(interest) else None
            return Explanation(label[:120], str(data.get("description", "")).strip()[:500],
                               None if interest is None else min(max(interest, 0.0), 1.0))
    if echoed is not None:
        raise Unparsable(f"the label {echoed[:60]!r} only echoes the prompt")
    raise Unparsable(f"no JSON object with a label in the reply: {reply[:80]!r}")


def parse_predictions(reply: str, n: int) -> list[float]:
    """The scorer's list of `n` probabilities (0/1, true/false and numbers in [0, 1] accepted)."""
    for match in re.finditer(r"\[[^\[\]]*\]", reply):
        try:
            values = json.loads(match.group(0).lower())
        except ValueError:
            continue
        if not isinstance(values, list) or len(values) != n:
            continue
        out = []
        for value in values:
            if isinstance(value, bool):
                out.append(1.0 if value else 0.0)
            elif isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1:
                out.append(float(value))
            else:
                break
        else:
            return out
    raise Unparsable(f"no list of {n} numbers in [0, 1] in the reply: {reply[:80]!r}")


def yes_probability(reply: str, top_logprobs: list[tuple[str, float]] | None) -> float:
    """P(yes) / (P(yes) + P(no)) over the first token's alternatives (any case, any leading space) when
    they name yes or no; else 1 or 0 from the reply's first word."""
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in top_logprobs or ():
        word = token.strip().lower()
        if word in mass and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    if mass["yes"] + mass["no"] > 0:
        return mass["yes"] / (mass["yes"] + mass["no"])
    first = re.match(r"\W*(\w+)", reply)
    word = first.group(1).lower() if first else ""
    if word in ("yes", "no"):
        return 1.0 if word == "yes" else 0.0
    raise Unparsable(f"neither yes nor no in the reply: {reply[:80]!r}")


@dataclass(frozen=True)
class Scores:
    """How well predictions (probabilities) match the truth (1: the feature fires)."""

    n: int
    balanced_accuracy: float
    f1: float
    auroc: float | None  # None where every prediction is the same (no ranking to judge)


def score_predictions(predicted: list[float], truth: list[int]) -> Scores:
    """Balanced accuracy and F1 of `predicted ≥ 0.5`, and the AUROC of the probabilities."""
    p, y = np.asarray(predicted, dtype=float), np.asarray(truth, dtype=int)
    if len(p) != len(y) or len(y) == 0 or y.min() == y.max():
        raise ValueError("scoring needs as many predictions as labels, with both classes present")
    guess = p >= 0.5
    recall = guess[y == 1].mean()
    specificity = (~guess[y == 0]).mean()
    hits = (guess & (y == 1)).sum()
    f1 = 2 * hits / (guess.sum() + (y == 1).sum())
    auroc = None
    if p.min() != p.max():
        positives, negatives = p[y == 1], p[y == 0]
        wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
        auroc = float(wins / (len(positives) * len(negatives)))
    return Scores(len(y), float((recall + specificity) / 2), float(f1), auroc)
