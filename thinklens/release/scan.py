"""One streamed pass over a release's `activations` into the per-feature state `index` keeps.

The rows come from DuckDB in Arrow batches, in the table's own order, and go into
`features.build.FeatureStats`: counts, sums, histograms, each feature's top N and a uniform sample
for its quantile examples. Memory is that state (d_sae × (N + 4 × samples) entries) and one batch,
whatever the table's size. The sample's keys are a hash of each entry (feature, sequence, token),
not a random draw, so the pass gives the same database however it is split. A checkpoint (the state
and the rows consumed) is saved now and then; a resumed pass skips those rows and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from thinklens.features.build import FeatureStats, IndexConfig
from thinklens.features.checkpoint import IndexCheckpoint

BATCH_ROWS = 1_000_000
_MASK = (1 << 63) - 1


def hashed_keys(features: torch.Tensor, sequence_ids: torch.Tensor, token_idx: torch.Tensor) -> torch.Tensor:
    """A key in [0, 1) per entry, uniform and fixed by the entry itself (a splitmix64-style mix)."""
    h = features * 0x9E3779B1 + sequence_ids * 0x85EBCA77 + token_idx * 0xC2B2AE3D  # wraps as int64: wanted
    for shift, multiplier in ((30, 0x3F58476D1CE4E5B9), (27, 0x14D049BB133111EB)):
        h = (h ^ ((h & _MASK) >> shift)) * multiplier
    return ((h & _MASK) >> 39).double().div(1 << 24).float()


def scan_activations(cursor: Any, d_sae: int, config: IndexConfig, checkpoint: IndexCheckpoint | None = None,
                     on_rows: Callable[[int], None] | None = None) -> FeatureStats:
    """The state after every row of `activations` (resuming from `checkpoint` when it holds this pass's;
    without one, e.g. `serve --ddb`'s summary in memory, the pass neither resumes nor saves)."""
    stats, done = FeatureStats(d_sae, config), 0
    resumed = checkpoint.load() if checkpoint is not None else None
    if resumed is not None and resumed.state is not None:
        stats.__dict__.update(resumed.state)
        done = resumed.shards  # rows consumed, in the table's order
    if on_rows is not None and done:
        on_rows(done)
    cursor.execute(f"SELECT feature_id, sequence_id, token_idx, strength FROM activations OFFSET {int(done)}")
    reader = cursor.fetch_record_batch(BATCH_ROWS)
    for batch in reader:
        features, sequence_ids, token_idx = (_column(batch, i).long() for i in range(3))
        values = _column(batch, 3).float()
        stats.add(features, values, sequence_ids, token_idx, None, keys=hashed_keys(features, sequence_ids, token_idx))
        done += len(features)
        if checkpoint is not None:
            checkpoint.save_if_due(done, 0, stats.__getstate__())
        if on_rows is not None:
            on_rows(len(features))
    stats.top.finish()
    stats.reservoir.finish()
    return stats


def _column(batch: Any, i: int) -> torch.Tensor:
    """Column `i` of an Arrow record batch as a tensor (copied: Arrow's buffers are read-only)."""
    return torch.from_numpy(batch.column(i).to_numpy(zero_copy_only=False, writable=True))


def checkpoint_for(partial: Path, source: str, d_sae: int, every_seconds: float) -> IndexCheckpoint:
    """The pass's checkpoint beside the partial database, valid only for the same source and SAE width."""
    return IndexCheckpoint(Path(partial), {"release": source, "d_sae": d_sae, "batch_rows": BATCH_ROWS},
                           every_seconds=every_seconds)
