"""Exact per-token activations of one feature over an example's context, from a run's own store.

features.db keeps a feature's strongest tokens, not its value on their neighbours. Where the run
still holds `activations/` and `sae/`, the context window's residual vectors are read from the
memory-mapped shard and encoded with the SAE exactly as `index` encoded them (threshold mode): a
page shows the feature's true value on every token, as Neuronpedia does, and `explain` knows which
contexts truly do not fire. Nothing is written.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np
import torch

from thinklens.activations.store import ActivationStore, ShardInfo, from_storage
from thinklens.errors import ThinklensError
from thinklens.sae.sae import Sae

OPEN_SHARDS = 64


class ContextEncoder:
    """Encodes context windows of a run's stored activations with its SAE."""

    def __init__(self, store: ActivationStore, sae: Sae, layer: int) -> None:
        self.store, self.sae, self.layer = store, sae.eval(), layer
        self.shards = store.shards()
        self._firsts = [shard.first_sequence for shard in self.shards]
        self._index: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def cheap(self) -> bool:
        """Whether one feature's value is one column (ReLU, thresholded BatchTopK), not a full encode."""
        return self.sae.config.arch == "relu" or (self.sae.config.arch != "topk" and float(self.sae.threshold) >= 0)

    @classmethod
    def for_store(cls, store: ActivationStore, sae: Sae | None, layer: int | None) -> ContextEncoder | None:
        """The encoder of a store with the SAE's layer (or `layer`, for an SAE that names none), else None."""
        if sae is None or not store.exists():
            return None
        chosen = sae.config.layer if sae.config.layer is not None else layer
        if chosen not in store.layers or sae.config.d_in != store.d_model:
            return None
        return cls(store, sae, chosen)

    def _shard(self, sequence_id: int) -> ShardInfo | None:
        position = bisect.bisect_right(self._firsts, sequence_id) - 1
        if position < 0 or sequence_id > self.shards[position].last_sequence:
            return None
        return self.shards[position]

    def _opened(self, shard: ShardInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequence ids, token indices, the memory-mapped rows) of a shard, kept for the next page (at
        most `OPEN_SHARDS` of them: mappings cost address space, not memory)."""
        with self._lock:
            if shard.shard not in self._index:
                if len(self._index) >= OPEN_SHARDS:
                    self._index.pop(next(iter(self._index)))
                table = self.store.read_index(shard, ["sequence_id", "token_idx"])
                sequences = table.column(0).to_numpy()
                if np.any(np.diff(sequences) < 0):
                    raise ThinklensError(f"shard {shard.shard} of {self.store.directory} is not in sequence order")
                self._index[shard.shard] = (sequences, table.column(1).to_numpy(),
                                            self.store.open_shard(self.layer, shard))
            return self._index[shard.shard]

    @torch.inference_mode()
    def windows(self, feature_id: int, spans: list[tuple[int, int, int]]) -> list[dict[int, float]]:
        """For each (sequence_id, first, last): token_idx → the feature's activation on that sequence's
        tokens first..last in the store. One read and one encode for all of them."""
        rows, owners, positions = [], [], []
        for number, (sequence_id, first, last) in enumerate(spans):
            shard = self._shard(sequence_id)
            if shard is None:
                continue
            sequences, tokens, mapped = self._opened(shard)
            lo = np.searchsorted(sequences, sequence_id, side="left")  # harvest writes rows in sequence order
            hi = np.searchsorted(sequences, sequence_id, side="right")
            found = lo + np.flatnonzero((sequences[lo:hi] == sequence_id) & (tokens[lo:hi] >= first)
                                        & (tokens[lo:hi] <= last))
            rows.append(np.array(mapped[found]))
            owners += [number] * len(found)
            positions += tokens[found].tolist()
        result: list[dict[int, float]] = [{} for _ in spans]
        if not owners:
            return result
        x = from_storage(np.concatenate(rows), self.store.dtype).float().to(self.sae.device)
        values = self.sae.feature_activations(x, feature_id).float().cpu().tolist()
        for owner, position, value in zip(owners, positions, values, strict=True):
            result[owner][position] = value
        return result
