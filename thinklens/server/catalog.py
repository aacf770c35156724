"""What the server shows of a run, read-only: its summary, its feature list and each feature's page.

A `ServedRun` opens `features.db` read-only (one connection per thread), builds an in-memory FTS5
index over labels, activating tokens and logit-lens tokens (the run itself is never written), and
reads the SAE's decoder for neighbours. Every method returns plain JSON-ready data: the pages and
the `/api/` routes render the same dictionaries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.features.context import ContextEncoder
from thinklens.features.db import FeatureDB, context_tokens, open_read_only
from thinklens.pipeline.rundir import RunDir
from thinklens.sae.formats import load_sae
from thinklens.sae.sae import Sae

SORTS = {  # sort key → the SQL expression it orders by (descending)
    "density": "f.density",
    "max_activation": "f.max_activation",
    "firing_count": "f.firing_count",
    "feature_id": "-f.feature_id",
}
ENRICHMENT = "{rate} / (1e-9 + (coalesce(f.rate_prompt, 0) + coalesce(f.rate_prefix, 0) + coalesce(f.rate_thinking, 0) + coalesce(f.rate_answer, 0)) / 4.0)"
MAX_PAGE = 200
# A TopK SAE's feature value needs every feature's pre-activation (its k-th largest decides): a page re-encodes
# the contexts of this many examples exactly, and shows the stored values of the rest.
EXACT_FULL_ENCODES = 8


class UnknownFeature(ThinklensError):
    """A feature id the run's SAE lacks (the API answers 404)."""


@dataclass(frozen=True)
class FeatureQuery:
    """One page of the feature list: search text, sort, segment filter."""

    q: str = ""
    sort: str = "density"
    segment: str | None = None
    contrast: str | None = None
    offset: int = 0
    limit: int = 50


