"""The steering hook: edits the residual stream after a layer, from where a position policy says.

Position policies (where in each sequence the edit acts; token indices of the sequence):

- `first_token`: every generated token, from the first one on;
- `after_prefix`: from the first token after the opening prefix ("Okay, so the user has asked …"),
  decided *during generation* by the very segmentation `collect` uses, run on the partial trace;
- `thinking`: generated tokens up to and including the one that closes the thinking (`</think>`);
- `answer`: the tokens after `</think>`;
- `index:N`: every token from absolute index N.

The hook is a `GenerationObserver`: the generation loop tells it which rows run and at which token
indices, so it acts on exactly the selected positions under the KV cache (and, without a cache,
on the same positions recomputed each step).

Modes: `add` (+ s·d), `clamp` (set the feature's activation to s), `scale` (multiply it by s). A
feature's direction is its decoder row in model units; `add` strengths are in units of the
feature's typical maximum activation unless absolute.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from thinklens.data.segments import PrefixConfig, segment_trace
from thinklens.errors import ThinklensError
from thinklens.models.formats import ReasoningFormat
from thinklens.models.layers import block, resolve_layer
from thinklens.sae.sae import Sae

POLICIES = ("first_token", "after_prefix", "thinking", "answer")
NEVER = math.inf


MAX_STRENGTH = 1000.0  # |strength| beyond this is a typo (1e30), not an experiment: refused


class FeatureEdit(BaseModel):
    """One feature (or raw direction) and how strongly to push it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    feature: int | None = Field(default=None, ge=0, description="SAE feature id (its decoder row is the direction).")
    direction: tuple[float, ...] | None = Field(default=None, description="A raw direction in model units instead.")
    strength: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH,
                            description="Added amount (add), target activation (clamp) or factor (scale).")
    mode: Literal["add", "clamp", "scale"] = Field(default="add", description="add, clamp or scale.")


