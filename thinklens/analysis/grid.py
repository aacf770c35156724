"""The (policy, strength) grid of a steering experiment, and the coherence of what it generated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinklens.data.answers import extract_answer, visible_text
from thinklens.progress import progress_bar
from thinklens.steering.metrics import distinct_2
from thinklens.steering.variant import SteeredOutput, Variant

Rows = list[dict[str, Any]]


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
