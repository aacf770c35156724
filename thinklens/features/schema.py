"""The schema of `features.db`, grown by numbered, idempotent migrations.

The public DeepSeek-R1 feature databases have three tables, and their users' queries must run
unchanged here: `tokens(sequence_id, token_idx, token, decoded_token)`, `activations(feature_id,
sequence_id, token_idx, strength)`, `autointerp(feature_id, label, seqs, indices, quality,
interestingness, model_name, prompt_version)`. `tokens` is a view over a compact token table and a
vocabulary (each distinct token's text is stored once); DuckDB's SQLite reader reads views too.

Our own tables sit beside them: token segments, `sequences`, `features` (statistics and logit
lenses), `histograms`, `meta`, and `contrast_sets` + `contrasts` (features separating two token sets).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

MIGRATIONS: list[str] = [
    # 1: the public tables and ours.
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS vocab (token INTEGER PRIMARY KEY, decoded_token TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS segments (segment INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS token_ids (
        sequence_id INTEGER NOT NULL, token_idx INTEGER NOT NULL, token INTEGER NOT NULL,
        segment INTEGER NOT NULL, PRIMARY KEY (sequence_id, token_idx)
    ) WITHOUT ROWID;
    CREATE VIEW IF NOT EXISTS tokens AS
        SELECT t.sequence_id, t.token_idx, t.token, v.decoded_token
        FROM token_ids t JOIN vocab v ON v.token = t.token;
    CREATE TABLE IF NOT EXISTS activations (
        feature_id INTEGER NOT NULL, sequence_id INTEGER NOT NULL, token_idx INTEGER NOT NULL,
        strength REAL NOT NULL, PRIMARY KEY (feature_id, sequence_id, token_idx)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS autointerp (
        feature_id INTEGER PRIMARY KEY, label TEXT, seqs TEXT, indices TEXT, quality REAL,
        interestingness REAL, model_name TEXT, prompt_version TEXT
    );
    CREATE TABLE IF NOT EXISTS sequences (
        sequence_id INTEGER PRIMARY KEY, prompt_id TEXT, source TEXT, prompt TEXT, reference_answer TEXT,
        answer TEXT, correct INTEGER, n_tokens INTEGER NOT NULL, prefix_text TEXT
    );
    CREATE TABLE IF NOT EXISTS features (
        feature_id INTEGER PRIMARY KEY, firing_count INTEGER NOT NULL, density REAL NOT NULL,
        max_activation REAL NOT NULL, mean_activation REAL NOT NULL,
        rate_prompt REAL, rate_prefix REAL, rate_thinking REAL, rate_answer REAL,
        top_logits TEXT, bottom_logits TEXT
    );
    CREATE TABLE IF NOT EXISTS histograms (
        feature_id INTEGER PRIMARY KEY, edges TEXT NOT NULL, counts TEXT NOT NULL
    );
    """,
    # 2: contrasts between token sets (`thinklens contrast`): one row per (contrast, feature).
    """
    CREATE TABLE IF NOT EXISTS contrast_sets (
        name TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, segment TEXT, tokens_a INTEGER NOT NULL,
        tokens_b INTEGER NOT NULL, traces_a INTEGER NOT NULL, traces_b INTEGER NOT NULL, settings TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS contrasts (
        name TEXT NOT NULL, feature_id INTEGER NOT NULL, auroc REAL NOT NULL, auroc_low REAL NOT NULL,
        auroc_high REAL NOT NULL, log2_rate_ratio REAL NOT NULL, ratio_low REAL NOT NULL, ratio_high REAL NOT NULL,
        rate_a REAL NOT NULL, rate_b REAL NOT NULL, mean_a REAL NOT NULL, mean_b REAL NOT NULL,
        PRIMARY KEY (name, feature_id)
    ) WITHOUT ROWID;
    """,
    # 3: scores of LLM labels (`thinklens explain`): one row per (feature, label author, scorer, method, control).
    """
    CREATE TABLE IF NOT EXISTS label_scores (
        feature_id INTEGER NOT NULL, model_name TEXT NOT NULL, prompt_version TEXT NOT NULL, scorer TEXT NOT NULL,
        method TEXT NOT NULL, control INTEGER NOT NULL, label TEXT, n INTEGER, balanced_accuracy REAL, f1 REAL,
        auroc REAL, unparsable INTEGER NOT NULL, reply TEXT,
        PRIMARY KEY (feature_id, model_name, prompt_version, scorer, method, control)
    ) WITHOUT ROWID;
    """,
]


def migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied; returns the schema version."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
    for version, script in enumerate(MIGRATIONS, start=1):
        if version in applied:
            continue
        connection.executescript(script)
        connection.execute(
            "INSERT INTO schema_migrations VALUES (?, ?)", (version, datetime.now(UTC).isoformat(timespec="seconds"))
        )
    connection.commit()
    return len(MIGRATIONS)
