"""The (policy, strength) grid of a steering experiment, and the coherence of what it generated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinklens.data.answers import extract_answer, visible_text
from thinklens.progress import progress_bar
from thinklens.steering.engine import check_policy
from thinklens.steering.metrics import distinct_2
from thinklens.steering.regimes import RegimeThresholds
from thinklens.steering.sweep import strengths_from_text
from thinklens.steering.variant import SteeredOutput, Variant

Rows = list[dict[str, Any]]
P = TypeVar("P")  # a point of an experiment: .strength, .perplexity, .distinct2, .broken


class GridConfig(BaseModel):
    """What every steering experiment shares: its (policy, strength) grid, sampling, and when a point is broken."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    strengths: tuple[float, ...] = Field(
        default=(0.0, 1.0, 2.0, 4.0, 8.0), description="Strengths, in units of the feature's typical maximum (0: none).")
    policies: tuple[str, ...] = Field(default=("first_token", "after_prefix"), description="Position policies compared.")
    temperature: float = Field(default=0.6, gt=0, description="Sampling temperature.")
    seed: int = Field(default=0, description="Base seed (the same at every strength).")
    thresholds: RegimeThresholds = Field(default_factory=RegimeThresholds, description="When a point is broken.")

    @field_validator("strengths", mode="before")
    @classmethod
    def _strengths_text(cls, value: Any) -> Any:
        return strengths_from_text(value)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_policy(policy) for policy in value)


def run_grid(label: str, policies: tuple[str, ...], strengths: tuple[float, ...],
             measure: Callable[[str, float], Rows], show_progress: bool = True) -> dict[tuple[str, float], Rows]:
    """`measure(policy, strength)` at every point of the grid (strength 0 added), in policy then strength
    order. The unsteered point does not depend on the policy: it is measured once and its rows are
    copied, relabelled, to the other policies."""
    ordered = sorted(set(strengths) | {0.0})
    points: dict[tuple[str, float], Rows] = {}
    baseline: Rows | None = None
    with progress_bar(label, total=len(policies) * len(ordered), enabled=show_progress) as bar:
        for policy in policies:
            for strength in ordered:
                if strength == 0.0 and baseline is not None:
                    rows = [{**row, "policy": policy} for row in baseline]
                else:
                    rows = measure(policy, strength)
                    baseline = rows if strength == 0.0 else baseline
                points[policy, strength] = rows
                bar.advance(1, tokens=sum(row.get("generated_tokens", 0) for row in rows))
    return points


def coherence(variant: Variant, outputs: list[SteeredOutput]) -> list[dict[str, float | int]]:
    """Per output: the perplexity of its generated tokens under the unsteered model, distinct-2 and
    the number of generated tokens (what the regime rule reads)."""
    return [{"perplexity": perplexity, "distinct2": distinct_2(output.token_ids[output.generation_start:]),
             "generated_tokens": len(output.token_ids) - output.generation_start}
            for output, (perplexity, _) in zip(outputs, variant.readouts(outputs), strict=True)]


def answer_of(variant: Variant, output: SteeredOutput) -> str | None:
    """The final answer of a generated trace: from its answer segment when the thinking closed, else from
    its visible text."""
    segments = output.trace.segments
    text = output.trace.text_of(segments.thinking_end, segments.n_tokens) if segments.thinking_closed \
        else visible_text(variant.loaded.tokenizer, output.completion)
    return extract_answer(text)


def thinking_start(output: SteeredOutput) -> int:
    """Where the reasoning proper starts: after the opening prefix when it matched, else where generation did."""
    segments = output.trace.segments
    return segments.prefix_end if segments.prefix_matched else output.generation_start


def mark_broken(points: list[P], thresholds: RegimeThresholds) -> list[P]:
    """Mark the points whose coherence collapsed against the baseline (the sweep's regime rule): mean
    perplexity above `broken_ppl_ratio` × the baseline's, or mean distinct-2 below `broken_distinct2_ratio` ×."""
    baseline = next((p for p in points if p.strength == 0.0), None)
    for point in points:
        if baseline is None or point.strength == 0.0:
            continue
        point.broken = (point.perplexity > thresholds.broken_ppl_ratio * baseline.perplexity
                        or point.distinct2 < thresholds.broken_distinct2_ratio * baseline.distinct2)
    return points
