"""Per-feature top-N bookkeeping with bounded memory, merged batch by batch.

State: for each feature its N best entries by score, best first, each with its activation value and
(sequence_id, token_idx). The score is the activation itself for the top examples, or a random key
for a uniform reservoir sample. A batch's entries first meet a cheap filter (score above the
feature's N-th best at the last merge, a bound that only rises); survivors wait in a pending list
that is merged into the state only when it has grown to half the state's size, so the sort costs
are amortised over many batches.
"""

from __future__ import annotations

import torch


class TopPerFeature:
    """The N highest-scoring entries of every feature seen so far."""

    def __init__(self, n_features: int, n: int) -> None:
        self.n = n
        self._pending: list[list[torch.Tensor]] = []
        self._pending_count = 0
        self.scores = torch.full((n_features, n), float("-inf"))  # (d_sae, N), descending per row
        self.values = torch.zeros(n_features, n)
        self.sequence_ids = torch.full((n_features, n), -1, dtype=torch.long)  # −1: empty slot
        self.token_idx = torch.full((n_features, n), -1, dtype=torch.long)

    def update(self, features: torch.Tensor, scores: torch.Tensor, values: torch.Tensor,
               sequence_ids: torch.Tensor, token_idx: torch.Tensor) -> None:
        """Offer a batch of entries (all 1-D, same length)."""
        better = scores > self.scores[features, -1]
        if not bool(better.any()):
            return
        self._pending.append([features[better], scores[better], values[better], sequence_ids[better], token_idx[better]])
        self._pending_count += int(better.sum())
        if self._pending_count >= self.scores.numel() // 2:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending entries into the state."""
        if not self._pending:
            return
        new = [torch.cat(column) for column in zip(*self._pending, strict=True)]
        self._pending, self._pending_count = [], 0
        touched = torch.unique(new[0])  # only these rows of the state change
        state = [touched.repeat_interleave(self.n)] + [
            array[touched].flatten() for array in (self.scores, self.values, self.sequence_ids, self.token_idx)
        ]
        all_features, all_scores, all_values, all_sequences, all_tokens = (
            torch.cat([old, fresh]) for old, fresh in zip(state, new, strict=True)
        )
        # Order by feature, then score descending (two stable sorts).
        order = torch.argsort(all_scores, descending=True, stable=True)
        order = order[torch.argsort(all_features[order], stable=True)]
        sorted_features = all_features[order]
        rank = torch.arange(len(order)) - torch.searchsorted(sorted_features, sorted_features)  # rank in feature
        kept = rank < self.n  # every touched feature brings its N state entries, so slots 0..N-1 all fill
        keep, slots = order[kept], rank[kept]
        rows = all_features[keep]
        self.scores[rows, slots] = all_scores[keep]
        self.values[rows, slots] = all_values[keep]
        self.sequence_ids[rows, slots] = all_sequences[keep]
        self.token_idx[rows, slots] = all_tokens[keep]

    def merge(self, other: TopPerFeature) -> None:
        """Offer every entry another state holds (a shard's partial top-N), best first per feature."""
        other.finish()
        filled = other.sequence_ids >= 0
        features = torch.nonzero(filled)[:, 0]
        self.update(features, other.scores[filled], other.values[filled], other.sequence_ids[filled],
                    other.token_idx[filled])

    def finish(self) -> None:
        """Merge what is pending; call before reading the state arrays directly."""
        self._merge()

    def entries(self, feature: int) -> list[tuple[float, int, int]]:
        """(value, sequence_id, token_idx) of one feature's filled slots, in score order."""
        self._merge()
        filled = self.sequence_ids[feature] >= 0
        return list(zip(self.values[feature][filled].tolist(), self.sequence_ids[feature][filled].tolist(),
                        self.token_idx[feature][filled].tolist(), strict=True))
