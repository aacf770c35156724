"""features.db: the public R1 tables, our statistics, exact top examples, DuckDB compatibility."""

from __future__ import annotations

import json
import sqlite3
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.release.notebook import top_activations_join
from thinklens.activations.store import ActivationStore
from thinklens.features.db import FeatureDB, neighbors
from thinklens.features.schema import MIGRATIONS, migrate
from thinklens.sae.formats import load_sae

pytestmark = pytest.mark.integration


def _all_codes(run: Path) -> tuple[np.ndarray, dict]:
    """Dense codes of every non-excluded stored token, computed directly: (codes, index columns)."""
    store = ActivationStore(run / "activations")
    sae = load_sae(run / "sae")
    index = store.index().to_pydict()
    rows = torch.cat([store.read_rows(1, shard, slice(0, shard.rows)) for shard in store.shards()])
    keep = ~(np.asarray(index["special"]) | np.asarray(index["massive"]))
    with torch.no_grad():
        codes = sae.encode(rows[torch.from_numpy(keep)], batch_dependent=False).dense().numpy()
    kept = {key: np.asarray(values)[keep] for key, values in index.items()}
    return codes, kept


def test_public_tables_have_the_release_columns(indexed_run):
    connection = sqlite3.connect(indexed_run / "features.db")
    def columns(table: str) -> list[str]:
        return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    assert columns("tokens") == ["sequence_id", "token_idx", "token", "decoded_token"]
    assert columns("activations") == ["feature_id", "sequence_id", "token_idx", "strength"]
    assert columns("autointerp") == ["feature_id", "label", "seqs", "indices", "quality", "interestingness",
                                     "model_name", "prompt_version"]
    store = ActivationStore(indexed_run / "activations")
    assert connection.execute("SELECT count(*) FROM tokens").fetchone()[0] == store.token_count
    assert migrate(connection) == len(MIGRATIONS)  # idempotent: nothing to apply twice


def test_top_examples_and_statistics_equal_a_direct_computation(indexed_run):
    codes, index = _all_codes(indexed_run)
    db = FeatureDB(indexed_run / "features.db")
    firing = (codes > 0).sum(axis=0)
    for feature in np.argsort(-firing)[:5]:
        view = db.show(int(feature), top=8)
        strengths = np.sort(codes[:, feature][codes[:, feature] > 0])[::-1][:8]
        np.testing.assert_allclose([e.strength for e in view.examples], strengths, rtol=1e-5)
        assert view.firing_count == firing[feature]
        assert view.max_activation == pytest.approx(strengths[0], rel=1e-5)
        assert view.density == pytest.approx(firing[feature] / len(codes))
        best = int(np.argmax(codes[:, feature]))
        assert (view.examples[0].sequence_id, view.examples[0].token_idx) == (index["sequence_id"][best],
                                                                                index["token_idx"][best])
        thinking = index["segment"] == 2
        assert view.segment_rates["thinking"] == pytest.approx((codes[thinking, feature] > 0).mean())
        assert len(view.top_logits) == 10 and view.label
    # Stored examples: at most top + quantile samples per feature, and only for features that fire.
    counts = dict(sqlite3.connect(indexed_run / "features.db").execute(
        "SELECT feature_id, count(*) FROM activations GROUP BY feature_id"))
    assert max(counts.values()) <= 8 + 4 and set(counts) == set(np.flatnonzero(firing).tolist())


def test_release_notebook_join_runs_unchanged_in_duckdb_and_matches_show(indexed_run):
    duckdb = pytest.importorskip("duckdb")
    extensions = Path(sysconfig.get_paths()["purelib"]) / "duckdb_ext" / "extensions"
    connection = duckdb.connect(config={"extension_directory": str(extensions)})
    connection.execute("LOAD sqlite")
    db_path = indexed_run / "features.db"
    connection.execute(f"ATTACH '{db_path}' AS features (TYPE sqlite, READ_ONLY)")
    connection.execute("USE features")
    connection.execute(f"ATTACH '{db_path}' AS ds (TYPE sqlite, READ_ONLY)")
    feature_id = FeatureDB(db_path).search("")[0][0]  # the most frequent feature
    top_k_seq, sequence_window = 10, 10
    query = top_activations_join(feature_id, top_k_seq, sequence_window)
    rows = connection.execute(query).fetchall()
    view = FeatureDB(db_path).show(feature_id, top=top_k_seq, window=sequence_window)
    theirs = sorted((r[2], r[3], round(r[4], 5), r[5], r[6]) for r in rows)
    ours = sorted((e.sequence_id, e.token_idx, round(e.strength, 5), idx, text)
                  for e in view.examples for idx, text in e.tokens)
    assert theirs == ours and len(ours) > top_k_seq
    assert {r[1] for r in rows} == {view.label}


