"""`Variant`: a model with steering edits attached, in the spirit of Goodfire's Ember.

    v = Variant(loaded, sae, typical_max=typical_max_activations(db, features))
    v.set(feature=1234, strength=4.0, policy="after_prefix")
    outputs = v.generate(["What is 17 + 25?"], max_new_tokens=256)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thinklens.activations.reader import ActivationReader, ReaderConfig
from thinklens.data.segments import PrefixConfig, SegmentedTrace, segment_trace
from thinklens.errors import ThinklensError
from thinklens.features.db import FeatureDB
from thinklens.models.formats import ReasoningFormat, detect_format, make_format, render_prompt
from thinklens.models.generate import Sampling, generate
from thinklens.models.layers import n_layers
from thinklens.models.loader import LoadedModel, check_fits
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae
from thinklens.steering.engine import FeatureEdit, SteeringHook, SteeringSpec, steering


@dataclass
class SteeredOutput:
    """One generated trace, with where steering acted."""

    token_ids: list[int]
    generation_start: int
    finish_reason: str
    trace: SegmentedTrace
    logprobs: list[float]  # of each generated token under the (steered) model
    acted: list[int] = field(default_factory=list)  # positions the edit changed
    start: float = float("inf")  # first position the policy selected (inf: never)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per generated token, when asked

    @property
    def completion(self) -> str:
        return self.trace.text_of(self.generation_start, len(self.token_ids))


class Variant:
    """A loaded model plus steering edits; `generate` runs with them (or unsteered when none are set)."""

    def __init__(
        self,
        loaded: LoadedModel,
        sae: Sae | None = None,
        typical_max: dict[int, float] | None = None,
        fmt: ReasoningFormat | None = None,
        prefix: PrefixConfig | None = None,
        layer: int | None = None,
    ) -> None:
        self.loaded, self.sae = loaded, sae
        self.typical_max = dict(typical_max or {})
        self.fmt = fmt or make_format(detect_format(loaded.tokenizer))
        self.prefix = prefix or PrefixConfig()
        # Without an SAE, `layer` as given; with one, the SAE's layer by the one rule. When neither names a
        # layer, unsteered generation still works and steering refuses (in `generate`).
        unnamed = sae is None or (layer is None and sae.config.layer is None)
        self.layer = layer if unnamed else self._sae_layer(layer)
        self.edits: list[FeatureEdit] = []
        self.policy = "after_prefix"
        self.absolute = False
        self._readouts: Any = None

    def readouts(self, outputs: Sequence[SteeredOutput], feature: int | None = None) -> list[tuple[float, float]]:
        """(perplexity, read-back of `feature`) of each output under the unsteered model; the prompts' pass
        is kept across calls, so every point of an experiment on the same prompts reuses it."""
        from thinklens.steering.readout import Readouts

        if self._readouts is None:
            self._readouts = Readouts(self.loaded, self.layer)
        return self._readouts(outputs, self.sae if feature is not None else None, feature)

    def _sae_layer(self, layer: int | None) -> int:
        """The SAE's layer by the one rule (`resolve_sae_layer`): `layer` may restate it, not contradict it."""
        return resolve_sae_layer(self.sae.config.layer, range(n_layers(self.loaded.model)), layer,
                                 holder=f"the model {self.loaded.spec.name}",
                                 fix="pass layer= to Variant, or index the SAE with --layer L", harvestable=False)

    def set(self, feature: int, strength: float, policy: str | None = None, mode: str = "add") -> Variant:
        """Push `feature` by `strength` (add), to `strength` (clamp) or × `strength` (scale)."""
        self.edits.append(FeatureEdit(feature=feature, strength=strength, mode=mode))
        self.policy = policy or self.policy
        return self

    def add_direction(self, direction: torch.Tensor, strength: float, policy: str | None = None) -> Variant:
        """Add `strength` × a raw direction (model units), e.g. a contrastive direction."""
        self.edits.append(FeatureEdit(direction=tuple(direction.float().tolist()), strength=strength))
        self.policy = policy or self.policy
        return self

    def reset(self) -> Variant:
        self.edits = []
        return self

    @property
    def spec(self) -> SteeringSpec | None:
        if not self.edits:
            return None
        return SteeringSpec(edits=tuple(self.edits), policy=self.policy, absolute=self.absolute)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        seed: int = 0,
        prefills: Sequence[str] | None = None,
        use_cache: bool = True,
        on_step: Callable[[list[int], list[int]], None] | None = None,
        rendered: bool = False,
        top_logprobs: int = 0,
    ) -> list[SteeredOutput]:
        """Generate a trace per prompt (optionally continuing a `prefills` text after the rendered prompt);
        `on_step(rows, tokens)` sees each step's tokens as they are chosen (`models.generate.generate`).
        `rendered`: the prompts are already the model's exact input text (no chat template applied);
        `top_logprobs`: keep each step's k likeliest tokens with their log-probabilities."""
        tokenizer = self.loaded.tokenizer
        texts = [(prompt if rendered else render_prompt(tokenizer, self.fmt, prompt)) + (prefills[i] if prefills else "")
                 for i, prompt in enumerate(prompts)]
        tokenizer.padding_side = "left"
        encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.loaded.device)
        prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"],
                                                                      strict=True)]
        check_fits(self.loaded, max(len(ids) for ids in prompt_ids) + max_new_tokens, "the prompt with its new tokens",
                   "shorten the prompt or lower --max-new-tokens")
        hook = None
        if self.spec is not None:
            if self.layer is None and self.sae is None:
                raise ThinklensError("steering needs a layer: pass an SAE or layer= to Variant")
            if self.layer is None:
                self.layer = self._sae_layer(None)  # raises: the SAE names no layer
            hook = SteeringHook(self.spec, self.sae, self.layer, self.typical_max, tokenizer, self.fmt, self.prefix,
                                prompt_ids)
        with steering(self.loaded.model, hook) if hook is not None else nullcontext():
            completions = generate(
                self.loaded.model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens,
                self.loaded.eos_token_ids,
                sampling or Sampling(), seed, observer=hook, use_cache=use_cache, on_step=on_step,
                top_logprobs=top_logprobs,
            )
        outputs = []
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completions, strict=True)):
            ids = prompt + completion.token_ids
            trace = segment_trace(tokenizer, ids, len(prompt), self.fmt, self.prefix)
            acted = sorted(hook.acted[row]) if hook else []
            start = hook.start[row] if hook else float("inf")
            outputs.append(SteeredOutput(ids, len(prompt), completion.finish_reason, trace, completion.logprobs, acted,
                                         start, completion.top_logprobs))
        return outputs


