"""Stream a harvested layer back as shuffled mini-batches with bounded memory.

Rows are read in contiguous chunks (cheap on a memory-mapped file), the chunks of all shards in one
seeded random order, poured into a mixing buffer, and served from the buffer in random order: when the
buffer is full, a random half leaves as mini-batches and the rest stays to mix with the next chunks.
Peak memory is the buffer plus one chunk, whatever the size of the store. Seeded and deterministic:
the same seed gives the same batches, epoch after epoch (each epoch reshuffles with its own seed).

Filters: segments to keep, special/chat-template tokens and massive-activation tokens dropped by
default, and a hold-out split by sequence (a sequence is wholly in `train` or in `holdout`).

Data-parallel ranks (`rank` of `world`) each get only their contiguous share of every batch: the
shuffle depends on row counts only, never on values, so a rank runs it on row ids (16 B a row, not
d_model floats) and reads just its share's rows. The shares of all ranks, concatenated, are the batch
one process reads, bit for bit.
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
    rank: int = 0  # this rank's share of each batch, of `world` equal shares (batch_size divisible by world)
    world: int = 1


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
        self._shards = {shard.shard: shard for shard in self.store.shards()}
        self._selected = {number: self._select(shard) for number, shard in self._shards.items()}
        if config.world > 1 and config.batch_size % config.world:
            raise ThinklensError(f"a batch of {config.batch_size} rows does not split over {config.world} ranks")

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
        """One pass over the filtered rows, shuffled with the seed of (config.seed, epoch); over several
        ranks, this rank's share of each batch."""
        if self.config.world > 1:
            yield from self._epoch_share(epoch)
            return
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

    def _epoch_share(self, epoch: int) -> Iterator[torch.Tensor]:
        """`epoch`'s batches as one process shuffles them, run on row ids; this rank's share of each read."""
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        ids = np.empty(config.buffer_tokens + config.chunk_tokens, dtype=np.int64)  # shard << 40 | row
        share = slice(config.rank * config.batch_size // config.world,
                      (config.rank + 1) * config.batch_size // config.world)
        filled = 0
        for shard, rows in self._chunks(rng):
            ids[filled:filled + len(rows)] = (shard.shard << 40) | rows
            filled += len(rows)
            if filled >= config.buffer_tokens:
                order = rng.permutation(filled)
                leaving = filled // 2 // config.batch_size * config.batch_size or filled
                for start in range(0, leaving, config.batch_size):
                    yield self._fetch(ids[order[start:start + config.batch_size]][share])
                staying = order[leaving:]
                ids[:len(staying)] = ids[staying]
                filled = len(staying)
        order = rng.permutation(filled)
        for start in range(0, filled, config.batch_size):
            batch = ids[order[start:start + config.batch_size]]
            if len(batch) == config.batch_size or not config.drop_last:
                yield self._fetch(batch[share])

    def _fetch(self, ids: np.ndarray) -> torch.Tensor:
        """The rows of `ids` (shard << 40 | row), in that order, read shard by shard in ascending rows."""
        out = torch.empty((len(ids), self.store.d_model), dtype=torch.float32)
        for number in np.unique(ids >> 40):
            where = np.flatnonzero((ids >> 40) == number)
            rows, inverse = np.unique(ids[where] & ((1 << 40) - 1), return_inverse=True)
            out[torch.from_numpy(where)] = self.store.read_rows(self.config.layer, self._shards[int(number)],
                                                                rows).float()[torch.from_numpy(inverse)]
        return out

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
