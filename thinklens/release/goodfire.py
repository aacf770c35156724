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
from pathlib import Path
from typing import Any

from thinklens.errors import ThinklensError

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


def write_release_ddb(features_db: Path, target: Path) -> None:
    """`tokens` and `activations` of `features_db` as a DuckDB file at `target` (which must not exist)."""
    with closing(duckdb_with_sqlite(target)) as duck:
        quoted = str(features_db).replace("'", "''")  # ATTACH takes no parameters: a quoted literal
        duck.execute(f"ATTACH '{quoted}' AS src (TYPE sqlite, READ_ONLY)")
        duck.execute(TOKENS_DDL)
        duck.execute("INSERT INTO tokens SELECT sequence_id, token_idx, token, decoded_token FROM src.tokens "
                     "ORDER BY sequence_id, token_idx")
        duck.execute(ACTIVATIONS_DDL)
        duck.execute("INSERT INTO activations SELECT feature_id, sequence_id, token_idx, strength FROM "
                     "src.activations ORDER BY feature_id, strength DESC, sequence_id, token_idx")
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
