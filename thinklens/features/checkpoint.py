"""A resumable index: the merged per-feature state of the first shards, saved beside the database now and then.

Encoding is the index's cost; the database itself is written from the merged state at the end (in a
temp file a kill discards). So the checkpoint (`features.db.checkpoint`) holds the state after the
first M shards, exactly as it was in memory (pending top-N entries included, so the resumed database
is byte-identical to an uninterrupted one), with what it belongs to: the SAE's hash, the settings and
the store. A resumed build re-reads those M shards' token index (cheap) and encodes only the rest. A
checkpoint of anything else is ignored and replaced. `--store-all` writes activations into the
database as it encodes, so it does not checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thinklens.files import atomic_path

SUFFIX = ".checkpoint"


@dataclass
class Resumed:
    """What a checkpoint restores: how many shards were merged, their indexed tokens, and the state."""

    shards: int = 0
    indexed: int = 0
    state: Any = None


@dataclass
class IndexCheckpoint:
    """The checkpoint of the database at `db_path`, for the build identified by `identity`."""

    db_path: Path
    identity: dict[str, Any]
    every_seconds: float = 60.0
    _last: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + SUFFIX)

    def load(self) -> Resumed:
        """The saved progress of this same build, or nothing (no file, another build's, or unreadable)."""
        if not self.path.is_file():
            return Resumed()
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any unreadable checkpoint means: start over
            return Resumed()
        if not isinstance(saved, dict) or saved.get("identity") != self.identity:
            return Resumed()
        return Resumed(int(saved["shards"]), int(saved["indexed"]), saved["state"])

    def save_if_due(self, shards: int, indexed: int, state: Any) -> bool:
        """Save the state after `shards` merged shards when `every_seconds` have passed since the last save."""
        if time.monotonic() - self._last < self.every_seconds:
            return False
        with atomic_path(self.path) as temp:
            torch.save({"identity": self.identity, "shards": shards, "indexed": indexed, "state": state}, temp)
        self._last = time.monotonic()
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