def typical_max_activations(db: FeatureDB, features: Sequence[int], top: int = 10) -> dict[int, float]:
    """A feature's typical maximum activation: the mean of its `top` strongest stored activations."""
    result = {}
    for feature in features:
        strengths = [row[0] for row in db.connection.execute(
            "SELECT strength FROM activations WHERE feature_id = ? ORDER BY strength DESC LIMIT ?", (feature, top))]
        result[feature] = sum(strengths) / len(strengths) if strengths else 0.0
    return result


def contrastive_direction(activations_dir: Path, layer: int, segments_a: Sequence[str], segments_b: Sequence[str],
                          max_tokens: int = 200_000) -> torch.Tensor:
    """mean(activations in segments_a) − mean(activations in segments_b), in model units (d_model,)."""
    def mean(segments: Sequence[str]) -> torch.Tensor:
        reader = ActivationReader(activations_dir, ReaderConfig(layer=layer, batch_size=4096, segments=tuple(segments)))
        total, count = None, 0
        for batch in reader:
            total = batch.double().sum(dim=0) if total is None else total + batch.double().sum(dim=0)
            count += len(batch)
            if count >= max_tokens:
                break
        if total is None:
            raise ThinklensError(f"no tokens in segments {list(segments)} of {activations_dir}")
        return total / count

    return (mean(segments_a) - mean(segments_b)).float()

