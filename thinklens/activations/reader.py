"""Stream a harvested layer back as shuffled mini-batches with bounded memory.

Rows are read in contiguous chunks (cheap on a memory-mapped file), the chunks of all shards in one
seeded random order, poured into a mixing buffer, and served from the buffer in random order: when the
buffer is full, a random half leaves as mini-batches and the rest stays to mix with the next chunks.
Peak memory is the buffer plus one chunk, whatever the size of the store. Seeded and deterministic:
the same seed gives the same batches, epoch after epoch (each epoch reshuffles with its own seed).

Filters: segments to keep, special/chat-template tokens and massive-activation tokens dropped by
default, and a hold-out split by sequence (a sequence is wholly in `train` or in `holdout`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from thinklens.activations.store import ActivationStore, ShardInfo
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError


@dataclass(frozen=True)
class ReaderConfig:
    """What to read and how to shuffle it."""

    layer: int
    batch_size: int = 4096
    buffer_tokens: int = 262_144
    chunk_tokens: int = 1024
    seed: int = 0
    epochs: int = 1
    segments: Sequence[str] = SEGMENT_NAMES
    exclude_special: bool = True
    exclude_massive: bool = True
    split: Literal["all", "train", "holdout"] = "all"
    holdout_fraction: float = 0.05
    drop_last: bool = False


def in_holdout(sequence_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Stable per-sequence split: a sequence is in the hold-out set when its hash falls below `fraction`."""
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(str(int(s)).encode(), digest_size=8).digest(), "little") for s in sequence_ids],
        dtype=np.uint64,
    )
    return keys < np.uint64(fraction * 2.0**64)


class ActivationReader:
    """Iterate (batch_size, d_model) float tensors of one layer, shuffled through a mixing buffer."""

    def __init__(self, directory: Path, config: ReaderConfig) -> None:
        self.store = ActivationStore(directory)
        self.config = config
        unknown = set(config.segments) - set(SEGMENT_NAMES)
        if unknown:
            raise ThinklensError(f"unknown segment(s) {sorted(unknown)}: use {', '.join(SEGMENT_NAMES)}")
        if config.layer not in self.store.layers:
            raise ThinklensError(f"layer {config.layer} was not harvested: the store holds layers {self.store.layers}")
        self._selected = {shard.shard: self._select(shard) for shard in self.store.shards()}

    def _select(self, shard: ShardInfo) -> np.ndarray:
        """Row offsets within the shard that pass the filters."""
        index = self.store.read_index(shard, ["sequence_id", "segment", "special", "massive"]).to_pydict()
        keep = np.isin(np.asarray(index["segment"]), [SEGMENT_NAMES.index(name) for name in self.config.segments])
        if self.config.exclude_special:
            keep &= ~np.asarray(index["special"], dtype=bool)
        if self.config.exclude_massive:
            keep &= ~np.asarray(index["massive"], dtype=bool)
        if self.config.split != "all":
            sequences = np.asarray(index["sequence_id"])
            unique, inverse = np.unique(sequences, return_inverse=True)
            held = in_holdout(unique, self.config.holdout_fraction)[inverse]
            keep &= held if self.config.split == "holdout" else ~held
        return np.flatnonzero(keep)

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch after filtering."""
        return int(sum(len(rows) for rows in self._selected.values()))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for epoch in range(self.config.epochs):
            yield from self.epoch(epoch)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        """One pass over the filtered rows, shuffled with the seed of (config.seed, epoch)."""
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        d_model = self.store.d_model
        buffer = torch.empty((config.buffer_tokens + config.chunk_tokens, d_model), dtype=torch.float32)
        filled = 0
        for shard, rows in self._chunks(rng):
            chunk = self.store.read_rows(config.layer, shard, rows).float()  # (len(rows), d_model)
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            if filled >= config.buffer_tokens:
                order = torch.from_numpy(rng.permutation(filled))
                leaving = filled // 2 // config.batch_size * config.batch_size or filled
                yield from buffer[order[:leaving]].split(config.batch_size)
                staying = order[leaving:]
                buffer[: len(staying)] = buffer[staying]
                filled = len(staying)
        order = torch.from_numpy(rng.permutation(filled))
        for batch in buffer[order].split(config.batch_size):
            if len(batch) == config.batch_size or not config.drop_last:
                yield batch

    def _chunks(self, rng: np.random.Generator) -> Iterator[tuple[ShardInfo, np.ndarray]]:
        """(shard, row offsets) chunks of all shards in one seeded random order (contiguous rows in a chunk)."""
        chunks = [
            (shard, start)
            for shard in self.store.shards()
            for start in range(0, len(self._selected[shard.shard]), self.config.chunk_tokens)
        ]
        for position in rng.permutation(len(chunks)):
            shard, start = chunks[position]
            yield shard, self._selected[shard.shard][start : start + self.config.chunk_tokens]
