"""Per-sample behaviour and coherence measures of a steered generation."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from thinklens.activations.capture import capture_resid_post
from thinklens.data.answers import answers_match, extract_answer, visible_text
from thinklens.models.loader import LoadedModel
from thinklens.sae.sae import Sae
from thinklens.steering.variant import SteeredOutput

OPERATORS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}
_EXPRESSION = re.compile(r"\d+(?:\.\d+)?\s*([+\-−*×x/÷])\s*\d")


@dataclass
class SampleMetrics:
    thinking_tokens: int
    hit_cap: bool
    backtracking: dict[str, int]
    correct: bool | None
    operator: str | None  # first operator the completion computes with
    readback: float  # mean activation of the steered feature on the generated tokens, unsteered model
    regex_count: int
    perplexity: float  # of the generated tokens under the unsteered model
    distinct2: float
    finished_with_answer: bool


def first_operator(text: str) -> str | None:
    """The operator of the first 'a op b' the text computes, normalised to + - * /."""
    match = _EXPRESSION.search(text)
    return OPERATORS[match.group(1)] if match else None


def distinct_2(token_ids: Sequence[int]) -> float:
    """Unique bigrams / bigrams (1.0 for fewer than two tokens): repetition lowers it."""
    bigrams = list(zip(token_ids, token_ids[1:], strict=False))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


@torch.no_grad()
def unsteered_readout(loaded: LoadedModel, sae: Sae | None, feature: int | None, layer: int,
                      output: SteeredOutput) -> tuple[float, float]:
    """(perplexity of the generated tokens, mean feature activation on them), both with the model unsteered."""
    ids = torch.tensor([output.token_ids], device=loaded.device)
    start = output.generation_start
    if len(output.token_ids) <= start:
        return math.nan, math.nan
    with capture_resid_post(loaded.model, [layer], stop_early=False) as captured:
        logits = loaded.model(ids).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[0, start:])
    readback = math.nan
    if sae is not None and feature is not None:
        hidden = captured[layer][0, start:].float().to(sae.device)
        readback = float(sae.encode(hidden, batch_dependent=False).dense()[:, feature].mean())
    return float(nll.exp()), readback


def unsteered_readouts(loaded: LoadedModel, sae: Sae | None, feature: int | None, layer: int,
                       outputs: Sequence[SteeredOutput]) -> list[tuple[float, float]]:
    """`unsteered_readout` of every output, batched (`thinklens.steering.readout.Readouts`, used once:
    a sweep keeps one to reuse the prompts' pass)."""
    from thinklens.steering.readout import Readouts

    return Readouts(loaded, layer, keep=0)(outputs, sae, feature)


def measure(output: SteeredOutput, loaded: LoadedModel, sae: Sae | None, feature: int | None, layer: int,
            reference: str | None, backtrack_words: Sequence[str], regex: re.Pattern[str] | None,
            readout: tuple[float, float] | None = None) -> SampleMetrics:
    """Every measure of one sample; `readout` is its (perplexity, read-back) when already computed for a
    batch (`unsteered_readouts`), else it is computed here."""
    segments = output.trace.segments
    completion = output.completion
    visible = visible_text(loaded.tokenizer, completion)
    answer_text = output.trace.text_of(segments.thinking_end, segments.n_tokens) if segments.thinking_closed else ""
    answer = extract_answer(answer_text or visible)
    perplexity, readback = readout or unsteered_readout(loaded, sae, feature, layer, output)
    thinking_end = segments.thinking_end if segments.has_thinking else output.generation_start
    return SampleMetrics(
        thinking_tokens=max(0, thinking_end - output.generation_start),
        hit_cap=output.finish_reason == "length",
        backtracking={word: len(re.findall(rf"\b{re.escape(word)}\b", visible)) for word in backtrack_words},
        correct=answers_match(answer, reference),
        operator=first_operator(visible),
        readback=readback,
        regex_count=len(regex.findall(visible)) if regex else 0,
        perplexity=perplexity,
        distinct2=distinct_2(output.token_ids[output.generation_start :]),
        finished_with_answer=output.finish_reason == "eos" and answer is not None,
    )
