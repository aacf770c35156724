"""The JSON API of `thinklens serve` against a live server: what the pages show, bounds, read-only."""

from __future__ import annotations

import json

import pytest

from tests.reliability.test_catalogue import tree_digest
from tests.server.conftest import http
from thinklens.features.db import FeatureDB


@pytest.fixture(scope="module")
def digest_before(served_run):
    return tree_digest(served_run)


def test_runs_summary_names_model_layer_and_sae(server, served_run, digest_before):
    status, runs = http("GET", f"{server}/api/runs")
    assert status == 200 and [run["name"] for run in runs] == ["tiny"]
    summary = runs[0]
    assert summary["layer"] == 1 and summary["sae"]["arch"] == "topk" and summary["sae"]["d_sae"] > 0


def test_feature_list_searches_sorts_and_filters(server, served_run):
    status, page = http("GET", f"{server}/api/runs/tiny/features?sort=max_activation&limit=5")
    assert status == 200 and len(page["features"]) == 5
    peaks = [f["max_activation"] for f in page["features"]]
    assert peaks == sorted(peaks, reverse=True)
    with FeatureDB(served_run / "features.db") as db:
        label = db.show(page["features"][0]["feature_id"]).label
    word = label.strip("'\" ").split("'")[0].strip() or label
    status, found = http("GET", f"{server}/api/runs/tiny/features?q={word.split()[0]}")
    assert status == 200 and found["total"] >= 1
    status, prefix_only = http("GET", f"{server}/api/runs/tiny/features?segment=prefix&sort=enrichment&limit=200")
    for feature in prefix_only["features"]:
        rates = feature["segment_rates"]
        assert rates["prefix"] == max(rate or 0 for rate in rates.values())


def test_feature_page_data_has_what_neuronpedia_shows(server, served_run):
    status, page = http("GET", f"{server}/api/runs/tiny/features?sort=firing_count&limit=1")
    feature_id = page["features"][0]["feature_id"]
    status, feature = http("GET", f"{server}/api/runs/tiny/features/{feature_id}")
    assert status == 200
    assert feature["labels"] and feature["labels"][0]["model_name"]
    assert set(feature["segment_rates"]) == {"prompt", "prefix", "thinking", "answer"}
    assert sum(feature["histogram"]["counts"]) > 0 and feature["top_logits"] and feature["bottom_logits"]
    assert feature["top_examples"] and len(feature["decoder_neighbours"]) == 10
    example = feature["top_examples"][0]
    assert example["exact"]  # encoded from the run's stored activations, every token
    at = next(token for token in example["tokens"] if token["idx"] == example["token_idx"])
    assert at["activation"] == pytest.approx(example["strength"], rel=1e-4)  # the same value index stored
    assert all(token["activation"] >= 0 for token in example["tokens"])
    strengths = [ex["strength"] for ex in feature["top_examples"] + feature["quantile_examples"]]
    assert strengths == sorted(strengths, reverse=True)


@pytest.mark.parametrize("path, status", [
    ("/api/runs/nope", 404),
    ("/api/runs/tiny/features/100000", 404),
    ("/api/runs/tiny/features/-1", 404),
    (f"/api/runs/tiny/features/{10**30}", 404),
    ("/api/runs/tiny/features/abc", 400),
    ("/api/runs/tiny/features?limit=100000", 400),
    ("/api/runs/tiny/features?sort=chaos", 400),
    ("/api/runs/tiny/features?segment=middle", 400),
    ("/api/runs/tiny/features?sort=contrast&contrast=none", 400),
    ("/api/runs/tiny/features?q=" + "x" * 300, 400),
    ("/runs/tiny/features/100000", 404),
    ("/../../etc/passwd", 404),
])
def test_bad_requests_are_one_clear_4xx(server, path, status):
    got, body = http("GET", f"{server}{path}")
    assert got == status, body
    assert isinstance(body, dict) and body["error"]["message"] and "Traceback" not in json.dumps(body)


STEER = {"prompt": "What is 2 + 2?", "steering": {"features": [{"feature": 0, "strength": 4}]}, "max_tokens": 4}


@pytest.mark.parametrize("change, status, message", [
    ({"max_tokens": 10_000}, 400, "above this server's bound"),
    ({"prompt": "x" * 5000}, 400, "above this server's bound"),
    ({"prompt": ""}, 400, "prompt"),
    ({"steering": {"features": [{"feature": 0, "strength": 1e30}]}}, 400, "strength"),
    ({"steering": {"features": [{"feature": 100000, "strength": 1}]}}, 404, "feature 100000 does not exist"),
    ({"steering": {"features": [{"feature": i, "strength": 1} for i in range(9)]}}, 400, "features"),
    ({"steering": {"features": [], "policy": "sometimes"}}, 400, "position policy"),
    ({"steering": {"contrast": {"name": "../../x", "strength": 1}}}, 400, "name"),
    ({"steering": {"contrast": {"name": "absent", "strength": 1}}}, 400, "no contrast 'absent'"),
])
def test_steering_requests_out_of_bounds_are_refused(server, change, status, message):
    got, body = http("POST", f"{server}/api/runs/tiny/steer", {**STEER, **change})
    assert got == status and message in body["error"]["message"], body


def test_a_strength_that_is_not_finite_is_refused(server):
    raw = json.dumps(STEER).replace('"strength": 4', '"strength": NaN').encode()
    got, body = http("POST", f"{server}/api/runs/tiny/steer", raw=raw)
    assert got == 400 and "strength" in body["error"]["message"]


def test_playground_stream_gives_baseline_then_steered_with_the_start_marked(server):
    request = {**STEER, "max_tokens": 12, "steering": {"features": [{"feature": 0, "strength": 40}],
                                                       "policy": "first_token"}}
    status, text = http("POST", f"{server}/api/runs/tiny/steer", request)
    assert status == 200
    events = [json.loads(line[5:]) for line in text.split("\n\n") if line.startswith("data:") and "[DONE]" not in line]
    sides = [event["side"] for event in events]
    assert sides.index("steered") > sides.index("baseline") and sides[-1] == "steered"
    done = {event["side"]: event["done"] for event in events if "done" in event}
    deltas = {side: "".join(e["delta"] for e in events if e.get("side") == side and "delta" in e) for side in done}
    assert deltas == {side: result["text"] for side, result in done.items()}  # the stream adds up to the text
    assert done["baseline"]["steered_from_token"] is None and done["steered"]["steered_from_token"] == 0


def test_explain_text_gives_each_tokens_features(server):
    status, body = http("POST", f"{server}/api/runs/tiny/explain", {"text": "two plus two is four", "top": 3})
    assert status == 200 and body["tokens"]
    assert all(len(token["features"]) <= 3 for token in body["tokens"])
    assert any(token["features"] for token in body["tokens"])


def test_pages_render(server):
    for path in ("/", "/runs/tiny", "/runs/tiny/features?q=the", "/runs/tiny/features/0", "/runs/tiny/explain",
                 "/runs/tiny/playground?feature=3&strength=2", "/docs", "/openapi.json"):
        status, _ = http("GET", f"{server}{path}")
        assert status == 200, path


def test_serving_changes_nothing_in_the_run(server, served_run, digest_before):
    http("GET", f"{server}/api/runs/tiny/features/0")
    assert tree_digest(served_run) == digest_before