def test_meta_neighbors_and_errors(indexed_run):
    db = FeatureDB(indexed_run / "features.db")
    meta = db.meta()
    assert meta["layer"] == 1 and meta["sae_arch"] == "topk" and len(meta["sae_sha256"]) == 64
    assert meta["tokens"] == ActivationStore(indexed_run / "activations").token_count
    histogram = sqlite3.connect(indexed_run / "features.db").execute(
        "SELECT edges, counts FROM histograms LIMIT 1").fetchone()
    edges, counts = json.loads(histogram[0]), json.loads(histogram[1])
    assert len(edges) == len(counts) + 1 and sum(counts) > 0
    sae = load_sae(indexed_run / "sae")
    close = neighbors(sae, 0, n=3)
    directions = torch.nn.functional.normalize(sae.W_dec, dim=-1)
    expected = (directions @ directions[0])[[f for f, _ in close]]
    np.testing.assert_allclose([c for _, c in close], expected.detach().numpy(), rtol=1e-5)
    from thinklens.errors import ThinklensError

    with pytest.raises(ThinklensError, match=r"feature 99999 does not exist: this database has features 0\.\."):
        db.show(99999)
    with pytest.raises(ThinklensError, match="run `thinklens index"):
        FeatureDB(indexed_run / "missing.db")


def test_store_all_keeps_every_nonzero_activation(indexed_run, tmp_path):
    from thinklens.features.build import IndexConfig, build_index

    result = build_index(IndexConfig(store_all=True, batch_size=100), indexed_run / "sae", indexed_run / "activations",
                         indexed_run / "traces", tmp_path / "all.db", show_progress=False)
    codes, _ = _all_codes(indexed_run)
    stored = sqlite3.connect(tmp_path / "all.db").execute("SELECT count(*), sum(strength) FROM activations").fetchone()
    assert stored[0] == (codes > 0).sum() and result.indexed_tokens == len(codes)
    assert stored[1] == pytest.approx(codes.sum(), rel=1e-4)


def test_an_sae_saved_without_a_layer_is_indexed_only_on_the_layer_given(indexed_run, tmp_path):
    from thinklens.errors import ThinklensError
    from thinklens.features.build import IndexConfig, build_index
    from thinklens.sae.formats import save_sae

    run = indexed_run
    foreign = tmp_path / "foreign"
    sae = load_sae(run / "sae")
    sae.config = sae.config.model_copy(update={"layer": None})  # as a foreign file of the same width arrives
    save_sae(sae, foreign)
    settings = {"top": 8, "quantile_samples": 4, "batch_size": 256}  # the fixture's
    with pytest.raises(ThinklensError, match=r"names no layer: pass --layer L \(layers in the activations in .*: 1\)$"):
        build_index(IndexConfig(**settings), foreign, run / "activations", run / "traces", tmp_path / "none.db",
                    show_progress=False)
    with pytest.raises(ThinklensError, match=r"layer 0 is not in the activations in .* \(layers there: 1\)"):
        build_index(IndexConfig(**settings, layer=0), foreign, run / "activations", run / "traces",
                    tmp_path / "zero.db", show_progress=False)
    with pytest.raises(ThinklensError, match="reads layer 1 but layer 0 was asked"):
        build_index(IndexConfig(**settings, layer=0), run / "sae", run / "activations", run / "traces",
                    tmp_path / "contradicts.db", show_progress=False)
    assert not list(tmp_path.glob("*.db"))  # refused before anything was written

    build_index(IndexConfig(**settings, layer=1, device="cpu"), foreign, run / "activations", run / "traces",
                tmp_path / "given.db", show_progress=False)
    given, own = FeatureDB(tmp_path / "given.db"), FeatureDB(run / "features.db")
    assert given.meta()["layer"] == 1 and given.meta()["hook_name"] == "layers.1.resid_post"
    query = "SELECT * FROM features ORDER BY feature_id"
    assert given.connection.execute(query).fetchall() == own.connection.execute(query).fetchall()
