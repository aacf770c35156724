"""The unsteered model's view of steered samples: the perplexity of the generated tokens and a feature's
mean activation on them (the read-back), for many samples at once.

Every point of a sweep steers the *same* prompts, and steering never acts on a prompt, so the
unsteered model's pass over the prompts is the same at every point. `Readouts` runs it once per
prompt batch — left-padded, as generation does — and keeps its KV cache (and the last prompt
position's logits, which predict the first generated token); each call then runs only the generated
tokens, right-padded, on top of that cache, and crops the cache back. The prompt tokens, a third to
a half of a reasoning sample, are not recomputed, and the unembedding runs only where a generated
token is predicted.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from thinklens.activations.capture import capture_resid_post
from thinklens.models.loader import LoadedModel
from thinklens.sae.sae import Sae
from thinklens.steering.variant import SteeredOutput


@dataclass
class _PromptPass:
    cache: Any  # transformers DynamicCache over the left-padded prompts
    mask: torch.Tensor  # (rows, prompt width) 1 for a prompt token
    lengths: torch.Tensor  # (rows,) prompt tokens per row
    last_logits: torch.Tensor  # (rows, vocab) float32: the prediction of each row's first generated token


class Readouts:
    """(perplexity, read-back) of steered samples under the unsteered model, reusing prompt passes.

    Holds the passes of the last `keep` prompt batches (an experiment alternates a few)."""

    def __init__(self, loaded: LoadedModel, layer: int, keep: int = 2) -> None:
        self.loaded, self.layer, self.keep = loaded, layer, keep
        self._passes: OrderedDict[tuple[tuple[int, ...], ...], _PromptPass] = OrderedDict()

    @torch.no_grad()
    def __call__(self, outputs: Sequence[SteeredOutput], sae: Sae | None = None,
                 feature: int | None = None) -> list[tuple[float, float]]:
        """Per output, in order: the perplexity of its generated tokens and, given an SAE and a feature,
        the feature's mean activation on them (nan without); (nan, nan) for an output with none."""
        if not outputs:
            return []
        prompts = tuple(tuple(o.token_ids[: o.generation_start]) for o in outputs)
        prompt = self._prompt_pass(prompts)
        generated = [o.token_ids[o.generation_start:] for o in outputs]
        width = max(1, max(len(g) for g in generated))
        device = self.loaded.device
        ids = torch.zeros(len(outputs), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(outputs), width, dtype=torch.long, device=device)
        for row, tokens in enumerate(generated):
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
                mask[row, : len(tokens)] = 1
        positions = prompt.lengths[:, None] + torch.arange(width, device=device)[None, :]
        try:
            with capture_resid_post(self.loaded.model, [self.layer], stop_early=False) as captured:
                logits = self.loaded.model(input_ids=ids, attention_mask=torch.cat([prompt.mask, mask], dim=1),
                                           position_ids=positions, past_key_values=prompt.cache, use_cache=True).logits
        finally:
            extra = prompt.cache.get_seq_length() - prompt.mask.shape[1]
            if extra > 0:
                prompt.cache.crop(-extra)  # back to the prompts alone, for the next call
        readouts = []
        for row, tokens in enumerate(generated):
            if not tokens:
                readouts.append((math.nan, math.nan))
                continue
            n = len(tokens)
            predicted = torch.cat([prompt.last_logits[row : row + 1], logits[row, : n - 1].float()])
            nll = torch.nn.functional.cross_entropy(predicted, ids[row, :n])
            readback = math.nan
            if sae is not None and feature is not None:
                hidden = captured[self.layer][row, :n].float().to(sae.device)
                readback = float(sae.encode(hidden, batch_dependent=False).dense()[:, feature].mean())
            readouts.append((float(nll.exp()), readback))
        return readouts

    def _prompt_pass(self, prompts: tuple[tuple[int, ...], ...]) -> _PromptPass:
        from transformers import DynamicCache

        if prompts in self._passes:
            self._passes.move_to_end(prompts)
            return self._passes[prompts]
        device = self.loaded.device
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for row, tokens in enumerate(prompts):  # left-padded: every row's last prompt token is at the end
            ids[row, width - len(tokens):] = torch.tensor(tokens, device=device)
            mask[row, width - len(tokens):] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache()
        output = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                   use_cache=True, logits_to_keep=1)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        made = _PromptPass(cache, mask, lengths, output.logits[:, -1].float())
        self._passes[prompts] = made
        while len(self._passes) > self.keep:
            self._passes.popitem(last=False)
        return made
