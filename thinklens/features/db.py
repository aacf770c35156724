"""Read-only queries on `features.db`: show a feature, search labels and tokens, neighbours.

`show` returns exactly the rows of the public R1 release notebook's join (top activations of one
feature, each with the tokens within `window // 2` positions, joined to its label), grouped into
examples; a test checks that equality through DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.sae.sae import Sae

EXAMPLES_QUERY = """
WITH top_acts AS (
    SELECT sequence_id, token_idx, strength FROM activations
    WHERE feature_id = ? ORDER BY strength DESC LIMIT ?
)
SELECT top_acts.sequence_id, top_acts.token_idx, top_acts.strength, t.token_idx, t.decoded_token
FROM top_acts JOIN tokens t ON t.sequence_id = top_acts.sequence_id
WHERE abs(t.token_idx - top_acts.token_idx) <= ?
ORDER BY top_acts.strength DESC, top_acts.sequence_id, top_acts.token_idx, t.token_idx
"""


@dataclass
class Example:
    """One activating token with its context window."""

    sequence_id: int
    token_idx: int
    strength: float
    tokens: list[tuple[int, str]]  # (token_idx, decoded_token) around it, in order

    def parts(self) -> tuple[str, str, str]:
        """(text before, the activating token, text after)."""
        before = "".join(text for idx, text in self.tokens if idx < self.token_idx)
        at = "".join(text for idx, text in self.tokens if idx == self.token_idx)
        after = "".join(text for idx, text in self.tokens if idx > self.token_idx)
        return before, at, after

    def to_json(self) -> dict[str, Any]:
        """The example as analyses and contrasts store it: its three parts, strength and position."""
        before, token, after = self.parts()
        return {"before": before, "token": token, "after": after, "strength": self.strength,
                "sequence_id": self.sequence_id, "token_idx": self.token_idx}


@dataclass
class FeatureView:
    """Everything `show` prints about a feature."""

    feature_id: int
    label: str | None
    firing_count: int
    density: float
    max_activation: float
    mean_activation: float
    segment_rates: dict[str, float]  # only the segments the database knows (an imported release has none)
    top_logits: list[tuple[str, float]]
    bottom_logits: list[tuple[str, float]]
    examples: list[Example] = field(default_factory=list)


CONTEXT_QUERY = """
SELECT t.token_idx, v.decoded_token, t.segment, coalesce(a.strength, 0)
FROM token_ids t JOIN vocab v ON v.token = t.token
LEFT JOIN activations a ON a.feature_id = ? AND a.sequence_id = t.sequence_id AND a.token_idx = t.token_idx
WHERE t.sequence_id = ? AND t.token_idx BETWEEN ? AND ? ORDER BY t.token_idx
"""


def context_tokens(connection: sqlite3.Connection, feature_id: int, sequence_id: int, first: int,
                   last: int) -> list[tuple[int, str, int, float]]:
    """(token_idx, decoded_token, segment, the feature's stored activation or 0) of a sequence's tokens
    first..last: an example's context as the database holds it."""
    return connection.execute(CONTEXT_QUERY, (feature_id, sequence_id, first, last)).fetchall()


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only SQLite connection to `path`, whatever characters its name holds (`#` and `?` end the
    path part of a URI unless quoted)."""
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, check_same_thread=False)


class FeatureDB:
    """A read-only connection to a feature database."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ThinklensError(f"no feature database at {path}: run `thinklens index {path.parent}` first")
        self.path = path
        self.connection = open_read_only(path)
        try:
            self.connection.execute("SELECT count(*) FROM features").fetchone()
        except sqlite3.DatabaseError as exc:
            self.connection.close()
            raise ThinklensError(f"{path} is not a readable feature database ({exc}): rebuild it with "
                                 f"`thinklens run --config {path.parent}/run.yaml --from index`") from None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def meta(self) -> dict[str, object]:
        return {key: json.loads(value) for key, value in self.connection.execute("SELECT key, value FROM meta")}

    @property
    def n_features(self) -> int:
        return int(self.connection.execute("SELECT count(*) FROM features").fetchone()[0])

    def examples(self, feature_id: int, top: int = 10, window: int = 10) -> list[Example]:
        """The `top` strongest activations of a feature, each with ±window//2 tokens of context."""
        examples: dict[tuple[int, int], Example] = {}
        for sequence_id, token_idx, strength, idx, text in self.connection.execute(
            EXAMPLES_QUERY, (feature_id, top, window // 2)
        ):
            key = (sequence_id, token_idx)
            if key not in examples:
                examples[key] = Example(sequence_id, token_idx, strength, [])
            examples[key].tokens.append((idx, text))
        return list(examples.values())

    def show(self, feature_id: int, top: int = 10, window: int = 10) -> FeatureView:
        """Label, statistics, logit lens and top examples of one feature."""
        row = None if not 0 <= feature_id < 2**63 else self.connection.execute(
            "SELECT f.*, a.label FROM features f LEFT JOIN autointerp a USING (feature_id) WHERE f.feature_id = ?",
            (feature_id,),
        ).fetchone()
        if row is None:
            raise ThinklensError(f"feature {feature_id} does not exist: this database has features 0..{self.n_features - 1}")
        (_, firing, density, max_activation, mean_activation, *rates, top_logits, bottom_logits, label) = row
        return FeatureView(
            feature_id=feature_id,
            label=label,
            firing_count=firing,
            density=density,
            max_activation=max_activation,
            mean_activation=mean_activation,
            segment_rates={name: rate for name, rate in zip(SEGMENT_NAMES, rates, strict=True) if rate is not None},
            top_logits=[tuple(pair) for pair in json.loads(top_logits or "[]")],
            bottom_logits=[tuple(pair) for pair in json.loads(bottom_logits or "[]")],
            examples=self.examples(feature_id, top, window),
        )

    def search(self, text: str, limit: int = 20) -> list[tuple[int, str, int]]:
        """Features whose label or top logit tokens contain `text` (case-insensitive), most frequent first:
        (feature_id, label, firing_count)."""
        def like(value: str) -> str:  # % and _ are the text's own characters, not wildcards
            return "%" + value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

        # Top tokens are stored as JSON, where "×" is written "\u00d7": look for both spellings.
        plain, escaped = like(text), like(json.dumps(text)[1:-1])
        return list(self.connection.execute(
            """SELECT f.feature_id, coalesce(a.label, ''), f.firing_count
               FROM features f LEFT JOIN autointerp a USING (feature_id)
               WHERE lower(a.label) LIKE ?1 ESCAPE '\\' OR lower(f.top_logits) LIKE ?1 ESCAPE '\\'
                  OR lower(f.top_logits) LIKE ?2 ESCAPE '\\'
               ORDER BY f.firing_count DESC LIMIT ?3""",
            (plain, escaped, limit),
        ))

    def labels_digest(self) -> str:
        """sha256 of every label with its author and version: what a page that shows labels was made from."""
        digest = hashlib.sha256()
        for row in self.connection.execute(
            "SELECT feature_id, label, model_name, prompt_version FROM autointerp ORDER BY feature_id"
        ):
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()

    def vocabulary(self) -> dict[int, str]:
        """Every stored token's id and decoded text (the `vocab` table)."""
        return dict(self.connection.execute("SELECT token, decoded_token FROM vocab"))

    def labels(self, feature_ids: list[int]) -> dict[int, str]:
        marks = ",".join("?" * len(feature_ids))
        return dict(self.connection.execute(
            f"SELECT feature_id, label FROM autointerp WHERE feature_id IN ({marks})", feature_ids
        ))


def neighbors(sae: Sae, feature_id: int, n: int = 10) -> list[tuple[int, float]]:
    """The `n` features whose decoder directions are closest in cosine to `feature_id`'s."""
    if not 0 <= feature_id < sae.config.d_sae:
        raise ThinklensError(f"feature {feature_id} does not exist: the SAE has features 0..{sae.config.d_sae - 1}")
    with torch.no_grad():
        directions = torch.nn.functional.normalize(sae.W_dec, dim=-1)
        cosine = directions @ directions[feature_id]
        cosine[feature_id] = -2.0  # not its own neighbour
        best = cosine.topk(n)
    return list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
