"""The operator swap (the study's steering example 1): push a ÷ problem's thinking with the
multiplication feature (and a × problem's with the division feature) and count the answers that
equal the *swapped* operator's result.

Ground truth comes from the prompt set: a single-operation problem records its operands (a, b) and
operator. The swapped result of a ÷ problem is a × b; of a × problem, a ÷ b (its integer part
counts too, as a model that divides in whole numbers would write it). Every (policy, strength)
point steers the same prompts with the same seeds; each sample records whether its answer is the
swapped result, whether it is the original (correct) one, and its coherence: the perplexity of the
generated tokens under the unsteered model, and distinct-2. A point is *broken* by the sweep's
regime rule (perplexity above `broken_ppl_ratio` × the baseline's, or distinct-2 below
`broken_distinct2_ratio` × the baseline's, both as means over the point's samples).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from thinklens.analysis.grid import GridConfig, answer_of, coherence, mark_broken, run_grid, thinking_start
from thinklens.data.answers import answers_match
from thinklens.data.records import PromptRecord
from thinklens.files import atomic_path
from thinklens.models.generate import Sampling
from thinklens.stats import Rate, rate
from thinklens.steering.variant import SteeredOutput, Variant

SWAPPED = {"/": "*", "*": "/"}


class SwapConfig(GridConfig):
    """Settings of the operator-swap experiment."""

    prompts: int = Field(default=16, ge=1, description="Single-operation word problems per operator (÷ and ×).")
    max_new_tokens: int = Field(default=160, ge=8, description="Generated tokens per sample.")
    steer_with: Literal["feature", "direction"] = Field(
        default="feature", description="Steer with the other operator's SAE feature, or along the contrast's "
        "difference-of-means direction (strengths then multiply that direction, in model units).")


@dataclass
class SwapPoint:
    """One (policy, strength) of the sweep, over both operators' prompts."""

    policy: str
    strength: float
    swapped: Rate
    correct: Rate
    perplexity: float  # mean over samples
    distinct2: float
    broken: bool = False
    operation_swapped: Rate | None = None  # the thinking's first named operation is the other operator


    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "strength": self.strength, "swapped": self.swapped.model_dump(),
                "correct": self.correct.model_dump(), "perplexity": self.perplexity, "distinct2": self.distinct2,
                "broken": self.broken,
                "operation_swapped": self.operation_swapped.model_dump() if self.operation_swapped else None}


_OPERATION = re.compile(r"\b(divid|split|shar|multipl|times)\w*|([×÷*/])", re.IGNORECASE)
_OPERATION_OF = {"divid": "/", "split": "/", "shar": "/", "÷": "/", "/": "/", "multipl": "*", "times": "*", "×": "*",
                 "*": "*"}


def operation_named(thinking: str) -> str | None:
    """The operator of the first operation the thinking names ("I divide 99 by 3", "11 × 3"), or None."""
    match = _OPERATION.search(thinking)
    if match is None:
        return None
    return _OPERATION_OF[(match.group(1) or match.group(2)).lower()]


