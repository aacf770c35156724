"""Shorter thinking (the study's steering example 2): push the reasoning with the feature (or the
direction) that marks the end of thinking, and count the thinking tokens.

The end-of-thinking feature comes from a token contrast: the thinking tokens just before the closing
tag (`next_token` = the tag's first token) against the other thinking tokens; the feature that best
tells them apart on held-out traces is steered. Every (policy, strength) point steers the same
prompts with the same seeds. Per sample: the thinking tokens (from the end of the opening prefix, or
from the start of generation when no prefix matched, to the closing tag; a trace that never closes
counts all its generated tokens: it is censored at `max_new_tokens`), whether it closed, whether the
answer is correct, and its coherence (perplexity under the unsteered model and distinct-2). A point
is broken by the same regime rule as the operator swap's.

The effect at a point is the relative change of mean thinking tokens against the unsteered point,
mean(steered) / mean(unsteered) − 1, with a 95 % bootstrap interval that resamples prompts (paired:
a prompt's steered and unsteered samples share their seed).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from thinklens.analysis.grid import GridConfig, answer_of, coherence, mark_broken, run_grid, thinking_start
from thinklens.data.answers import answers_match
from thinklens.data.records import PromptRecord
from thinklens.features.db import open_read_only
from thinklens.files import atomic_path
from thinklens.models.generate import Sampling
from thinklens.stats import Rate, rate
from thinklens.steering.variant import Variant


class BrevityConfig(GridConfig):
    """Settings of the thinking-length experiment."""

    prompts: int = Field(default=32, ge=2, description="Prompts steered at each point (held out from the run's own).")
    max_new_tokens: int = Field(default=256, ge=8, description="Generated tokens per sample (thinking is censored here).")
    bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples of the prompts.")
    end_token: str | None = Field(
        default=None, description="Text of the closing tag's first token (default: read from the run's traces).")
    steer_with: Literal["feature", "direction"] = Field(
        default="feature", description="Steer with the end-of-thinking SAE feature, or along the contrast's "
        "difference-of-means direction (strengths then multiply that direction, in model units).")


@dataclass
class BrevityPoint:
    """One (policy, strength): the thinking lengths of its samples, in prompt order, and their summary."""

    policy: str
    strength: float
    thinking: list[int]
    closed: Rate
    correct: Rate
    perplexity: float
    distinct2: float
    broken: bool = False

    @property
    def mean_thinking(self) -> float:
        return statistics.fmean(self.thinking)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "strength": self.strength, "thinking": self.thinking,
                "mean_thinking": self.mean_thinking, "closed": self.closed.model_dump(),
                "correct": self.correct.model_dump(), "perplexity": self.perplexity, "distinct2": self.distinct2,
                "broken": self.broken}


def closing_token(db_path: Path) -> str | None:
    """The text of the thinking's closing tag's first token, as the run's traces spell it: the commonest
    last thinking token that holds a '<' (R1's '</think>' is one token; SmolLM2's tokenizer starts it
    with '</'). None when no trace closes its thinking."""
    connection = open_read_only(db_path)
    try:
        rows = connection.execute(
            "SELECT v.decoded_token FROM token_ids t JOIN vocab v ON v.token = t.token "
            "JOIN (SELECT sequence_id, MAX(token_idx) AS last FROM token_ids t2 JOIN vocab v2 ON v2.token = t2.token "
            "      WHERE t2.segment = 2 AND instr(v2.decoded_token, '<') > 0 GROUP BY sequence_id) m "
            "  ON m.sequence_id = t.sequence_id AND m.last = t.token_idx").fetchall()
    finally:
        connection.close()
    counts = Counter(text.strip() for (text,) in rows)
    return counts.most_common(1)[0][0] if counts else None


def run_brevity(config: BrevityConfig, variant: Variant, records: list[PromptRecord], feature: int,
                samples_path: Path, show_progress: bool = True,
                direction: torch.Tensor | None = None) -> list[BrevityPoint]:
    """Steer `records` with the end-of-thinking `feature` (or along `direction`) at every (policy,
    strength); write every sample to `samples_path` (JSONL) and return the points, broken ones marked."""
    sampling = Sampling(temperature=config.temperature)

    def measure(policy: str, strength: float) -> list[dict[str, Any]]:
        variant.reset()
        if strength and config.steer_with == "direction":
            variant.add_direction(direction, strength, policy=policy)
        elif strength:
            variant.set(feature, strength, policy=policy)
        outputs = variant.generate([r.prompt for r in records], config.max_new_tokens, sampling, seed=config.seed)
        rows = []
        for record, output, measured in zip(records, outputs, coherence(variant, outputs), strict=True):
            segments = output.trace.segments
            end = segments.thinking_end if segments.thinking_closed else len(output.token_ids)
            answer = answer_of(variant, output)
            rows.append({"policy": policy, "strength": strength, "prompt_id": record.prompt_id,
                         "thinking_tokens": end - thinking_start(output), "closed": segments.thinking_closed,
                         "answer": answer, "correct": bool(answers_match(answer, record.answer)), **measured,
                         "output": output.completion})
        return rows

    grid = run_grid("thinking length", config.policies, config.strengths, measure, show_progress)
    variant.reset()
    with atomic_path(samples_path) as temp:
        temp.write_text("".join(json.dumps(row) + "\n" for (policy, strength), rows in grid.items()
                                if strength or policy == config.policies[0] for row in rows))
    points = [_point(policy, strength, rows) for (policy, strength), rows in grid.items()]
    return mark_broken(points, config.thresholds)


def _point(policy: str, strength: float, rows: list[dict[str, Any]]) -> BrevityPoint:
    finite = [row["perplexity"] for row in rows if math.isfinite(row["perplexity"])]
    return BrevityPoint(policy, strength, [row["thinking_tokens"] for row in rows],
                        rate(sum(row["closed"] for row in rows), len(rows)),
                        rate(sum(row["correct"] for row in rows), len(rows)),
                        statistics.fmean(finite) if finite else math.nan,
                        statistics.fmean(row["distinct2"] for row in rows))


def plot_brevity(points: list[BrevityPoint], path: Path) -> Path:
    """Mean thinking tokens (and the share correct) against strength, per policy; broken points hollow."""
    from thinklens.figures import pyplot, save_figure

    plt = pyplot()
    figure, (length_axis, correct_axis) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for policy, colour in zip(sorted({p.policy for p in points}), ("#1f77b4", "#d62728", "#2ca02c"), strict=False):
        mine = sorted((p for p in points if p.policy == policy), key=lambda p: p.strength)
        x = [p.strength for p in mine]
        spread = [1.96 * statistics.stdev(p.thinking) / math.sqrt(len(p.thinking)) if len(p.thinking) > 1 else 0
                  for p in mine]
        length_axis.errorbar(x, [p.mean_thinking for p in mine], yerr=spread, fmt="-o", color=colour, capsize=3,
                             label=policy)
        correct_axis.errorbar(x, [p.correct.share for p in mine],
                              yerr=[[p.correct.share - p.correct.low for p in mine],
                                    [p.correct.high - p.correct.share for p in mine]],
                              fmt=":s", color=colour, capsize=3, label=policy)
        broken = [p for p in mine if p.broken]
        length_axis.scatter([p.strength for p in broken], [p.mean_thinking for p in broken], s=140,
                            facecolors="none", edgecolors="black")
    for axis, label in ((length_axis, "mean thinking tokens"), (correct_axis, "share correct")):
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xlabel("strength (× the feature's typical maximum)")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    correct_axis.set_ylim(-0.05, 1.05)
    figure.suptitle("thinking length: the end-of-thinking feature steered (hollow: broken)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
