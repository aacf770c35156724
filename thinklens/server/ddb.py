"""Goodfire's public R1 feature databases, browsed with the same pages: `thinklens serve --ddb FILE.ddb`.

The release layout: a DuckDB file with `tokens(sequence_id, token_idx, token, decoded_token)` and
`activations(feature_id, sequence_id, token_idx, strength)`, and a separate SQLite `autointerp` file
(`feature_id, label, seqs, indices, quality, interestingness, model_name, prompt_version`). Both are
opened read-only. At start the per-feature statistics (count, max, mean, a histogram of the stored
strengths) and each feature's examples (its top activations and a uniform sample spread from weakest
to strongest) are summarised into an in-memory SQLite database of our own layout, so `ServedRun`'s queries
serve it; context tokens are read from the DuckDB file per page. There is no model, SAE or segment
in the release: those parts of a page say so.
"""

from __future__ import annotations

import sqlite3
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from thinklens.errors import ThinklensError
from thinklens.release.goodfire import (
    TOP,
    ReleaseSource,
    check_release_layout,
    open_release,
    summarise_release,
)
from thinklens.server.catalog import ServedRun, _search_index


class ReleaseRun(ServedRun):
    """A Goodfire-layout `.ddb` (+ its autointerp file) served like a run directory."""

    def __init__(self, ddb: Path, autointerp: Path | None = None, name: str | None = None) -> None:
        ddb = Path(ddb)
        if not ddb.is_file():
            raise ThinklensError(f"no DuckDB file at {ddb}: pass the release's .ddb (e.g. logic-1.ddb)")
        self.duck = open_release(ddb)
        check_release_layout(self.duck, ddb)
        self.rundir = None
        self.name = name or ddb.stem
        self.ddb, self.autointerp_path = ddb, autointerp
        self._mirror = sqlite3.connect(":memory:", check_same_thread=False)
        (most,) = self.duck.execute("SELECT coalesce(max(feature_id), -1) + 1 FROM activations").fetchone()
        summarise_release(self._mirror, ReleaseSource(
            self.duck.cursor(), Path(autointerp) if autointerp is not None else None, 0, int(most)))
        self._local = threading.local()
        self._search = _search_index(self._mirror)
        self._search_lock = threading.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        return self._mirror

    @cached_property
    def meta(self) -> dict[str, Any]:
        return {"model": "DeepSeek-R1 (Goodfire release)", "d_sae": self.n_features, "source": str(self.ddb),
                "arguments": {"top": TOP}}

    @cached_property
    def n_features(self) -> int:
        (most,) = self._mirror.execute("SELECT coalesce(max(feature_id), -1) + 1 FROM features").fetchone()
        return int(most)

    @cached_property
    def sae(self):
        return None

    @cached_property
    def context(self):
        return None

    @cached_property
    def contrasts(self) -> list[str]:
        return []

    def summary(self) -> dict[str, Any]:
        tokens = self.duck.cursor().execute("SELECT count(*) FROM tokens").fetchone()[0]
        return {"name": self.name, "model": self.meta["model"], "layer": None, "hook_name": None,
                "sae": {"arch": None, "d_sae": self.n_features, "k": None, "sha256": None}, "tokens": tokens,
                "eval": {}, "eval_segments": {}, "findings": [], "has_map": False, "has_report": False,
                "contrasts": [], "release": {"ddb": self.ddb.name, "autointerp": self.autointerp_path.name
                                             if self.autointerp_path else None}}

    def examples(self, feature_id: int, window: int = 24) -> list[dict[str, Any]]:
        """The feature's summarised examples, each with its context read from the release's tokens."""
        half = max(1, window // 2)
        stored = self._mirror.execute("SELECT sequence_id, token_idx, strength FROM activations WHERE feature_id = ? "
                                      "ORDER BY strength DESC", (feature_id,)).fetchall()
        if not stored:
            return []
        cursor = self.duck.cursor()
        spans = ", ".join(f"({int(s)}, {int(t) - half}, {int(t) + half})" for s, t, _ in stored)
        rows = cursor.execute(
            f"""SELECT DISTINCT t.sequence_id, t.token_idx, t.decoded_token FROM tokens t
                JOIN (VALUES {spans}) AS w(sequence_id, lo, hi)
                  ON t.sequence_id = w.sequence_id AND t.token_idx BETWEEN w.lo AND w.hi
                ORDER BY t.sequence_id, t.token_idx""").fetchall()
        by_sequence: dict[int, list[tuple[int, str]]] = {}
        for sequence_id, token_idx, text in rows:  # windows of one sequence may overlap: each token once
            by_sequence.setdefault(sequence_id, []).append((token_idx, text))
        values = {(s, t): v for s, t, v in stored}
        return [{"sequence_id": s, "token_idx": t, "strength": v, "exact": False,
                 "tokens": [{"idx": idx, "text": text, "segment": "?", "activation": values.get((s, idx), 0.0)}
                            for idx, text in by_sequence.get(s, []) if abs(idx - t) <= half]}
                for s, t, v in stored]

    def map_points(self) -> list[dict[str, Any]]:
        return []
