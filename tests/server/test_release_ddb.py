"""`serve --ddb`: a DuckDB database in Goodfire's R1 release layout (and its SQLite autointerp file),
built here from the tiny run with the release's table and column names and types, browsed read-only."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import duckdb
import pytest

from tests.server.conftest import http, live_server
from thinklens.errors import ThinklensError
from thinklens.server.app import load_served
from thinklens.server.config import ServeConfig
from thinklens.server.ddb import ReleaseRun

pytestmark = pytest.mark.integration


def make_release(features_db: Path, out: Path) -> tuple[Path, Path]:
    """`logic-1.ddb` (tokens, activations) and `autointerp.db`, as the release ships them."""
    ddb, autointerp = out / "logic-1.ddb", out / "autointerp.db"
    source = sqlite3.connect(features_db)
    tokens = source.execute("SELECT sequence_id, token_idx, token, decoded_token FROM tokens").fetchall()
    activations = source.execute("SELECT feature_id, sequence_id, token_idx, strength FROM activations").fetchall()
    labels = source.execute("SELECT * FROM autointerp").fetchall()
    source.close()
    with duckdb.connect(str(ddb)) as con:
        con.execute("CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)")
        con.execute("CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, "
                    "strength FLOAT)")
        con.executemany("INSERT INTO tokens VALUES (?, ?, ?, ?)", tokens)
        con.executemany("INSERT INTO activations VALUES (?, ?, ?, ?)", activations)
    with sqlite3.connect(autointerp) as con:
        con.execute("CREATE TABLE autointerp (feature_id INTEGER PRIMARY KEY, label TEXT, seqs TEXT, indices TEXT, "
                    "quality REAL, interestingness REAL, model_name TEXT, prompt_version TEXT)")
        con.executemany("INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(f, label, seqs, indices, 0.9, 0.6, "claude-3-7-sonnet-latest", "v0-dev")
                         for f, label, seqs, indices, *_ in labels])
    return ddb, autointerp


@pytest.fixture(scope="module")
def release(indexed_run, tmp_path_factory):
    return make_release(indexed_run / "features.db", tmp_path_factory.mktemp("release"))


def _digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


def test_a_release_database_is_summarised_like_a_run(release, indexed_run):
    ddb, autointerp = release
    before = _digest(ddb, autointerp)
    run = ReleaseRun(ddb, autointerp)
    with sqlite3.connect(indexed_run / "features.db") as ours:
        busiest, count, peak = ours.execute(
            "SELECT feature_id, count(*), max(strength) FROM activations GROUP BY feature_id "
            "ORDER BY count(*) DESC, feature_id LIMIT 1").fetchone()
    feature = run.feature(busiest)
    assert feature["firing_count"] == count and feature["max_activation"] == pytest.approx(peak, rel=1e-6)
    assert feature["labels"][0]["model_name"] == "claude-3-7-sonnet-latest" and feature["labels"][0]["quality"] == 0.9
    assert sum(feature["histogram"]["counts"]) == count  # every stored strength lands in one bin
    top = feature["top_examples"][0]
    assert top["strength"] == pytest.approx(peak, rel=1e-6)
    at = next(token for token in top["tokens"] if token["idx"] == top["token_idx"])
    assert at["activation"] == pytest.approx(peak, rel=1e-6)
    # The context is the release notebook's join: the same tokens around the same position.
    with duckdb.connect(str(ddb), read_only=True) as con:
        expected = [row[0] for row in con.execute(
            "SELECT decoded_token FROM tokens WHERE sequence_id = ? AND abs(token_idx - ?) <= 12 ORDER BY token_idx",
            [top["sequence_id"], top["token_idx"]]).fetchall()]
    assert [token["text"] for token in top["tokens"]] == expected
    assert run.features(type("Q", (), {"q": "", "sort": "firing_count", "segment": None, "contrast": None,
                                       "offset": 0, "limit": 1})())["features"][0]["feature_id"] == busiest
    assert _digest(ddb, autointerp) == before  # opened read-only


def test_serve_ddb_browses_it_without_a_model(release):
    ddb, autointerp = release
    config = ServeConfig(ddb=ddb, autointerp=autointerp)
    with live_server(config, load_served(config)) as url:
        status, runs = http("GET", f"{url}/api/runs")
        assert status == 200 and runs[0]["name"] == "logic-1" and runs[0]["release"]["ddb"] == "logic-1.ddb"
        status, page = http("GET", f"{url}/api/runs/logic-1/features?sort=max_activation&limit=3")
        feature_id = page["features"][0]["feature_id"]
        for path in (f"/runs/logic-1/features/{feature_id}", "/runs/logic-1/features?q=the", "/runs/logic-1"):
            status, _ = http("GET", url + path)
            assert status == 200, path
        status, body = http("GET", f"{url}/runs/logic-1/map")
        assert status == 404 and "no map" in body["error"]["message"]
        status, body = http("POST", f"{url}/v1/chat/completions",
                            {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 503 and "without its model" in body["error"]["message"]


def test_a_database_in_another_layout_is_one_clear_error(tmp_path, release):
    wrong = tmp_path / "other.ddb"
    with duckdb.connect(str(wrong)) as con:
        con.execute("CREATE TABLE tokens (sequence_id BIGINT, position INTEGER)")
    with pytest.raises(ThinklensError, match="has no table 'activations'|lacks"):
        ReleaseRun(wrong)
    text = tmp_path / "text.ddb"
    text.write_text("not a database")
    with pytest.raises(ThinklensError, match="not a readable DuckDB database"):
        ReleaseRun(text)
    with pytest.raises(ThinklensError, match="no autointerp file"):
        ReleaseRun(release[0], tmp_path / "missing.db")
