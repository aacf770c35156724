"""`thinklens explain`: the parsers and metrics on hand-written replies, and the whole loop against a
live `thinklens serve` over HTTP (the tiny model: its answers are noise, so the unparsable paths run)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from tests.server.conftest import live_server
from thinklens.cli import app
from thinklens.errors import ThinklensError
from thinklens.features.autointerp.replies import (
    Unparsable,
    parse_explanation,
    parse_predictions,
    score_predictions,
)
from thinklens.features.autointerp.run import PROMPT_VERSION, ExplainConfig
from thinklens.pipeline.explain import explain_in_run
from thinklens.pipeline.rundir import RunDir
from thinklens.server.app import load_served
from thinklens.server.config import ServeConfig


def test_explanations_are_read_from_loose_replies():
    reply = 'Sure! Here it is: {"label": "Operator after a number", "description": "fires on + and ×.", ' \
            '"interestingness": 1.7} Hope this helps.'
    explanation = parse_explanation(reply)
    assert (explanation.label, explanation.interestingness) == ("Operator after a number", 1.0)  # clipped to [0, 1]
    assert parse_explanation('<think>{"x": 1}</think> {"label": "Wait"}').label == "Wait"
    for bad in ("no json here", '{"label": ""}', "{broken"):
        with pytest.raises(Unparsable):
            parse_explanation(bad)
    nested = '{\n "label": "JSON",\n "data": {"type": "json"}} and {"label": "digits"}'
    assert parse_explanation(nested).label == "JSON"  # a nested object is read whole
    template = 'Reply as JSON: {"label": "<at most 8 words>"}'
    assert parse_explanation(nested, template).label == "digits"  # an echo of the prompt is no label
    with pytest.raises(Unparsable, match="echoes the prompt"):
        parse_explanation('{"label": "<at most 8 words>"}', template)


def test_predictions_are_read_and_checked():
    assert parse_predictions("Answer: [0, 1, 0.5, true]", 4) == [0.0, 1.0, 0.5, 1.0]
    assert parse_predictions("[1, 2] then [0.1, 0.9]", 2) == [0.1, 0.9]  # the first list of the right shape
    for bad, n in (("[0, 1]", 3), ("[0, 1.5, 0]", 3), ("yes, no, yes", 3), ("[NaN, 0, 1]", 3)):
        with pytest.raises(Unparsable):
            parse_predictions(bad, n)


def test_yes_probability_from_top_logprobs_or_the_word():
    import math

    from thinklens.features.autointerp.replies import yes_probability

    top = [("No", math.log(0.5)), (" yes", math.log(0.2)), ("Yes", math.log(0.1)), ("Paris", math.log(0.1))]
    assert yes_probability("No", top) == pytest.approx(0.3 / 0.8)  # the yes mass of every spelling, renormalised
    assert yes_probability("Yes, it does.", None) == 1.0 and yes_probability("  no.", []) == 0.0
    assert yes_probability("No", [("Paris", -0.1)]) == 0.0  # no yes/no among the alternatives: the word
    with pytest.raises(Unparsable):
        yes_probability("Maybe", [("Maybe", -0.1)])


def test_scores_worked_example():
    # truth: 3 firing, 3 not. predictions ≥ 0.5: hits 2 of 3, one false alarm.
    scores = score_predictions([0.9, 0.8, 0.2, 0.7, 0.1, 0.0], [1, 1, 1, 0, 0, 0])
    assert scores.balanced_accuracy == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert scores.f1 == pytest.approx(2 * 2 / (3 + 3))
    # AUROC: of 9 (positive, negative) pairs the positive ranks higher in 8 (only 0.2 < 0.7 is lost)
    assert scores.auroc == pytest.approx(8 / 9)
    assert score_predictions([1, 1, 0, 0], [1, 1, 0, 0]).balanced_accuracy == 1.0
    assert score_predictions([1, 1, 1, 1], [1, 1, 0, 0]).auroc is None  # no ranking to judge
    with pytest.raises(ValueError):
        score_predictions([1, 0], [1, 1])


def test_marks_merge_runs_and_fuzzing_moves_them_to_quiet_tokens():
    import random

    from thinklens.features.autointerp.examples import FeatureExamples, Window
    from thinklens.features.autointerp.run import scoring_tasks

    window = Window(0, 2, ("a", " b", " c", " d", " e"), (0.0, 2.0, 1.0, 0.0, 3.0))
    assert window.text(marked=True) == "a<< b c>> d<< e>>" and window.text() == "a b c d e"
    fuzzed = window.fuzzed(random.Random(0))
    assert fuzzed.tokens == window.tokens and sum(v > 0 for v in fuzzed.activations) == 2  # as many marks…
    assert all(v == 0 for v, was in zip(fuzzed.activations, window.activations, strict=True) if was > 0)  # …elsewhere
    assert Window(0, 0, ("x",), (1.0,)).fuzzed(random.Random(0)) is None  # nowhere quiet to move a mark to
    quiet = [Window(9, i, ("q", " r"), (0.0, 0.0)) for i in range(4)]
    held = [Window(1, i, ("a", " b", " c"), (0.0, float(i + 1), 0.0)) for i in range(4)]
    detection, fuzzing = scoring_tasks(FeatureExamples([], held, quiet), seed=3)
    assert (detection.method, sorted(detection.truth), detection.marked) == ("detection", [0] * 4 + [1] * 4, False)
    assert fuzzing.method == "fuzzing" and fuzzing.marked and sorted(fuzzing.truth) == [0, 0, 1, 1]
    for shown, right in zip(fuzzing.windows, fuzzing.truth, strict=True):  # right ones are held[0::2] as they are
        assert (shown in held[0::2]) == bool(right) and (shown.activations[1] > 0) == bool(right)


def test_the_default_sample_is_random_sparse_first_and_grows_by_extension(indexed_run):
    from thinklens.features.autointerp.run import _sample
    from thinklens.features.db import open_read_only

    reader = open_read_only(indexed_run / "features.db")
    live = dict(reader.execute("SELECT feature_id, density FROM features WHERE firing_count > 0").fetchall())
    config = ExplainConfig(base_url="http://x/v1", model="m", limit=6, max_density=sorted(live.values())[3])
    six = _sample(reader, config)
    assert len(six) == 6 == len(set(six)) and set(six) <= set(live)
    sparse = {f for f, density in live.items() if density <= config.max_density}
    everything = _sample(reader, config.model_copy(update={"limit": len(live)}))
    assert len(sparse) >= 4 and set(everything[: len(sparse)]) == sparse  # the sparse ones first, then the rest
    assert [live[f] for f in everything[len(sparse):]] == sorted(live[f] for f in everything[len(sparse):])
    assert _sample(reader, config.model_copy(update={"limit": 9}))[:6] == six
    assert _sample(reader, config.model_copy(update={"seed": 1})) != six or len(live) <= 6


@pytest.fixture(scope="module")
def endpoint(indexed_run, tiny_models, tmp_path_factory):
    """A live `thinklens serve` of the tiny run: the explainer and scorer, over HTTP. Its model is the tiny
    Llama with a 4k context (the same weights: RoPE has no position table), as prompts with examples are long."""

    root = tmp_path_factory.mktemp("endpoint")
    model = root / "llama-4k"
    shutil.copytree(tiny_models["llama"], model)
    config_file = model / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "max_position_embeddings": 4096}))
    served = root / "tiny"
    shutil.copytree(indexed_run, served)
    meta_file = served / "traces" / "_meta.json"
    meta = json.loads(meta_file.read_text())
    meta["identity"]["model"]["model"] = str(model)
    meta_file.write_text(json.dumps(meta))
    config = ServeConfig(runs=(served,), max_tokens=64, capacity=8)
    state = load_served(config)
    with live_server(config, state) as url:
        yield f"{url}/v1", state.model_id


@pytest.fixture
def run(indexed_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(indexed_run, copy)
    return copy


def _rows(run, query):
    with sqlite3.connect(run / "features.db") as connection:
        return connection.execute(query).fetchall()


@pytest.mark.integration
def test_explain_against_a_live_endpoint_writes_rows_and_resumes(endpoint, run):
    url, model = endpoint
    config = ExplainConfig(base_url=url, model=model, limit=2, concurrency=2, shown=3, held_out=3, window=8,
                           max_tokens=24)
    first = explain_in_run(config, RunDir(run), progress=False)
    assert "explained 2 features" in first.lines[0]
    scored = _rows(run, f"SELECT feature_id, method, control, unparsable FROM label_scores "
                        f"WHERE prompt_version = '{PROMPT_VERSION}'")
    assert len({row[0] for row in scored}) == 2  # every feature has a record: its scores, or why there are none
    more = explain_in_run(config.model_copy(update={"limit": 4}), RunDir(run), progress=False)
    assert "explained 2 features (2 already labelled were kept)" in more.lines[0]  # only the two new ones
    again = explain_in_run(config.model_copy(update={"limit": 4}), RunDir(run), progress=False)
    assert again.skipped and "explained 0 features" in again.lines[0]


@pytest.mark.integration
def test_labels_of_another_model_are_kept_unless_forced(endpoint, run):
    url, model = endpoint
    with sqlite3.connect(run / "features.db") as connection:
        busiest = connection.execute("SELECT feature_id FROM features ORDER BY firing_count DESC LIMIT 1").fetchone()[0]
        connection.execute("INSERT OR REPLACE INTO autointerp VALUES (?, 'a careful label', '[]', '[]', 0.9, 0.5, "
                           "'claude-3-7-sonnet-latest', 'v0-dev')", (busiest,))
    config = ExplainConfig(base_url=url, model=model, features=(busiest,), shown=3, held_out=3, window=8,
                           max_tokens=16)
    kept = explain_in_run(config, RunDir(run), progress=False)
    assert kept.skipped and _rows(run, f"SELECT label FROM autointerp WHERE feature_id = {busiest}") == [
        ("a careful label",)]
    explain_in_run(config.model_copy(update={"force": True}), RunDir(run), progress=False)
    assert _rows(run, f"SELECT count(*) FROM label_scores WHERE feature_id = {busiest}")[0][0] >= 1


@pytest.mark.integration
def test_bad_endpoints_are_one_line_errors(endpoint, run):
    url, model = endpoint
    with pytest.raises(ThinklensError, match="cannot reach http://127.0.0.1:9/v1"):
        explain_in_run(ExplainConfig(base_url="http://127.0.0.1:9/v1", model=model, limit=1, max_retries=0),
                       RunDir(run), progress=False)
    with pytest.raises(ThinklensError, match="rejected the request: unknown model 'gpt-4'"):
        explain_in_run(ExplainConfig(base_url=url, model="gpt-4", limit=1, max_tokens=8), RunDir(run), progress=False)
    with pytest.raises(ThinklensError, match="no stored examples"):
        explain_in_run(ExplainConfig(base_url=url, model=model, features=(10**6,)), RunDir(run), progress=False)


@pytest.mark.integration
def test_dry_run_prints_the_first_prompt_and_sends_nothing(run):
    result = CliRunner().invoke(app, ["explain", str(run), "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                      "--limit", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "<<" in result.output and '"label"' in result.output and "logit lens" in result.output


@pytest.mark.integration
def test_a_killed_explain_resumes_to_the_rows_of_an_uninterrupted_one(endpoint, run, tmp_path, monkeypatch):
    from tests.reliability.test_kill_windows import _die_on_call, _Killed
    from thinklens.features.autointerp import run as explain_module

    url, model = endpoint
    config = ExplainConfig(base_url=url, model=model, limit=10, concurrency=2, max_tokens=48)
    whole = tmp_path / "whole"
    shutil.copytree(run, whole)
    explain_in_run(config, RunDir(whole), progress=False)
    with monkeypatch.context() as patch:
        _die_on_call(patch, explain_module, "_commit", 4)  # killed right after the 4th feature's commit
        with pytest.raises(_Killed):
            explain_in_run(config, RunDir(run), progress=False)
    query = "SELECT count(DISTINCT feature_id) FROM label_scores"
    assert _rows(run, query)[0][0] == 4
    resumed = explain_in_run(config, RunDir(run), progress=False)
    assert "explained 6 features (4 already labelled were kept)" in resumed.lines[0]
    everything = "SELECT * FROM label_scores ORDER BY feature_id, method, control"
    assert _rows(run, everything) == _rows(whole, everything)
    labels = "SELECT * FROM autointerp ORDER BY feature_id"
    assert _rows(run, labels) == _rows(whole, labels)


@pytest.mark.integration
def test_the_scorer_is_asked_over_http_and_a_malformed_answer_is_retried_once(endpoint, run):
    from thinklens.features.autointerp.client import ChatClient
    from thinklens.features.autointerp.examples import ExampleSource
    from thinklens.features.autointerp.replies import Explanation
    from thinklens.features.autointerp.run import _score_all
    from thinklens.features.db import open_read_only

    url, model = endpoint
    source = ExampleSource(open_read_only(run / "features.db"), window=8)
    busiest = _rows(run, "SELECT feature_id FROM features ORDER BY firing_count DESC LIMIT 1")[0][0]
    examples = source.examples(busiest, shown=3, held_out=3)
    assert examples.held_out and len(examples.negatives) == len(examples.held_out)
    assert all(not window.fires for window in examples.negatives) and all(w.fires for w in examples.held_out)
    client = ChatClient(url, model, max_tokens=24)
    outcome = _score_all(client, examples, Explanation("digits", "numbers", None), Explanation("x", "y", None), 0)
    methods = {method for method, _ in outcome}
    assert set(outcome) == {(method, control) for method in methods for control in (False, True)}
    assert "detection" in methods  # fuzzing too where a held-out example has quiet tokens to move marks to
    assert outcome["detection", False][1] == "digits" and outcome["detection", True][1] == "x"
    for scores, _label, reply in outcome.values():
        assert scores is None and reply  # the tiny model's answer is no list: recorded as such, with the reply
    assert client.usage.requests == 2 * len(outcome) and client.usage.completion_tokens > 0  # each asked twice


def test_a_feature_page_shows_a_labels_scores(run):
    from thinklens.features.schema import migrate
    from thinklens.server.catalog import ServedRun

    with sqlite3.connect(run / "features.db") as connection:
        migrate(connection)
        connection.execute("INSERT OR REPLACE INTO autointerp VALUES (0, 'digits', '[]', '[]', 0.75, 0.5, 'big-model', "
                           "?)", (PROMPT_VERSION,))
        for control, accuracy in ((0, 0.75), (1, 0.5)):
            connection.execute("INSERT INTO label_scores VALUES (0, 'big-model', ?, 'big-model', 'detection', ?, "
                               "'digits', 16, ?, 0.7, 0.8, 0, '[...]')", (PROMPT_VERSION, control, accuracy))
    (label,) = ServedRun(run).labels(0)
    assert label["quality"] == 0.75 and [s["balanced_accuracy"] for s in label["scores"]] == [0.75, 0.5]
    assert [s["control"] for s in label["scores"]] == [False, True]


@pytest.mark.slow
def test_smollm2_served_alone_scores_each_example_from_its_log_probabilities(run):
    """The real embedded model behind `serve --model smollm2`: its yes/no answers' top log-probabilities give
    every example a probability (so AUROC exists), and a whole compact/each run writes a record per feature."""
    from thinklens.features.autointerp.client import ChatClient
    from thinklens.features.autointerp.examples import ExampleSource
    from thinklens.features.autointerp.replies import Explanation
    from thinklens.features.autointerp.run import _score_all
    from thinklens.features.db import open_read_only

    config = ServeConfig(model="smollm2", device="cpu", max_tokens=64, capacity=8)
    with live_server(config, load_served(config)) as url:
        source = ExampleSource(open_read_only(run / "features.db"), window=8)
        busiest = _rows(run, "SELECT feature_id FROM features ORDER BY firing_count DESC LIMIT 1")[0][0]
        client = ChatClient(f"{url}/v1", "smollm2")
        outcome = _score_all(client, source.examples(busiest, shown=3, held_out=4), Explanation("digits", "", None),
                             Explanation("names of people", "", None), 0, scoring="each")
        assert ("detection", False) in outcome and ("detection", True) in outcome
        for scores, _label, reply in outcome.values():
            probabilities = json.loads(reply)
            assert scores is not None and len(probabilities) == scores.n and all(0 < p < 1 for p in probabilities)
            assert scores.auroc is not None  # real probabilities rank; a word answer (0/1) often would not
        explain = ExplainConfig(base_url=f"{url}/v1", model="smollm2", limit=2, shown=4, held_out=4, window=8,
                                max_tokens=40, prompt="compact", scoring="each")
        result = explain_in_run(explain, RunDir(run), progress=False)
    assert "explained 2 features" in result.lines[0]
    rows = _rows(run, f"SELECT feature_id, method, reply FROM label_scores WHERE prompt_version = "
                      f"'{PROMPT_VERSION}-compact-each'")
    assert len({row[0] for row in rows}) == 2 and all(row[2] for row in rows)  # every record keeps its reply


def test_the_report_shows_scored_labels_against_the_control(run):
    import re

    from thinklens.features.schema import migrate
    from thinklens.pipeline.report import render_report

    with sqlite3.connect(run / "features.db") as connection:
        migrate(connection)
        for feature in range(6):
            connection.execute("INSERT OR REPLACE INTO autointerp VALUES (?, ?, '[]', '[]', ?, 0.5, 'big-model', ?)",
                               (feature, f"label {feature}", 0.9, PROMPT_VERSION))
            for control, accuracy in ((0, 0.9), (1, 0.5)):
                connection.execute("INSERT INTO label_scores VALUES (?, 'big-model', ?, 'big-model', 'detection', ?, "
                                   "'x', 16, ?, 0.7, ?, 0, '[...]')", (feature, PROMPT_VERSION, control,
                                                                        accuracy + 0.01 * feature, accuracy))
        connection.execute("INSERT INTO label_scores VALUES (9, 'big-model', ?, 'big-model', 'explain', 0, NULL, NULL, "
                           "NULL, NULL, NULL, 1, 'no idea')", (PROMPT_VERSION,))
    page = render_report(RunDir(run))
    section = re.sub(r"<[^>]+>", " ", page[page.index("<section id='labels'>"):].split("</section>")[0])
    assert "big-model" in section and "0.925 [" in section and "0.525 [" in section  # real and shuffled means
    assert "yes / yes" in section  # 0.90–0.95 against 0.50–0.55: the control is beaten on both measures
    assert "1 features got no usable label" in section and "label 5" in section


@pytest.mark.integration
def test_map_regions_named_over_http_fall_back_to_token_names(endpoint, run):
    from thinklens.analysis.featuremap import MapConfig, feature_map

    url, model = endpoint
    config = MapConfig(n_neighbors=5, region_sizes=(3,), namer_base_url=url, namer_model=model)
    named = feature_map(run / "sae", run / "features.db", config)
    assert len(named.named_by_model) == 1 and 0 <= named.named_by_model[0] <= named.regions[0]
    assert all(p.regions[0].strip() for p in named.points)
    with pytest.raises(ValueError, match="both --namer-base-url and --namer-model"):
        MapConfig(namer_base_url=url)
