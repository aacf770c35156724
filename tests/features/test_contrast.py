"""Contrasts: selectors, the binned AUROC, and a planted feature recovered first on a real run."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from thinklens.activations.store import ActivationStore, from_storage, to_storage
from thinklens.cli import app
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.features.build import IndexConfig, build_index
from thinklens.features.contrast import (
    ContrastConfig,
    Selector,
    auroc_from_histograms,
    contrast_scores,
    load_direction,
    read_traces,
    run_contrast,
)
from thinklens.pipeline.rundir import RunDir
from thinklens.sae.formats import load_sae

TRACES = [
    {"sequence_id": 0, "source": "arithmetic", "correct": True, "metadata": {"operator": "*", "operators": ["*"], "steps": 1}},
    {"sequence_id": 1, "source": "arithmetic", "correct": False, "metadata": {"operator": "/", "operators": ["/", "+"],
                                                                              "steps": 2}},
    {"sequence_id": 2, "source": "logic", "correct": True, "metadata": {"kind": "second"}},
]


def test_selectors_match_trace_columns_metadata_lists_and_negation():
    def ids(text: str) -> list[int]:
        return Selector.parse(text).sequence_ids(TRACES).tolist()

    assert ids("operator=*") == [0]
    assert ids("operators=+") == [1]  # a list value matches when it holds the value
    assert ids("correct=true") == [0, 2]
    assert ids("source=arithmetic,steps=2") == [1]
    assert ids("operator!=*") == [1, 2]
    selector = Selector.parse("segment=thinking,source=logic", segment="thinking")
    assert selector.segments == {SEGMENT_NAMES.index("thinking")}
    assert Selector.parse("segment!=prompt").segments == set(range(len(SEGMENT_NAMES))) - {0}


def test_token_terms_resolve_against_the_vocabulary():
    vocab = {1: " Wait", 2: "Wait", 3: " wait", 4: ".", 5: " So"}
    assert Selector.parse("token=Wait").token_ids(vocab)["token"].tolist() == [1, 2]  # surrounding spaces stripped
    assert Selector.parse("segment=thinking,token!=Wait").token_ids(vocab)["token"].tolist() == [3, 4, 5]
    after = Selector.parse("next_token!=Wait").token_ids(vocab)["next_token"].tolist()
    assert after == [-1, 3, 4, 5]  # -1: the last token of a sequence, which no token follows
    both = Selector.parse("token=.,next_token=Wait").token_ids(vocab)
    assert both["token"].tolist() == [4] and both["next_token"].tolist() == [1, 2]
    assert Selector.parse("operator=*").token_ids(vocab) == {}
    with pytest.raises(ThinklensError, match="allow no token"):
        Selector.parse("token=Hmm").token_ids(vocab)


@pytest.mark.parametrize(("text", "segment", "message"), [
    ("colour=red", None, "unknown key 'colour'"),
    ("operator", None, "is not key=value"),
    ("segment=middle", None, "unknown segment 'middle'"),
    ("segment=answer", "thinking", "selects no segment"),
])
def test_selector_errors_name_the_fix(text, segment, message):
    with pytest.raises(ThinklensError, match=message):
        Selector.parse(text, segment).sequence_ids(TRACES)


def test_binned_auroc_equals_the_exact_one_when_values_fall_in_distinct_bins_and_counts_ties_half():
    rng = np.random.default_rng(0)
    a_values = rng.integers(0, 12, 300)  # bin indices; 0 is "did not fire"
    b_values = rng.integers(0, 9, 500)
    a, b = np.bincount(a_values, minlength=12), np.bincount(b_values, minlength=12)
    exact = roc_auc_score(np.r_[np.ones(300), np.zeros(500)], np.r_[a_values, b_values])  # ties count half there too
    assert auroc_from_histograms(a, b) == pytest.approx(exact, abs=1e-12)
    assert auroc_from_histograms(np.array([0, 0, 5]), np.array([7, 0, 0])) == 1.0
    assert auroc_from_histograms(np.array([4, 0]), np.array([4, 0])) == 0.5


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_traces():
    rng = np.random.default_rng(1)

    def histogram(groups: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros((groups, 2, 1, 4), dtype=np.int64)
        counts[:, 0, 0] = rng.multinomial(200, [0.5, 0.2, 0.2, 0.1], size=groups)
        counts[:, 1, 0] = rng.multinomial(200, [0.7, 0.2, 0.05, 0.05], size=groups)
        return counts, counts.sum(axis=-1)[:, :, 0]

    few, many = (contrast_scores(*histogram(groups), bootstrap=200, seed=0) for groups in (4, 64))
    for scores in (few, many):
        assert scores["auroc_low"][0] <= scores["auroc"][0] <= scores["auroc_high"][0]
        assert scores["ratio_low"][0] <= scores["log2_rate_ratio"][0] <= scores["ratio_high"][0]
    assert many["auroc_high"][0] - many["auroc_low"][0] < few["auroc_high"][0] - few["auroc_low"][0]


def _plant(run, feature: int, star: set[int], one_token: bool = False, before_token: int | None = None) -> torch.Tensor:
    """Add a multiple of the SAE's encoder row `feature` to the thinking tokens of the `star` traces (or to
    the first of them only, or to those followed by `before_token` only), then index again, so the
    database's maxima are those of the planted store."""
    rundir = RunDir(run)
    sae = load_sae(rundir.sae)
    store = ActivationStore(rundir.activations)
    layer = store.layers[0]
    direction = torch.nn.functional.normalize(sae.encoder_weight[feature].detach(), dim=0)
    thinking = SEGMENT_NAMES.index("thinking")
    for shard in store.shards():
        index = store.read_index(shard, ["sequence_id", "segment", "special", "massive", "token_id"]).to_pydict()
        kept = ~np.asarray(index["special"]) & ~np.asarray(index["massive"])  # the tokens contrast reads
        if before_token is not None:
            sequence, token = np.asarray(index["sequence_id"]), np.asarray(index["token_id"])
            kept[:-1] &= (token[1:] == before_token) & (sequence[1:] == sequence[:-1])
            kept[-1] = False
        rows = np.flatnonzero(np.isin(index["sequence_id"], list(star)) & (np.asarray(index["segment"]) == thinking)
                              & kept)
        if one_token:
            _, first = np.unique(np.asarray(index["sequence_id"])[rows], return_index=True)
            rows = rows[first]
        mapped = np.memmap(store.shard_path(layer, shard.shard), dtype=store.open_shard(layer, shard).dtype, mode="r+",
                           shape=(shard.rows, store.d_model))
        x = from_storage(np.array(mapped[rows]), store.dtype).float()
        mapped[rows] = to_storage(x + 3 * x.norm(dim=-1, keepdim=True) * direction, store.dtype)
        mapped.flush()
        del mapped
    rundir.features_db.unlink()  # the store changed under the same identity: index would keep the old database
    build_index(IndexConfig(top=8, quantile_samples=4, batch_size=256), rundir.sae, rundir.activations, rundir.traces,
                rundir.features_db, show_progress=False)
    return direction


