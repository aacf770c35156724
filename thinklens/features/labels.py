"""Offline heuristic labels: a feature is named by its dominant activating tokens and segment.

No LLM is needed, so the database, map and report have labels from the first run. Labels are
written to the public `autointerp` table with `model_name='heuristic'`; LLM labels replace them.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.files import check_inside_run

HEURISTIC_MODEL = "heuristic"
HEURISTIC_VERSION = "heuristic-v1"
TOP_EXAMPLES = 16  # examples the label is made from
CITED_EXAMPLES = 4  # of those, the ones cited in autointerp.seqs / indices (all are in `activations`)


def write_heuristic_labels(db_path: Path, force: bool = False) -> tuple[int, bool]:
    """Label every feature with stored examples in `db_path`; returns (labelled features, skipped).

    Skipped when every such feature already has a label of this version (or any LLM label) and not
    `force`. LLM labels (another model_name) are never overwritten.
    """
    if not Path(db_path).is_file():  # sqlite3.connect would create an empty file
        raise ThinklensError(f"no feature database at {db_path}: run `thinklens index {Path(db_path).parent}` first")
    connection = sqlite3.connect(db_path)
    try:
        missing = connection.execute(
            """SELECT count(DISTINCT a.feature_id) FROM activations a LEFT JOIN autointerp l USING (feature_id)
               WHERE l.feature_id IS NULL OR (l.model_name = ? AND l.prompt_version != ?)""",
            (HEURISTIC_MODEL, HEURISTIC_VERSION),
        ).fetchone()[0]
        if missing == 0 and not force:
            return 0, True
        check_inside_run(Path(db_path), follow=True)  # written in place: never through a link out of the run
        llm_labelled = {row[0] for row in connection.execute(
            "SELECT feature_id FROM autointerp WHERE model_name != ?", (HEURISTIC_MODEL,))}
        rows = [row for row in heuristic_labels(connection) if row[0] not in llm_labelled]
        connection.executemany(
            "INSERT OR REPLACE INTO autointerp VALUES (?, ?, ?, ?, NULL, NULL, ?, ?)",
            (row + (HEURISTIC_MODEL, HEURISTIC_VERSION) for row in rows),
        )
        connection.commit()
        return len(rows), False
    finally:
        connection.close()


def heuristic_labels(connection: sqlite3.Connection) -> Iterator[tuple[int, str, str, str]]:
    """(feature_id, label, seqs JSON, indices JSON) for every feature with stored examples."""
    rates = {
        row[0]: row[1:]
        for row in connection.execute("SELECT feature_id, rate_prompt, rate_prefix, rate_thinking, rate_answer FROM features")
    }
    current: int | None = None
    examples: list[tuple[int, int, str]] = []
    query = """
        SELECT a.feature_id, a.sequence_id, a.token_idx, t.decoded_token
        FROM activations a JOIN tokens t ON t.sequence_id = a.sequence_id AND t.token_idx = a.token_idx
        ORDER BY a.feature_id, a.strength DESC
    """
    for feature, sequence_id, token_idx, token in connection.execute(query):
        if feature != current:
            if current is not None:
                yield _label(current, examples, rates.get(current))
            current, examples = feature, []
        if len(examples) < TOP_EXAMPLES:
            examples.append((sequence_id, token_idx, token))
    if current is not None:
        yield _label(current, examples, rates.get(current))


def _label(feature: int, examples: list[tuple[int, int, str]], rates: tuple | None) -> tuple[int, str, str, str]:
    counts = Counter(token for _, _, token in examples)
    (first, first_count), *rest = counts.most_common(2)
    tokens = repr(first) if first_count * 2 > len(examples) or not rest else f"{first!r} / {rest[0][0]!r}"
    segment = SEGMENT_NAMES[max(range(len(SEGMENT_NAMES)), key=lambda i: rates[i] or 0.0)] if rates else "?"
    label = f"{tokens} ({segment})"
    cited = examples[:CITED_EXAMPLES]
    return feature, label, json.dumps([s for s, _, _ in cited]), json.dumps([i for _, i, _ in cited])
