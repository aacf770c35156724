"""Exact per-token activations of one feature over an example's context, from the run's own store.

features.db keeps a feature's strongest tokens, not its value on their neighbours. Where the run
still holds `activations/` and `sae/`, the context window's residual vectors are read from the
memory-mapped shard and encoded with the SAE exactly as `index` encoded them (threshold mode): a
page shows the feature's true value on every token, as Neuronpedia does. Nothing is written.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np
import torch

from thinklens.activations.store import ActivationStore, ShardInfo
from thinklens.pipeline.rundir import RunDir
from thinklens.sae.sae import Sae


class ContextEncoder:
    """Encodes context windows of a run's stored activations with its SAE."""

    def __init__(self, store: ActivationStore, sae: Sae, layer: int) -> None:
        self.store, self.sae, self.layer = store, sae.eval(), layer
        self.shards = store.shards()
        self._firsts = [shard.first_sequence for shard in self.shards]
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, rundir: RunDir, sae: Sae | None, layer: int | None) -> ContextEncoder | None:
        """The encoder of a run that still holds its activations and SAE, else None."""
        if sae is None or not rundir.activation_store.exists():
            return None
        store = rundir.activation_store
        chosen = sae.config.layer if sae.config.layer is not None else layer
        if chosen not in store.layers or sae.config.d_in != store.d_model:
            return None
        return cls(store, sae, chosen)

    def _shard(self, sequence_id: int) -> ShardInfo | None:
        position = bisect.bisect_right(self._firsts, sequence_id) - 1
        if position < 0 or sequence_id > self.shards[position].last_sequence:
            return None
        return self.shards[position]

    def _positions(self, shard: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if shard.shard not in self._index:
                if len(self._index) > 64:  # bounded: the index of 64 shards at most
                    self._index.pop(next(iter(self._index)))
                table = self.store.read_index(shard, ["sequence_id", "token_idx"])
                self._index[shard.shard] = (table.column(0).to_numpy(), table.column(1).to_numpy())
            return self._index[shard.shard]

    @torch.inference_mode()
    def window(self, feature_id: int, sequence_id: int, first: int, last: int) -> dict[int, float]:
        """token_idx → the feature's activation, for the sequence's tokens `first..last` in the store."""
        shard = self._shard(sequence_id)
        if shard is None:
            return {}
        sequences, tokens = self._positions(shard)
        rows = np.flatnonzero((sequences == sequence_id) & (tokens >= first) & (tokens <= last))
        if len(rows) == 0:
            return {}
        x = self.store.read_rows(self.layer, shard, rows).float().to(self.sae.device)
        values = self.sae.feature_activations(x, feature_id).float().cpu()
        return dict(zip(tokens[rows].tolist(), values.tolist(), strict=True))