def test_contrast_recovers_a_planted_feature_first_and_writes_table_and_direction(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    rundir = RunDir(run)
    star = {t["sequence_id"] for t in read_traces(rundir.traces) if t["metadata"].get("operator") == "*"}
    assert 0 < len(star) < len(read_traces(rundir.traces))
    planted = 3
    direction = _plant(run, planted, star)
    config = ContrastConfig(a="operator=*", b="operator!=*", segment="thinking", bootstrap=50, groups=8, unit="token")
    out = rundir.contrast_dir(config.contrast_name())
    report = run_contrast(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db, out,
                          show_progress=False, device="cpu")
    top = report.a_features[0]
    assert top.feature_id == planted
    assert top.auroc > 0.95 and top.auroc_low > 0.9 and top.rate_a > 0.9 > top.rate_b
    assert report.traces["a"] == len(star)
    saved = load_direction(out / "direction.safetensors")
    assert torch.nn.functional.cosine_similarity(saved, direction, dim=0) > 0.9
    connection = sqlite3.connect(rundir.features_db)
    (best,) = connection.execute("SELECT feature_id FROM contrasts WHERE name = ? ORDER BY auroc DESC LIMIT 1",
                                 (report.name,)).fetchone()
    rows, = connection.execute("SELECT count(*) FROM contrasts WHERE name = ?", (report.name,)).fetchone()
    sets = connection.execute("SELECT a, b, segment FROM contrast_sets").fetchall()
    connection.close()
    assert best == planted and rows == load_sae(rundir.sae).config.d_sae
    assert sets == [("operator=*", "operator!=*", "thinking")]
    # Run again: the contrast's rows are replaced, not duplicated.
    run_contrast(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db, out, show_progress=False,
                 device="cpu")
    with sqlite3.connect(rundir.features_db) as connection:
        assert connection.execute("SELECT count(*) FROM contrasts").fetchone()[0] == rows

    result = CliRunner().invoke(app, ["contrast", str(run), "--a", "operator=*", "--b", "operator!=*", "--segment",
                                      "thinking", "--bootstrap", "20", "--top", "3", "--unit", "token"])
    assert result.exit_code == 0, result.output
    assert "features of A" in result.output and str(planted) in result.output


def test_trace_unit_finds_a_feature_that_fires_once_per_trace(indexed_run, tmp_path):
    # Planted on one thinking token of each × trace: silent on the rest, as an operator's feature is.
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    rundir = RunDir(run)
    star = {t["sequence_id"] for t in read_traces(rundir.traces) if t["metadata"].get("operator") == "*"}
    planted = 3
    _plant(run, planted, star, one_token=True)

    def contrast(unit: str):
        config = ContrastConfig(a="operator=*", b="operator!=*", segment="thinking", bootstrap=50, groups=8, unit=unit)
        return run_contrast(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db,
                            rundir.contrast_dir(config.contrast_name()), show_progress=False, device="cpu")

    by_trace, by_token = contrast("trace"), contrast("token")
    top = by_trace.a_features[0]
    assert top.feature_id == planted and top.auroc > 0.95 and top.rate_a == 1.0
    token_auroc = {f.feature_id: f.auroc for f in by_token.a_features}.get(planted, 0.5)
    assert token_auroc < top.auroc - 0.1  # by token it fires on a few of A's tokens only
    assert by_trace.held_out["a"] is not None and by_trace.held_out["a"]["feature_id"] == planted


def test_contrast_refuses_overlapping_or_empty_sets_before_writing(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    before = (run / "features.db").read_bytes()
    runner = CliRunner()
    overlap = runner.invoke(app, ["contrast", str(run), "--a", "source=arithmetic", "--b", "operator=*"])
    assert overlap.exit_code == 2 and "share tokens" in overlap.output
    empty = runner.invoke(app, ["contrast", str(run), "--a", "operator=^", "--b", "operator=*"])
    assert empty.exit_code == 2 and "matches none" in empty.output
    assert (run / "features.db").read_bytes() == before
    assert not (run / "contrasts").exists()


def test_contrast_by_next_token_recovers_a_feature_planted_before_a_token(indexed_run, tmp_path):
    # Planted on every thinking token that comes just before the commonest thinking token T: the
    # contrast "next_token=T" against "next_token!=T" must find it, and it must detect those tokens.
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    rundir = RunDir(run)
    with sqlite3.connect(rundir.features_db) as connection:
        token, text = connection.execute(
            "SELECT t.token, v.decoded_token FROM token_ids t JOIN vocab v ON v.token = t.token WHERE t.segment = ? "
            "AND trim(v.decoded_token) GLOB '[A-Za-z0-9]*' AND instr(v.decoded_token, ',') = 0 GROUP BY t.token "
            "ORDER BY count(*) DESC LIMIT 1", (SEGMENT_NAMES.index("thinking"),)).fetchone()
    planted = 5
    _plant(run, planted, {t["sequence_id"] for t in read_traces(rundir.traces)}, before_token=token)
    config = ContrastConfig(a=f"segment=thinking,next_token={text.strip()}",
                            b=f"segment=thinking,next_token!={text.strip()}", bootstrap=50, groups=8, unit="token",
                            min_firings=1)  # a tiny run: a few dozen such tokens
    report = run_contrast(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db,
                          rundir.contrast_dir(config.contrast_name()), show_progress=False, device="cpu")
    assert report.a_features[0].feature_id == planted and report.a_features[0].auroc > 0.95
    held = report.held_out["a"]
    assert held["feature_id"] == planted
    assert held["recall"]["hits"] / held["recall"]["n"] > 0.9
    base_rate = report.tokens["a"] / (report.tokens["a"] + report.tokens["b"])
    assert held["precision"]["hits"] / held["precision"]["n"] > 10 * base_rate  # it fires elsewhere too, but rarely
    # "token=T" and "token!=T" name disjoint tokens of the same traces: no overlap error.
    disjoint = ContrastConfig(a=f"segment=thinking,token={text.strip()}", b=f"segment=thinking,token!={text.strip()}",
                              bootstrap=20, groups=8, unit="token")
    assert run_contrast(disjoint, rundir.traces, rundir.activations, rundir.sae, rundir.features_db,
                        rundir.contrast_dir(disjoint.contrast_name()), show_progress=False, device="cpu").tokens["a"] > 0