class ServedRun:
    """One run directory as the server reads it."""

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.rundir = RunDir(root)
        self.name = name or Path(root).resolve().name
        FeatureDB(self.rundir.features_db).close()  # a missing or unreadable database is one clear error, now
        self._local = threading.local()
        self._search = _search_index(self.db)
        self._search_lock = threading.Lock()

    # ----------------------------------------------------------------------------- connections
    @property
    def db(self) -> sqlite3.Connection:
        """This thread's read-only connection to features.db."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = open_read_only(self.rundir.features_db)
        return connection

    @cached_property
    def meta(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM meta")}

    @cached_property
    def n_features(self) -> int:
        return int(self.meta.get("d_sae") or self.db.execute("SELECT count(*) FROM features").fetchone()[0])

    @cached_property
    def top_n(self) -> int:
        """How many of each feature's stored examples are its top activations (the rest: quantile samples)."""
        return int((self.meta.get("arguments") or {}).get("top", 10))

    @cached_property
    def sae(self) -> Sae | None:
        """The run's SAE (neighbours, exact context activations), or None when the run holds none."""
        if not self.rundir.sae_weights.is_file():
            return None
        try:
            return load_sae(self.rundir.sae).eval()
        except ThinklensError:
            return None

    @cached_property
    def _directions(self) -> torch.Tensor | None:
        return None if self.sae is None else torch.nn.functional.normalize(self.sae.W_dec.detach().float(), dim=-1)

    @cached_property
    def context(self) -> ContextEncoder | None:
        """Exact per-token activations from the run's store and SAE, when it still holds both."""
        try:
            return ContextEncoder.for_store(self.rundir.activation_store, self.sae, self.meta.get("layer"))
        except ThinklensError:
            return None

    def decoder_neighbours(self, feature_id: int, n: int = 10) -> list[dict[str, Any]]:
        """The `n` features whose decoder directions are nearest in cosine (none without the SAE)."""
        if self._directions is None:
            return []
        cosine = self._directions @ self._directions[feature_id]
        cosine[feature_id] = -2.0
        best = cosine.topk(min(n, len(cosine) - 1))
        labels = self.label_of(best.indices.tolist())
        return [{"feature_id": fid, "cosine": value, "label": labels.get(fid, "")}
                for fid, value in zip(best.indices.tolist(), best.values.tolist(), strict=True)]

    @cached_property
    def contrasts(self) -> list[str]:
        try:
            return [row[0] for row in self.db.execute("SELECT name FROM contrast_sets ORDER BY name")]
        except sqlite3.OperationalError:
            return []

    # ----------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """Model, layer, SAE, its eval metrics, the findings' verdicts, and which pages exist."""
        eval_result = _envelope_result(self.rundir.eval_json) or {}
        findings = _envelope_result(self.rundir.findings_json) or {}
        overall = eval_result.get("overall") or {}
        return {
            "name": self.name,
            "model": self.meta.get("model"),
            "layer": self.meta.get("layer"),
            "hook_name": self.meta.get("hook_name"),
            "sae": {"arch": self.meta.get("sae_arch"), "d_sae": self.n_features, "k": self.meta.get("k"),
                    "sha256": self.meta.get("sae_sha256")},
            "tokens": self.meta.get("tokens"),
            "eval": {key: overall.get(key) for key in ("fvu", "l0", "dead_fraction", "dense_fraction") if key in overall},
            "eval_segments": eval_result.get("segments", {}),
            "findings": [{"claim": f.get("claim"), "title": f.get("title"), "verdict": f.get("verdict"),
                          "value": f.get("value"), "low": f.get("low"), "high": f.get("high")}
                         for f in findings.get("findings", [])],
            "has_map": self.rundir.map_html.is_file(),
            "has_report": self.rundir.report_html.is_file(),
            "contrasts": self.contrasts,
        }

    # ----------------------------------------------------------------------------- the list
    def features(self, query: FeatureQuery) -> dict[str, Any]:
        """One page of features: matching `query.q` (FTS5), filtered by segment, sorted."""
        if query.sort not in SORTS and not query.sort.startswith(("enrichment", "contrast")):
            raise ThinklensError(f"unknown sort {query.sort!r}: use one of {sorted(SORTS)}, enrichment or contrast")
        if query.segment is not None and query.segment not in SEGMENT_NAMES:
            raise ThinklensError(f"unknown segment {query.segment!r}: use one of {list(SEGMENT_NAMES)}")
        limit = max(1, min(query.limit, MAX_PAGE))
        where, params = [], []
        if query.q.strip():
            ids = self.search_ids(query.q)
            if not ids:
                return {"total": 0, "features": [], "offset": query.offset, "limit": limit}
            where.append(f"f.feature_id IN ({','.join('?' * len(ids))})")
            params += ids
        if query.segment is not None:
            where.append(f"f.rate_{query.segment} = max(coalesce(f.rate_prompt, 0), coalesce(f.rate_prefix, 0), "
                         "coalesce(f.rate_thinking, 0), coalesce(f.rate_answer, 0)) AND f.firing_count > 0")
        join, order = "", SORTS.get(query.sort)
        if query.sort == "enrichment":
            segment = query.segment or "thinking"
            order = ENRICHMENT.format(rate=f"coalesce(f.rate_{segment}, 0)")
        elif query.sort == "contrast":
            if query.contrast not in self.contrasts:
                raise ThinklensError(f"sort=contrast needs contrast= one of {self.contrasts or 'none (run contrast)'}")
            join, order = "JOIN contrasts c ON c.feature_id = f.feature_id AND c.name = ?", "abs(c.auroc - 0.5)"
            params.insert(0, query.contrast)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self.db.execute(f"SELECT count(*) FROM features f {join} {clause}", params).fetchone()[0]
        rows = self.db.execute(
            f"""SELECT f.feature_id, coalesce(a.label, ''), f.firing_count, f.density, f.max_activation,
                       f.rate_prompt, f.rate_prefix, f.rate_thinking, f.rate_answer
                FROM features f {join} LEFT JOIN autointerp a ON a.feature_id = f.feature_id {clause}
                ORDER BY {order} DESC, f.feature_id LIMIT ? OFFSET ?""", [*params, limit, max(0, query.offset)])
        return {"total": total, "offset": max(0, query.offset), "limit": limit, "features": [
            {"feature_id": fid, "label": label, "firing_count": count, "density": density, "max_activation": peak,
             "segment_rates": dict(zip(SEGMENT_NAMES, rates, strict=True))}
            for fid, label, count, density, peak, *rates in rows]}

    def search_ids(self, text: str, limit: int = 5000) -> list[int]:
        """Feature ids whose label, activating tokens or logit-lens tokens match `text` (FTS5, best first)."""
        terms = [term for term in text.replace('"', " ").split() if term]
        if not terms:
            return []
        match = " ".join(f'"{term}"*' for term in terms)  # each term quoted: no FTS5 syntax from the user
        with self._search_lock:
            return [row[0] for row in self._search.execute(
                "SELECT rowid FROM search WHERE search MATCH ? ORDER BY rank LIMIT ?", (match, limit))]

    # ----------------------------------------------------------------------------- one feature
    def check_feature(self, feature_id: int) -> None:
        if not 0 <= feature_id < self.n_features:
            raise UnknownFeature(f"feature {feature_id} does not exist: this run has features 0..{self.n_features - 1}")

    def feature(self, feature_id: int, window: int = 24) -> dict[str, Any]:
        """Everything a feature page shows, as data."""
        self.check_feature(feature_id)
        row = self.db.execute(
            """SELECT f.firing_count, f.density, f.max_activation, f.mean_activation, f.rate_prompt, f.rate_prefix,
                      f.rate_thinking, f.rate_answer, f.top_logits, f.bottom_logits
               FROM features f WHERE f.feature_id = ?""", (feature_id,)).fetchone()
        if row is None:  # an id the SAE has but the database never saw fire
            row = (0, 0.0, 0.0, 0.0, None, None, None, None, "[]", "[]")
        count, density, peak, mean, *rates, top_logits, bottom_logits = row
        examples = self.examples(feature_id, window)
        return {
            "feature_id": feature_id,
            "run": self.name,
            "labels": self.labels(feature_id),
            "firing_count": count, "density": density, "max_activation": peak, "mean_activation": mean,
            "segment_rates": dict(zip(SEGMENT_NAMES, rates, strict=True)),
            "histogram": self.histogram(feature_id),
            "top_logits": json.loads(top_logits or "[]"),
            "bottom_logits": json.loads(bottom_logits or "[]"),
            "top_examples": examples[: self.top_n],
            "quantile_examples": examples[self.top_n:],
            "cooccurring": self.cooccurring(feature_id),
            "contrasts": self.feature_contrasts(feature_id),
        }

    def labels(self, feature_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT label, quality, interestingness, model_name, prompt_version FROM autointerp "
                               "WHERE feature_id = ?", (feature_id,))
        labels = [{"label": label, "quality": quality, "interestingness": interest, "model_name": model,
                   "prompt_version": version, "scores": []} for label, quality, interest, model, version in rows]
        try:
            scores = self.db.execute(
                "SELECT model_name, scorer, method, control, balanced_accuracy, f1, auroc, n, unparsable "
                "FROM label_scores WHERE feature_id = ? ORDER BY control, method", (feature_id,)).fetchall()
        except sqlite3.OperationalError:  # a database from before `explain` existed
            scores = []
        for label in labels:
            label["scores"] = [{"scorer": scorer, "method": method, "control": bool(control), "balanced_accuracy": ba,
                                "f1": f1, "auroc": auroc, "n": n, "unparsable": bool(bad)}
                               for model, scorer, method, control, ba, f1, auroc, n, bad in scores
                               if model == label["model_name"]]
        return labels

    def histogram(self, feature_id: int) -> dict[str, list[float]]:
        row = self.db.execute("SELECT edges, counts FROM histograms WHERE feature_id = ?", (feature_id,)).fetchone()
        return {"edges": json.loads(row[0]), "counts": json.loads(row[1])} if row else {"edges": [], "counts": []}

    def examples(self, feature_id: int, window: int = 24) -> list[dict[str, Any]]:
        """Every stored example of the feature, strongest first: its context as tokens, each token with this
        feature's stored activation there (0 where none was stored), and the segment of each token."""
        half = max(1, window // 2)
        stored = self.db.execute("SELECT sequence_id, token_idx, strength FROM activations WHERE feature_id = ? "
                                 "ORDER BY strength DESC", (feature_id,)).fetchall()
        exact_budget = len(stored) if self.context is None or self.context.cheap else EXACT_FULL_ENCODES
        exact = self.context.windows(feature_id, [(s, t - half, t + half) for s, t, _ in stored[:exact_budget]]) \
            if self.context is not None else []
        examples = []
        for rank, (sequence_id, token_idx, strength) in enumerate(stored):
            tokens = context_tokens(self.db, feature_id, sequence_id, token_idx - half, token_idx + half)
            values = exact[rank] if rank < len(exact) else {}
            examples.append({"sequence_id": sequence_id, "token_idx": token_idx, "strength": strength,
                             "exact": bool(values),
                             "tokens": [{"idx": idx, "text": text, "segment": SEGMENT_NAMES[segment]
                                         if 0 <= segment < len(SEGMENT_NAMES) else "?",
                                         "activation": values.get(idx, value)}
                                        for idx, text, segment, value in tokens]})
        return examples

    def cooccurring(self, feature_id: int, n: int = 10) -> list[dict[str, Any]]:
        """Features stored as firing on the same tokens as this one's stored examples, most shared first."""
        with self._search_lock:  # the in-memory copy of the stored positions, indexed by token
            rows = self._search.execute(
                """SELECT b.feature_id, count(*) AS shared FROM positions a
                   JOIN positions b ON b.sequence_id = a.sequence_id AND b.token_idx = a.token_idx
                   WHERE a.feature_id = ? AND b.feature_id != ? GROUP BY b.feature_id
                   ORDER BY shared DESC, b.feature_id LIMIT ?""", (feature_id, feature_id, n)).fetchall()
        labels = self.label_of([fid for fid, _ in rows])
        return [{"feature_id": fid, "shared": shared, "label": labels.get(fid, "")} for fid, shared in rows]

    def feature_contrasts(self, feature_id: int) -> list[dict[str, Any]]:
        if not self.contrasts:
            return []
        rows = self.db.execute("SELECT name, auroc, auroc_low, auroc_high, log2_rate_ratio FROM contrasts "
                               "WHERE feature_id = ? ORDER BY name", (feature_id,))
        return [{"name": name, "auroc": auroc, "low": low, "high": high, "log2_rate_ratio": ratio}
                for name, auroc, low, high, ratio in rows]

    def label_of(self, feature_ids: list[int]) -> dict[int, str]:
        if not feature_ids:
            return {}
        marks = ",".join("?" * len(feature_ids))
        return dict(self.db.execute(f"SELECT feature_id, label FROM autointerp WHERE feature_id IN ({marks})",
                                    feature_ids))

    def map_points(self) -> list[dict[str, Any]]:
        """The feature map's points (analysis/map.json), or none when the map was not drawn."""
        return (_envelope_result(self.rundir.analysis_json("map")) or {}).get("points", [])


def _envelope_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()).get("result")
    except (OSError, ValueError, AttributeError):
        return None