class SteeringSpec(BaseModel):
    """What to steer, how hard, and from where."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    edits: tuple[FeatureEdit, ...] = Field(description="Features or directions to push.")
    policy: str = Field(default="after_prefix", description="first_token, after_prefix, thinking, answer or index:N.")
    absolute: bool = Field(default=False, description="Strengths are raw activations, not × the feature's typical max.")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        return check_policy(policy)


def check_policy(policy: str) -> str:
    """`policy` if it names a position policy; a ValueError naming the valid ones otherwise."""
    if policy in POLICIES or (policy.startswith("index:") and policy[6:].isdigit()):
        return policy
    raise ValueError(f"unknown position policy '{policy}': use {', '.join(POLICIES)} or index:N")


class SteeringHook:
    """Applies a `SteeringSpec` at one layer; observes generation to know positions per row."""

    def __init__(
        self,
        spec: SteeringSpec,
        sae: Sae | None,
        layer: int,
        typical_max: dict[int, float] | None,
        tokenizer: Any,
        fmt: ReasoningFormat,
        prefix: PrefixConfig,
        prompts: Sequence[Sequence[int]],
    ) -> None:
        self.spec, self.sae, self.layer = spec, sae, layer
        self.tokenizer, self.fmt, self.prefix = tokenizer, fmt, prefix
        self.ids = [list(prompt) for prompt in prompts]  # prompt + generated so far, per row
        self.generation_start = [len(prompt) for prompt in prompts]
        self.start = [self._initial_start(row) for row in range(len(prompts))]
        self.stop = [NEVER] * len(prompts)
        self.acted: list[set[int]] = [set() for _ in prompts]  # positions edited, per row (tests, reports)
        self._rows = torch.arange(len(prompts))
        self._positions = torch.zeros(len(prompts), 0, dtype=torch.long)
        self._additive, self._feature_edits = self._prepare(typical_max or {})

    # ------------------------------------------------------------------ setup
    def _prepare(self, typical_max: dict[int, float]) -> tuple[torch.Tensor | None, list[tuple[int, FeatureEdit]]]:
        """The constant added vector (add mode) and the per-token feature edits (clamp, scale)."""
        additive = None
        per_token = []
        for edit in self.spec.edits:
            if edit.direction is not None:
                vector = torch.tensor(edit.direction, dtype=torch.float32) * edit.strength
            elif edit.feature is None:
                raise ThinklensError("a steering edit needs a feature or a direction")
            elif self.sae is None:
                raise ThinklensError("steering a feature needs the SAE: pass it, or give a raw direction")
            elif not 0 <= edit.feature < self.sae.config.d_sae:
                raise ThinklensError(f"feature {edit.feature} does not exist: the SAE has features 0..{self.sae.config.d_sae - 1}")
            elif edit.mode != "add":
                per_token.append((edit.feature, edit))
                continue
            else:
                unit = 1.0 if self.spec.absolute else typical_max.get(edit.feature, 0.0)
                if unit <= 0:
                    raise ThinklensError(
                        f"feature {edit.feature} never fired in the feature database, so its typical maximum is unknown: "
                        "give --absolute strengths or another feature"
                    )
                vector = self._direction(edit.feature).cpu() * edit.strength * unit  # with raw directions: on CPU
            additive = vector if additive is None else additive + vector
        return additive, per_token

    def _direction(self, feature: int) -> torch.Tensor:
        """What one unit of the feature's activation adds to the residual stream (model units)."""
        return (self.sae.W_dec[feature] / self.sae.config.input_scale).detach().float()

    def _initial_start(self, row: int) -> float:
        policy = self.spec.policy
        if policy.startswith("index:"):
            return int(policy[6:])
        if policy in ("first_token", "thinking"):
            return self.generation_start[row]
        return self._decide(row)  # after_prefix / answer: maybe already decidable (forced opening, imported)

    # ------------------------------------------------------------------ GenerationObserver
    def before_forward(self, rows: torch.Tensor, positions: torch.Tensor) -> None:
        self._rows, self._positions = rows.cpu(), positions.cpu()

    def after_tokens(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            self.ids[row].append(token)
            if self.start[row] == NEVER:
                self.start[row] = self._decide(row)
            if self.spec.policy == "thinking" and self.stop[row] == NEVER and self._closed(row):
                self.stop[row] = len(self.ids[row])  # the token that closed the thinking is still steered

    def _decide(self, row: int) -> float:
        """Where after_prefix / answer steering starts for `row`, or NEVER while it cannot be known yet."""
        ids = self.ids[row]
        if len(ids) == self.generation_start[row] and self.spec.policy == "answer":
            return NEVER
        segments = segment_trace(self.tokenizer, ids, self.generation_start[row], self.fmt, self.prefix).segments
        if self.spec.policy == "answer":
            return segments.thinking_end if segments.thinking_closed else NEVER
        if not segments.has_thinking:
            return NEVER
        n = len(ids)
        if segments.prefix_truncated or (segments.prefix_matched and segments.prefix_end < n):
            return segments.prefix_end
        if not segments.prefix_matched and self._first_word_complete(row, segments.prefix_start):
            return segments.prefix_start  # no prefix: steering starts with the thinking
        return NEVER

    def _first_word_complete(self, row: int, prefix_start: int) -> bool:
        text = self.tokenizer.decode(self.ids[row][prefix_start:]).lstrip()
        return any(character.isspace() for character in text)

    def _closed(self, row: int) -> bool:
        tail = self.tokenizer.decode(self.ids[row][-8:])
        return self.fmt.close_tag in tail

    # ------------------------------------------------------------------ the edit
    def selected(self) -> torch.Tensor:
        """(n_active, seq) mask of the current forward's positions that the policy selects."""
        start = torch.tensor([self.start[row] for row in self._rows.tolist()], dtype=torch.float64)
        stop = torch.tensor([self.stop[row] for row in self._rows.tolist()], dtype=torch.float64)
        positions = self._positions.double()
        return (positions >= start[:, None]) & (positions < stop[:, None]) & (positions >= 0)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.selected().to(hidden.device)  # (n_active, seq)
        if not bool(mask.any()):
            return hidden
        for slot, row in enumerate(self._rows.tolist()):
            self.acted[row].update(self._positions[slot][mask[slot].cpu()].tolist())
        edited = hidden.clone()
        if self._additive is not None:
            edited[mask] += self._additive.to(hidden.device, hidden.dtype)
        if self._feature_edits:
            selected = edited[mask].float()  # (n_selected, d_model)
            acts = self.sae.encode(selected.to(self.sae.device), batch_dependent=False).dense().to(selected.device)
            for feature, edit in self._feature_edits:
                current = acts[:, feature]
                target = torch.full_like(current, edit.strength) if edit.mode == "clamp" else current * edit.strength
                selected = selected + (target - current)[:, None] * self._direction(feature).to(selected.device)
            edited[mask] = selected.to(hidden.dtype)
        return edited


@contextmanager
def steering(model: nn.Module, hook: SteeringHook) -> Iterator[SteeringHook]:
    """Install `hook` on its layer for the duration of the block (removed even after an exception)."""
    def forward_hook(_module: nn.Module, _inputs: object, output: object) -> object:
        if isinstance(output, tuple):
            return (hook(output[0]), *output[1:])
        return hook(output)

    handle = block(model, resolve_layer(model, hook.layer)).register_forward_hook(forward_hook)
    try:
        yield hook
    finally:
        handle.remove()
