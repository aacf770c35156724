"""A feature's examples for explaining and scoring, from features.db (and the run's store when it has one).

The stored examples (strongest first: the top activations, then samples from lower quantiles) are
split alternately: even ranks are *shown* to the explainer, odd ranks are *held out* for the scorer,
so both halves span every quantile. Non-activating examples are contexts around other features'
examples: half random, half *hard* (the examples of the features nearest by decoder cosine). Where
the run still holds its activations, every token of a negative is re-encoded and a context where the
feature fires anywhere is not used as one.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass

import torch

from thinklens.features.context import ContextEncoder
from thinklens.features.db import context_tokens
from thinklens.sae.sae import Sae


@dataclass(frozen=True)
class Window:
    """A context: its tokens, and the feature's activation on each (0 where it does not fire)."""

    sequence_id: int
    token_idx: int  # the centre (the activating token, for an activating example)
    tokens: tuple[str, ...]
    activations: tuple[float, ...]

    def text(self, marked: bool = False) -> str:
        """The context as text; `marked`: each run of tokens where the feature fires as <<these tokens>>."""
        parts, inside = [], False
        for token, value in zip(self.tokens, self.activations, strict=True):
            fires = marked and value > 0
            if fires != inside:
                parts.append("<<" if fires else ">>")
                inside = fires
            parts.append(token)
        return "".join(parts) + (">>" if inside else "")

    def fuzzed(self, rng: random.Random) -> Window | None:
        """The same context with as many marks on tokens where the feature does *not* fire (None where it
        fires on every token): the wrong half of the fuzzing test."""
        quiet = [i for i, value in enumerate(self.activations) if value <= 0]
        if not quiet:
            return None
        chosen = set(rng.sample(quiet, min(len(quiet), max(1, sum(value > 0 for value in self.activations)))))
        return Window(self.sequence_id, self.token_idx, self.tokens,
                      tuple(1.0 if i in chosen else 0.0 for i in range(len(self.tokens))))

    @property
    def fires(self) -> bool:
        return any(value > 0 for value in self.activations)


@dataclass(frozen=True)
class FeatureExamples:
    shown: list[Window]
    held_out: list[Window]
    negatives: list[Window]


class ExampleSource:
    """Windows of one run's database, with exact activations where its store and SAE allow."""

    def __init__(self, connection: sqlite3.Connection, window: int, sae: Sae | None = None,
                 context: ContextEncoder | None = None, seed: int = 0) -> None:
        self.connection, self.half = connection, max(1, window // 2)
        self.sae, self.context, self.seed = sae, context, seed
        self._positions = connection.execute(
            "SELECT DISTINCT sequence_id, token_idx FROM activations ORDER BY sequence_id, token_idx").fetchall()

    def examples(self, feature_id: int, shown: int, held_out: int) -> FeatureExamples:
        """Up to `shown` and `held_out` activating windows, and as many negatives as held-out ones."""
        stored = self.connection.execute(
            "SELECT sequence_id, token_idx FROM activations WHERE feature_id = ? ORDER BY strength DESC, "
            "sequence_id, token_idx", (feature_id,)).fetchall()
        shown_at, held_at = stored[0::2][:shown], stored[1::2][:held_out]
        windows = self._windows(feature_id, shown_at + held_at)
        shown_windows, held_windows = windows[: len(shown_at)], windows[len(shown_at):]
        return FeatureExamples(shown_windows, held_windows, self._negatives(feature_id, len(held_windows),
                                                                            set(stored)))

    def _windows(self, feature_id: int, centres: list[tuple[int, int]]) -> list[Window]:
        exact = self.context.windows(feature_id, [(s, t - self.half, t + self.half) for s, t in centres]) \
            if self.context is not None else [{} for _ in centres]
        windows = []
        for (sequence_id, token_idx), values in zip(centres, exact, strict=True):
            rows = context_tokens(self.connection, feature_id, sequence_id, token_idx - self.half,
                                  token_idx + self.half)
            windows.append(Window(sequence_id, token_idx, tuple(text for _, text, _, _ in rows),
                                  tuple(values.get(idx, stored) if values else stored for idx, _, _, stored in rows)))
        return windows

    def _negatives(self, feature_id: int, n: int, own: set[tuple[int, int]]) -> list[Window]:
        rng = random.Random(self.seed * 1_000_003 + feature_id)
        hard = []
        if self.sae is not None:
            with torch.no_grad():
                directions = torch.nn.functional.normalize(self.sae.W_dec.detach().float(), dim=-1)
                cosine = directions @ directions[feature_id]
                cosine[feature_id] = -2
                nearest = cosine.topk(min(3, len(cosine) - 1)).indices.tolist()
            marks = ",".join("?" * len(nearest))
            hard = self.connection.execute(
                f"SELECT sequence_id, token_idx FROM activations WHERE feature_id IN ({marks}) ORDER BY strength DESC",
                nearest).fetchall()
        pool = [p for p in hard if p not in own][: (n + 1) // 2]
        candidates = rng.sample(self._positions, min(len(self._positions), 8 * n + 8))
        pool += [p for p in candidates if p not in own and p not in pool]
        negatives = []
        for window in self._windows(feature_id, pool[: 4 * n + 4]):
            if not window.fires:  # exact where the store allows: a context where the feature fires is no negative
                negatives.append(window)
            if len(negatives) == n:
                break
        return negatives
