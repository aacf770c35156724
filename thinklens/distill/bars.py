"""The organism's bars, measured on a trace store: does it reason in R1's format, and how well?

Each share comes with a Wilson 95 % interval. Accuracy is broken down by task, step count and first
operator, so a model that only learned the format (closing `</think>`, a boxed answer) and not the
arithmetic shows it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.data.answers import extract_answer
from thinklens.data.procedural import OPERATOR_SYMBOLS
from thinklens.data.traces import TraceStore
from thinklens.stats import Rate, rate


class OrganismBars(BaseModel):
    """What the distill issue's bars measure, on one set of traces."""

    model_config = ConfigDict(frozen=True)

    traces: int
    okay_opening: Rate = Field(description="The generated thinking begins with 'Okay,'.")
    thinking_closed: Rate = Field(description="`</think>` written within the token cap.")
    answer_from_answer_segment: Rate = Field(description="An answer is found in the text after `</think>`.")
    wait: Rate = Field(description="The thinking contains 'Wait,' (backtracking).")
    accuracy: Rate
    accuracy_by_group: dict[str, Rate] = Field(description="By task and steps (arithmetic) or facts (logic).")
    accuracy_by_operator: dict[str, Rate] = Field(description="Arithmetic, by the first operator.")
    prefix_tokens: dict[str, float] = Field(description="Prefix length in tokens: mean and percentiles.")
    completion_tokens: dict[str, float] = Field(description="Generated tokens: mean and percentiles.")


def _group(metadata: dict, source: str) -> str:
    if source == "arithmetic":
        steps = metadata.get("steps", 0)
        return f"arithmetic, {steps} step{'s' if steps != 1 else ''}"
    if source == "logic":
        return f"logic, {metadata.get('n_entities', 0) - 1} facts"
    return source


def _distribution(values: list[int]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    if not len(array):
        return {}
    p10, p50, p90, p95 = np.percentile(array, [10, 50, 90, 95])
    return {"mean": round(float(array.mean()), 1), "p10": p10, "p50": p50, "p90": p90, "p95": p95, "max": float(array.max())}


def measure_bars(traces_dir: Path) -> OrganismBars:
    """The bars over every trace in `traces_dir`."""
    table = TraceStore(Path(traces_dir)).read([
        "source", "metadata", "completion", "answer_text", "thinking_closed", "correct", "prefix_start", "prefix_end",
        "generation_start", "n_tokens", "thinking_end",
    ]).to_pylist()
    n = len(table)
    closed = [row for row in table if row["thinking_closed"]]
    groups: dict[str, list[bool]] = defaultdict(list)
    operators: dict[str, list[bool]] = defaultdict(list)
    for row in table:
        metadata = json.loads(row["metadata"] or "{}")
        correct = bool(row["correct"])
        groups[_group(metadata, row["source"])].append(correct)
        if row["source"] == "arithmetic":
            operators[OPERATOR_SYMBOLS.get(metadata.get("operator"), "?")].append(correct)
    thinking = [row["completion"].split("</think>")[0] for row in table]
    return OrganismBars(
        traces=n,
        okay_opening=rate(sum(row["completion"].lstrip().startswith("Okay,") for row in table), n),
        thinking_closed=rate(len(closed), n),
        answer_from_answer_segment=rate(sum(extract_answer(row["answer_text"]) is not None for row in closed), n),
        wait=rate(sum("Wait," in text for text in thinking), n),
        accuracy=rate(sum(bool(row["correct"]) for row in table), n),
        accuracy_by_group={name: rate(sum(v), len(v)) for name, v in sorted(groups.items())},
        accuracy_by_operator={name: rate(sum(v), len(v)) for name, v in sorted(operators.items())},
        prefix_tokens=_distribution([row["prefix_end"] - row["prefix_start"] for row in table]),
        completion_tokens=_distribution([row["n_tokens"] - row["generation_start"] for row in table]),
    )
