"""Batched generation with the KV cache that drops finished sequences as it goes.

`transformers`' `generate` keeps every row of a batch until the longest one finishes, so one trace
that runs to the token cap makes the whole batch pay for it. Reasoning traces vary wildly in length,
so here a row leaves the batch (and the KV cache) the step it emits EOS: later steps cost what the
rows still running cost. The loop is also where steering hooks will see each generated position.

Sampling is seeded through a private `torch.Generator`: nothing global is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    """Greedy decoding, or temperature + nucleus (top-p) sampling."""

    greedy: bool = False
    temperature: float = 0.6
    top_p: float = 0.95


class GenerationObserver(Protocol):
    """Told, before each forward pass, which rows run and the token index of every input position
    (−1 for padding); and, after each step, the tokens each row chose. Steering hooks use this to
    know where in each sequence they act under the KV cache."""

    def before_forward(self, rows: torch.Tensor, positions: torch.Tensor) -> None: ...

    def after_tokens(self, rows: torch.Tensor, tokens: torch.Tensor) -> None: ...


@dataclass
class Generated:
    """One row's completion: its token ids and why it stopped ('eos' or 'length')."""

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float]  # the model's log-probability (temperature 1) of each chosen token
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per step, when asked: the k likeliest


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from last-position logits (n_rows, vocab)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set of top tokens whose mass reaches top_p (the first token always stays).
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    picked = torch.multinomial(sorted_probs, num_samples=1, generator=generator)  # (n_rows, 1)
    return order.gather(-1, picked).squeeze(-1)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    sampling: Sampling = Sampling(),
    seed: int = 0,
    observer: GenerationObserver | None = None,
    use_cache: bool = True,
    on_step: Callable[[list[int], list[int]], None] | None = None,
    top_logprobs: int = 0,
) -> list[Generated]:
    """Continue each left-padded row of `input_ids` (batch, width) until EOS or `max_new_tokens`.

    `use_cache=False` recomputes the whole sequence every step (slow; a reference for tests).
    `on_step(rows, tokens)` is told each step's chosen tokens as they come (a server streams them); an
    exception it raises stops the generation. `top_logprobs` > 0 also keeps each step's likeliest tokens
    with their log-probabilities (what OpenAI's `top_logprobs` reports).
    """
    from transformers import DynamicCache

    device = input_ids.device
    generator = None if sampling.greedy else torch.Generator(device=device).manual_seed(seed)
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)
    results = [Generated([], "length", []) for _ in range(input_ids.shape[0])]
    rows = torch.arange(input_ids.shape[0], device=device)  # original index of each row still running
    ids, mask = input_ids, attention_mask
    positions = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, -1)  # token index in its sequence; pads −1
    cache = DynamicCache() if use_cache else None
    output = _forward(model, ids, mask, positions, cache, observer, rows, keep_last=True)
    for step in range(max_new_tokens):
        logits = output.logits[:, -1, :]
        tokens = next_tokens(logits, sampling, generator)
        _record(results, rows, logits, tokens, top_logprobs)
        if observer is not None:
            observer.after_tokens(rows, tokens)
        if on_step is not None:
            on_step(rows.tolist(), tokens.tolist())
        done = torch.isin(tokens, eos)
        for row in rows[done].tolist():
            results[row].finish_reason = "eos"
        if done.all() or step == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            if cache is not None:
                cache.batch_select_indices(keep)
            rows, tokens, mask, positions, ids = rows[keep], tokens[keep], mask[keep], positions[keep], ids[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        ids = torch.cat([ids, tokens[:, None]], dim=-1)
        if cache is not None:  # only the new token goes through the model
            output = _forward(model, tokens[:, None], mask, positions[:, -1:], cache, observer, rows, keep_last=False)
        else:
            output = _forward(model, ids, mask, positions, None, observer, rows, keep_last=True)
    return results


def _record(results: list[Generated], rows: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor,
            top_logprobs: int) -> None:
    """Append each running row's chosen token, its log-probability and (when asked) the likeliest ones."""
    distribution = torch.log_softmax(logits.float(), dim=-1)
    chosen = distribution.gather(-1, tokens[:, None]).squeeze(-1)
    for row, token, logprob in zip(rows.tolist(), tokens.tolist(), chosen.tolist(), strict=True):
        results[row].token_ids.append(token)
        results[row].logprobs.append(logprob)
    if top_logprobs > 0:
        best = distribution.topk(min(top_logprobs, distribution.shape[-1]), dim=-1)
        for row, values, indices in zip(rows.tolist(), best.values.tolist(), best.indices.tolist(), strict=True):
            results[row].top_logprobs.append(list(zip(indices, values, strict=True)))


def _forward(model, input_ids, mask, positions, cache, observer, rows, keep_last: bool):
    if observer is not None:
        observer.before_forward(rows, positions)
    return model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions.clamp(min=0),
        past_key_values=cache,
        use_cache=cache is not None,
        **({"logits_to_keep": 1} if keep_last else {}),
    )