def _search_index(db: sqlite3.Connection) -> sqlite3.Connection:
    """In memory: an FTS5 table over each feature's label, activating tokens and logit-lens tokens, and
    the stored (feature, token) positions indexed by token (co-occurrence), as the read-only run has no
    such index."""
    index = sqlite3.connect(":memory:", check_same_thread=False)
    index.execute("CREATE VIRTUAL TABLE search USING fts5(label, tokens, logits, tokenize='unicode61')")
    index.execute("CREATE TABLE positions (feature_id INTEGER, sequence_id INTEGER, token_idx INTEGER)")
    labels = dict(db.execute("SELECT feature_id, coalesce(label, '') FROM autointerp"))
    tokens: dict[int, list[str]] = {}
    positions = []
    for fid, sequence_id, token_idx, text in db.execute(
            """SELECT a.feature_id, a.sequence_id, a.token_idx, v.decoded_token FROM activations a
               JOIN token_ids t ON t.sequence_id = a.sequence_id AND t.token_idx = a.token_idx
               JOIN vocab v ON v.token = t.token"""):
        tokens.setdefault(fid, []).append(text)
        positions.append((fid, sequence_id, token_idx))
    index.executemany("INSERT INTO positions VALUES (?, ?, ?)", positions)
    index.execute("CREATE INDEX positions_by_token ON positions (sequence_id, token_idx)")
    index.execute("CREATE INDEX positions_by_feature ON positions (feature_id)")
    rows = []
    for fid, top_logits in db.execute("SELECT feature_id, top_logits FROM features"):
        logits = " ".join(str(pair[0]) for pair in json.loads(top_logits or "[]"))
        rows.append((fid, labels.get(fid, ""), " ".join(sorted(set(tokens.get(fid, [])))), logits))
    index.executemany("INSERT INTO search (rowid, label, tokens, logits) VALUES (?, ?, ?, ?)", rows)
    index.commit()
    return index