def swapped_answers(record: PromptRecord) -> list[str] | None:
    """The answers that mean the operator was swapped, from the problem's operands; None if it has none."""
    operator, operands = record.metadata.get("operator"), record.metadata.get("operands")
    if operator not in SWAPPED or not operands or len(operands) != 2 or record.metadata.get("steps", 1) != 1:
        return None
    a, b = operands
    if operator == "/":
        return [str(a * b)]
    return [str(a / b), str(a // b)] if b else None


def is_swapped(answer: str | None, record: PromptRecord) -> bool:
    """Whether `answer` is the swapped operator's result for `record` (a hand-checkable rule)."""
    return any(answers_match(answer, swapped) for swapped in swapped_answers(record) or [])


def swap_prompts(records: list[PromptRecord], per_operator: int) -> dict[str, list[PromptRecord]]:
    """The first `per_operator` single-operation ÷ and × *word* problems (whose swapped result is known).

    Word problems only: an expression ("what is 154 ÷ 11?") states its operator in the prompt, which
    no steering of the response can change; a word problem ("shares them equally among 11 friends")
    leaves the operation to the model's reasoning, which is what the study steered."""
    chosen: dict[str, list[PromptRecord]] = {"/": [], "*": []}
    for record in records:
        operator = record.metadata.get("operator")
        if (operator in chosen and len(chosen[operator]) < per_operator and record.metadata.get("kind") == "word"
                and swapped_answers(record)):
            chosen[operator].append(record)
    return chosen


def run_swap(config: SwapConfig, variant: Variant, prompts: dict[str, list[PromptRecord]],
             features: dict[str, int], samples_path: Path, show_progress: bool = True,
             direction: torch.Tensor | None = None) -> list[SwapPoint]:
    """Steer each operator's problems towards the *other* operator at every (policy, strength): with that
    operator's feature, or (`config.steer_with == "direction"`) along `direction` = mean(÷) − mean(×)
    in model units (added for × problems, subtracted for ÷ ones); write every sample to `samples_path`
    (JSONL) and return the points, broken ones marked."""
    sampling = Sampling(temperature=config.temperature)

    def measure(policy: str, strength: float) -> list[dict[str, Any]]:
        rows = []
        for operator, records in prompts.items():
            variant.reset()
            if strength and config.steer_with == "direction":
                variant.add_direction(direction if operator == "*" else -direction, strength, policy=policy)
            elif strength:
                variant.set(features[SWAPPED[operator]], strength, policy=policy)
            outputs = variant.generate([r.prompt for r in records], config.max_new_tokens, sampling, seed=config.seed)
            rows += _rows(variant, records, outputs, policy, strength)
        return rows

    grid = run_grid("operator swap", config.policies, config.strengths, measure, show_progress)
    rows = [row for (policy, strength), point_rows in grid.items() if strength or policy == config.policies[0]
            for row in point_rows]  # the baseline's samples once
    points = [_point(policy, strength, point_rows) for (policy, strength), point_rows in grid.items()]
    variant.reset()
    with atomic_path(samples_path) as temp:
        temp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return mark_broken(points, config.thresholds)


def _rows(variant: Variant, records: list[PromptRecord], outputs: list[SteeredOutput], policy: str,
          strength: float) -> list[dict[str, Any]]:
    rows = []
    for record, output, measured in zip(records, outputs, coherence(variant, outputs), strict=True):
        answer = answer_of(variant, output)
        thinking = output.trace.text_of(thinking_start(output), output.trace.segments.thinking_end)
        operation = operation_named(thinking)  # after the prefix: not the restated problem
        rows.append({"operation": operation, "operation_swapped": operation == SWAPPED[record.metadata["operator"]],
                     "policy": policy, "strength": strength, "prompt_id": record.prompt_id,
                     "operator": record.metadata["operator"], "answer": answer, "swapped": is_swapped(answer, record),
                     "correct": bool(answers_match(answer, record.answer)), **measured,
                     "output": output.completion})
    return rows


def _point(policy: str, strength: float, rows: list[dict[str, Any]]) -> SwapPoint:
    finite = [row["perplexity"] for row in rows if math.isfinite(row["perplexity"])]
    return SwapPoint(policy, strength, rate(sum(row["swapped"] for row in rows), len(rows)),
                     rate(sum(row["correct"] for row in rows), len(rows)),
                     statistics.fmean(finite) if finite else math.nan, statistics.fmean(row["distinct2"] for row in rows),
                     operation_swapped=rate(sum(row["operation_swapped"] for row in rows), len(rows)))


def plot_swap(points: list[SwapPoint], path: Path) -> Path:
    """Share of swapped answers (and of correct ones) against strength, per policy, 95 % intervals; broken
    points hollow."""
    from thinklens.figures import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for policy, colour in zip(sorted({p.policy for p in points}), ("#1f77b4", "#d62728", "#2ca02c"), strict=False):
        mine = sorted((p for p in points if p.policy == policy), key=lambda p: p.strength)
        x = [p.strength for p in mine]
        for metric, style in (("swapped", "-o"), ("correct", ":s")):
            shares = [getattr(p, metric) for p in mine]
            y = [r.share for r in shares]
            axis.errorbar(x, y, yerr=[[v - r.low for v, r in zip(y, shares, strict=True)],
                                      [r.high - v for v, r in zip(y, shares, strict=True)]],
                          fmt=style, color=colour, capsize=3, label=f"{policy}: {metric}", alpha=0.9)
        broken = [p for p in mine if p.broken]
        axis.scatter([p.strength for p in broken], [p.swapped.share for p in broken], s=140, facecolors="none",
                     edgecolors="black", label="broken" if policy == mine[0].policy else None)
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlabel("strength (× the feature's typical maximum)")
    axis.set_ylabel("share of answers")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title("operator swap: the other operator's feature on ÷ and × problems", fontsize=9)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return save_figure(figure, path)
