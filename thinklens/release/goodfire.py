"""Goodfire's R1 release layout for a feature database: what `publish` writes and `serve --ddb` reads.

A DuckDB file with `tokens(sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)`
and `activations(feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, strength FLOAT)`, and a
separate SQLite file holding `autointerp(feature_id, label, seqs, indices, quality, interestingness,
model_name, prompt_version)`. The release's example notebook opens the autointerp file, attaches the
DuckDB file as `ds` and joins the two. Our features.db already holds these tables under these names
(its `tokens` is a view); the release files are copies in DuckDB's and SQLite's own formats, streamed
table by table through DuckDB's SQLite scanner (nothing is held in memory).
"""

from __future__ import annotations

import sqlite3
import sysconfig
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinklens.errors import ThinklensError
from thinklens.features.db import open_read_only
from thinklens.features.schema import migrate

RELEASE_COLUMNS = {
    "tokens": ("sequence_id", "token_idx", "token", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
AUTOINTERP_COLUMNS = ("feature_id", "label", "seqs", "indices", "quality", "interestingness", "model_name",
                      "prompt_version")
TOP = 20  # each feature's strongest stored activations a page shows
QUANTILES = 12  # and this many more, spread from weakest to strongest over a uniform sample (as index does)
TOKENS_DDL = "CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)"
ACTIVATIONS_DDL = ("CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, "
                   "strength FLOAT)")
AUTOINTERP_DDL = ("CREATE TABLE autointerp (feature_id INTEGER PRIMARY KEY, label TEXT, seqs TEXT, indices TEXT, "
                  "quality REAL, interestingness REAL, model_name TEXT, prompt_version TEXT)")


def duckdb_with_sqlite(path: Path | str = ":memory:") -> Any:
    """A DuckDB connection with its SQLite scanner loaded, offline: from the `duckdb-ext-sqlite` wheel
    when it is installed, else DuckDB's own extension directory (which may download it once)."""
    try:
        import duckdb
    except ImportError:
        raise ThinklensError("the release layout needs DuckDB: pip install 'thinklens[release]'") from None
    bundled = Path(sysconfig.get_paths()["purelib"]) / "duckdb_ext" / "extensions"
    config = {"extension_directory": str(bundled)} if bundled.is_dir() else {}
    connection = duckdb.connect(str(path), config=config)
    try:
        connection.execute("LOAD sqlite")
    except duckdb.Error:
        try:
            connection.execute("INSTALL sqlite")
            connection.execute("LOAD sqlite")
        except duckdb.Error as exc:
            connection.close()
            raise ThinklensError(f"DuckDB's sqlite extension is not available ({str(exc).splitlines()[0]}): "
                                 "pip install duckdb-ext-sqlite") from None
    return connection


def open_release(ddb: Path, spill: Path | None = None, memory_limit: str | None = None) -> Any:
    """The release's DuckDB file, read-only (one line naming the fix if it is not one). `spill` is where
    DuckDB writes what exceeds `memory_limit` (its default, beside the file, may be read-only media)."""
    import duckdb

    config = {key: value for key, value in {"temp_directory": str(spill) if spill else None,
                                            "memory_limit": memory_limit}.items() if value is not None}
    try:
        return duckdb.connect(str(ddb), read_only=True, config=config)
    except (duckdb.InvalidInputException, duckdb.ParserException) as exc:
        raise ThinklensError(f"DuckDB refused the setting ({str(exc).splitlines()[0]}): pass --memory-limit as "
                             "e.g. 8GB") from None
    except duckdb.Error as exc:
        raise ThinklensError(f"{ddb} is not a readable DuckDB database ({str(exc).splitlines()[0]})") from None


RELEASE_QUERIES = {  # table → (its DDL, the rows from our database's table of that name, in the release's order)
    "tokens": (TOKENS_DDL, "SELECT sequence_id, token_idx, token, decoded_token FROM src.tokens "
                           "ORDER BY sequence_id, token_idx"),
    "activations": (ACTIVATIONS_DDL, "SELECT feature_id, sequence_id, token_idx, strength FROM src.activations "
                                     "ORDER BY feature_id, strength DESC, sequence_id, token_idx"),
}


def write_release_ddb(features_db: Path, target: Path) -> None:
    """`tokens` and `activations` of `features_db` as a DuckDB file at `target`."""
    for table in RELEASE_COLUMNS:
        write_release_table(features_db, target, table)


def write_release_table(features_db: Path, target: Path, table: str) -> None:
    """One release table (`tokens` or `activations`) of `features_db` into the DuckDB file `target`, in one
    transaction that first drops what a killed try left: the file holds the table whole or not at all."""
    ddl, rows = RELEASE_QUERIES[table]
    with closing(duckdb_with_sqlite(target)) as duck:
        quoted = str(features_db).replace("'", "''")  # ATTACH takes no parameters: a quoted literal
        duck.execute(f"ATTACH '{quoted}' AS src (TYPE sqlite, READ_ONLY)")
        duck.execute("BEGIN TRANSACTION")
        duck.execute(f"DROP TABLE IF EXISTS {table}")
        duck.execute(ddl)
        duck.execute(f"INSERT INTO {table} {rows}")
        duck.execute("COMMIT")
        duck.execute("DETACH src")
        duck.execute("CHECKPOINT")


def write_autointerp(features_db: Path, target: Path) -> int:
    """The labels of `features_db` as the release's SQLite `autointerp` file; returns the rows written."""
    with closing(sqlite3.connect(f"file:{features_db}?mode=ro", uri=True)) as source, \
            closing(sqlite3.connect(target)) as out:
        out.execute(AUTOINTERP_DDL)
        rows = source.execute("SELECT feature_id, label, seqs, indices, quality, interestingness, model_name, "
                              "prompt_version FROM autointerp ORDER BY feature_id")
        out.executemany("INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        out.commit()
        return int(out.execute("SELECT count(*) FROM autointerp").fetchone()[0])


def check_release_layout(duck, ddb: Path) -> None:
    """Refuse, naming the layout, a DuckDB file without the release's tables and columns."""
    for table, columns in RELEASE_COLUMNS.items():
        try:
            found = [row[0] for row in duck.execute(f"DESCRIBE {table}").fetchall()]
        except Exception:  # noqa: BLE001 - duckdb's CatalogException: the table is missing
            raise ThinklensError(f"{ddb} has no table {table!r}: pass a database in the R1 release layout (tables "
                                 f"tokens and activations)") from None
        missing = [column for column in columns if column not in found]
        if missing:
            raise ThinklensError(f"{ddb}'s {table} lacks {missing}: the R1 release layout has {list(columns)}")


def summarise_release(mirror: sqlite3.Connection, source: ReleaseSource, skip: frozenset[str] = frozenset(),
                      on_step=None) -> None:
    """A release database in our layout, written into `mirror`, step by step (`RELEASE_STEPS`): the
    per-feature statistics, histograms and examples (its TOP strongest and QUANTILES more spread over a
    uniform sample, as `index` picks them) from one streamed pass over `activations`; the tokens around
    each top example (`source.window` either side: what a page shows without the .ddb); the labels.
    Memory is bounded by the number of features, never by the release's size. Steps in `skip` are
    already there; a step not done is cleared first (a killed one leaves part of its rows);
    `on_step(name)` is called as each is committed."""
    migrate(mirror)
    for name, (tables, step) in RELEASE_STEPS.items():
        if name in skip:
            continue
        for table in tables:
            mirror.execute(f"DELETE FROM {table}")
        _run_step(name, step, source, mirror)
        mirror.commit()
        if on_step is not None:
            on_step(name)


@dataclass(frozen=True)
class ReleaseSource:
    """What the summary steps read: the release's DuckDB cursor, its labels file, the context to keep, the
    SAE's width, the pass's checkpoint, and a callback counting the activation rows consumed."""

    cursor: Any
    autointerp: Path | None
    window: int
    d_sae: int
    checkpoint: Any = None  # features.checkpoint.IndexCheckpoint, or None: no resume
    on_rows: Any = None


def _run_step(name: str, step, source: ReleaseSource, mirror: sqlite3.Connection) -> None:
    import duckdb

    try:
        step(source, mirror)
    except duckdb.OutOfMemoryException as exc:
        mirror.rollback()
        raise ThinklensError(f"DuckDB ran out of memory in the {name!r} step ({str(exc).splitlines()[0]}): rerun "
                             "with --memory-limit set (e.g. half or twice the limit named); the steps already done "
                             "are kept and the rerun resumes at this one") from None


def _features(source: ReleaseSource, mirror: sqlite3.Connection) -> None:
    from thinklens.features.build import IndexConfig, insert_examples, insert_histograms
    from thinklens.release.scan import scan_activations

    config = IndexConfig(top=TOP, quantile_samples=QUANTILES)
    stats = scan_activations(source.cursor, source.d_sae, config, source.checkpoint, source.on_rows)
    (tokens,) = source.cursor.execute("SELECT count(*) FROM tokens").fetchone()
    firing = stats.firing.tolist()
    mirror.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, '[]', '[]')",
                       ((f, n, n / max(tokens, 1), float(stats.top.scores[f, 0]), stats.total[f].item() / n)
                        for f, n in enumerate(firing) if n))
    insert_histograms(mirror, stats)
    insert_examples(mirror, stats, config)


def _tokens(source: ReleaseSource, mirror: sqlite3.Connection) -> None:
    """The tokens around each feature's TOP examples (`window` either side) and their vocabulary: the
    examples (from the mirror: features × TOP rows) go to DuckDB, are widened to their windows and
    joined to `tokens` on equality (a hash join whose build side is those windows, not the table)."""
    import pyarrow as pa

    top = mirror.execute(f"""SELECT sequence_id, token_idx FROM (SELECT sequence_id, token_idx, row_number() OVER
                               (PARTITION BY feature_id ORDER BY strength DESC, sequence_id, token_idx) AS r
                             FROM activations) WHERE r <= {TOP}""").fetchall()
    cursor = source.cursor
    cursor.register("top_examples", pa.table({"sequence_id": pa.array([row[0] for row in top], pa.int64()),
                                              "token_idx": pa.array([row[1] for row in top], pa.int64())}))
    cursor.execute(f"""WITH wanted AS (SELECT DISTINCT sequence_id, (token_idx + o)::INTEGER AS token_idx
                                       FROM top_examples, range({-source.window}, {source.window + 1}) r(o))
                       SELECT t.sequence_id, t.token_idx, t.token, t.decoded_token
                       FROM tokens t JOIN wanted w ON t.sequence_id = w.sequence_id AND t.token_idx = w.token_idx""")
    vocab: dict[int, str] = {}  # at most the model's vocabulary
    while block := cursor.fetchmany(100_000):
        mirror.executemany("INSERT OR IGNORE INTO token_ids VALUES (?, ?, ?, -1)", [row[:3] for row in block])
        vocab.update((row[2], row[3]) for row in block)
    cursor.unregister("top_examples")
    mirror.executemany("INSERT OR IGNORE INTO vocab VALUES (?, ?)", sorted(vocab.items()))


def _labels(source: ReleaseSource, mirror: sqlite3.Connection) -> None:
    if source.autointerp is not None:
        copy_labels(mirror, source.autointerp)


RELEASE_STEPS = {  # step → (tables it fills, what fills them)
    "features": (("features", "histograms", "activations"), _features),
    "tokens": (("vocab", "token_ids"), _tokens),
    "labels": (("autointerp",), _labels),
}


def copy_labels(mirror: sqlite3.Connection, path: Path) -> None:
    """The release's autointerp rows into `mirror`'s autointerp table (refused, naming the layout, if not one)."""
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
