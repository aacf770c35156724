"""The queries of the R1 release's example notebook (goodfire-ai/r1-interpretability, db_example.ipynb), restated:
the same tables, names and join, so a database that answers them answers the notebook.

The notebook opens the SQLite `autointerp` file with DuckDB (`SET sqlite_all_varchar=true`), attaches the
tokens/activations DuckDB file as `ds`, reads one row of each table, and joins a feature's top
activations with the tokens around each.
"""

from __future__ import annotations

FIRST_ROWS = ("SELECT * FROM autointerp LIMIT 1", "SELECT feature_id, label FROM autointerp LIMIT 10",
              "SELECT * FROM ds.tokens LIMIT 1", "SELECT * FROM ds.activations LIMIT 1")


def top_activations_join(feature_id: int, top_k_seq: int, sequence_window: int) -> str:
    """A feature's `top_k_seq` strongest activations, each with the tokens within `sequence_window // 2`."""
    return f"""
with subsequences as (
    with top_acts as (
        SELECT
            autointerp.feature_id,
            autointerp.label,
            acts.sequence_id,
            acts.token_idx,
            acts.strength
        FROM
            autointerp
        JOIN
            ds.activations acts ON autointerp.feature_id = acts.feature_id
        WHERE
            autointerp.feature_id = {feature_id}
        ORDER BY
            acts.strength DESC
        LIMIT {top_k_seq}
    )

    SELECT
        top_acts.feature_id,
        top_acts.label,
        top_acts.sequence_id,
        top_acts.token_idx as top_act_token_idx,
        top_acts.strength,
        tokens.token_idx as token_idx,
        tokens.decoded_token
    FROM
        ds.tokens as tokens
    join
        top_acts on tokens.sequence_id = top_acts.sequence_id
    where
        abs(tokens.token_idx - top_acts.token_idx) <= {sequence_window // 2}
)

SELECT
    *
FROM
    subsequences
"""
