"""Goodfire's public R1 feature databases, browsed with the same pages: `thinklens serve --ddb FILE.ddb`.

The release layout: a DuckDB file with `tokens(sequence_id, token_idx, token, decoded_token)` and
`activations(feature_id, sequence_id, token_idx, strength)`, and a separate SQLite `autointerp` file
(`feature_id, label, seqs, indices, quality, interestingness, model_name, prompt_version`). Both are
opened read-only. At start the per-feature statistics (count, max, mean, a histogram of the stored
strengths) and each feature's examples (its top activations and samples spread over its lower
ranks) are summarised into an in-memory SQLite database of our own layout, so `ServedRun`'s queries
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
from thinklens.features.db import open_read_only
from thinklens.features.schema import migrate
from thinklens.server.catalog import ServedRun, _search_index

RELEASE_COLUMNS = {
    "tokens": ("sequence_id", "token_idx", "token", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
AUTOINTERP_COLUMNS = ("feature_id", "label", "seqs", "indices", "quality", "interestingness", "model_name",
                      "prompt_version")
TOP = 20  # each feature's strongest stored activations a page shows
QUANTILES = 12  # and this many more, spread evenly over the ranks below them


class ReleaseRun(ServedRun):
    """A Goodfire-layout `.ddb` (+ its autointerp file) served like a run directory."""

    def __init__(self, ddb: Path, autointerp: Path | None = None, name: str | None = None) -> None:
        import duckdb

        ddb = Path(ddb)
        if not ddb.is_file():
            raise ThinklensError(f"no DuckDB file at {ddb}: pass the release's .ddb (e.g. logic-1.ddb)")
        try:
            self.duck = duckdb.connect(str(ddb), read_only=True)
        except duckdb.Error as exc:
            raise ThinklensError(f"{ddb} is not a readable DuckDB database ({str(exc).splitlines()[0]})") from None
        _check_layout(self.duck, ddb)
        self.rundir = None
        self.name = name or ddb.stem
        self.ddb, self.autointerp_path = ddb, autointerp
        self._mirror = _summarise(self.duck, autointerp)
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


def _check_layout(duck, ddb: Path) -> None:
    for table, columns in RELEASE_COLUMNS.items():
        try:
            found = [row[0] for row in duck.execute(f"DESCRIBE {table}").fetchall()]
        except Exception:  # noqa: BLE001 - duckdb's CatalogException: the table is missing
            raise ThinklensError(f"{ddb} has no table {table!r}: pass a database in the R1 release layout (tables "
                                 f"tokens and activations)") from None
        missing = [column for column in columns if column not in found]
        if missing:
            raise ThinklensError(f"{ddb}'s {table} lacks {missing}: the R1 release layout has {list(columns)}")


def _summarise(duck, autointerp: Path | None) -> sqlite3.Connection:
    """Our layout, in memory: features, histograms, each feature's examples, labels, and the vocabulary."""
    mirror = sqlite3.connect(":memory:", check_same_thread=False)
    migrate(mirror)
    cursor = duck.cursor()
    (tokens,) = cursor.execute("SELECT count(*) FROM tokens").fetchone()
    features = cursor.execute(
        "SELECT feature_id, count(*), count(*) / ?::DOUBLE, max(strength), avg(strength) FROM activations "
        "GROUP BY feature_id ORDER BY feature_id", [max(tokens, 1)]).fetchall()
    mirror.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, '[]', '[]')", features)
    # The bins `index` uses (features.build.HISTOGRAM_EDGES: 0, then 10^-4 … 10^4 in eighths of a decade).
    histogram = cursor.execute(
        """SELECT feature_id, least(65, 1 + greatest(0, ceil(8 * (log10(greatest(strength, 1e-30)) + 4))))::INT AS bin,
                  count(*) FROM activations WHERE strength > 0 GROUP BY ALL ORDER BY feature_id, bin""").fetchall()
    _insert_histograms(mirror, histogram)
    examples = cursor.execute(
        f"""WITH ranked AS (
              SELECT feature_id, sequence_id, token_idx, strength,
                     row_number() OVER (PARTITION BY feature_id ORDER BY strength DESC, sequence_id, token_idx) AS rank,
                     count(*) OVER (PARTITION BY feature_id) AS n
              FROM activations)
            SELECT feature_id, sequence_id, token_idx, strength FROM ranked
            WHERE rank <= {TOP} OR (n > {TOP} AND (rank - {TOP}) % greatest(1, (n - {TOP}) // {QUANTILES}) = 0
                                   AND rank > {TOP})""").fetchall()
    mirror.executemany("INSERT INTO activations VALUES (?, ?, ?, ?)", examples)
    positions = cursor.execute(
        f"""WITH top AS (SELECT sequence_id, token_idx FROM (
                SELECT sequence_id, token_idx, row_number() OVER (PARTITION BY feature_id ORDER BY strength DESC) AS r
                FROM activations) WHERE r <= {TOP})
            SELECT DISTINCT t.sequence_id, t.token_idx, t.token, t.decoded_token FROM tokens t
            JOIN top USING (sequence_id, token_idx)""").fetchall()
    mirror.executemany("INSERT OR IGNORE INTO vocab VALUES (?, ?)", [(token, text) for _, _, token, text in positions])
    mirror.executemany("INSERT OR IGNORE INTO token_ids VALUES (?, ?, ?, -1)",
                       [(s, t, token) for s, t, token, _ in positions])
    if autointerp is not None:
        _copy_labels(mirror, Path(autointerp))
    mirror.commit()
    return mirror


def _insert_histograms(mirror: sqlite3.Connection, rows: list[tuple[int, int, int]]) -> None:
    import json

    import numpy as np

    from thinklens.features.build import HISTOGRAM_EDGES

    edges = np.append(HISTOGRAM_EDGES, np.inf)
    by_feature: dict[int, dict[int, int]] = {}
    for feature, bin_, count in rows:
        by_feature.setdefault(feature, {})[bin_] = count
    out = []
    for feature, bins in by_feature.items():
        lo, hi = min(bins), max(bins) + 1
        out.append((feature, json.dumps([float(e) for e in edges[lo: hi + 1]]),
                    json.dumps([bins.get(i, 0) for i in range(lo, hi)])))
    mirror.executemany("INSERT INTO histograms VALUES (?, ?, ?)", out)


def _copy_labels(mirror: sqlite3.Connection, path: Path) -> None:
    if not path.is_file():
        raise ThinklensError(f"no autointerp file at {path}: pass the release's autointerp.db")
    try:
        source = open_read_only(path)
        found = [row[1] for row in source.execute("PRAGMA table_info(autointerp)")]
    except sqlite3.DatabaseError as exc:
        raise ThinklensError(f"{path} is not a readable SQLite autointerp file ({exc})") from None
    missing = [column for column in AUTOINTERP_COLUMNS if column not in found]
    if missing:
        source.close()
        raise ThinklensError(f"{path} has no autointerp table with {missing}: the release layout has "
                             f"{list(AUTOINTERP_COLUMNS)}")
    rows = source.execute(f"SELECT {', '.join(AUTOINTERP_COLUMNS)} FROM autointerp").fetchall()
    source.close()
    mirror.executemany("INSERT OR REPLACE INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
