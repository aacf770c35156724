"""Prefix statistics, sinks, segment shift and the feature map on a tiny indexed run, plus worked examples."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from tests.browser import screenshot
from thinklens.analysis.featuremap import SEGMENT_COLOURS, MapConfig, feature_map
from thinklens.analysis.outputs import AnalyzeConfig, run_analyses, write_feature_map
from thinklens.analysis.prefix import prefix_statistics, reasoning_opening
from thinklens.analysis.shift import ShiftConfig, jensen_shannon, segment_shift
from thinklens.analysis.sinks import PLACES, SinkConfig, analyze_sinks, received_attention
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.data.traces import TraceStore
from thinklens.features.db import FeatureDB
from thinklens.models.loader import load_model
from thinklens.sae.formats import load_sae


def test_received_attention_worked_example():
    # One head, 3 positions. Query rows (causal): q0 = [1, 0, 0], q1 = [0.8, 0.2, 0], q2 = [0.5, 0.1, 0.4].
    # Key 0 gets (0.8 + 0.5) / 2 later queries = 0.65; key 1 gets 0.1 / 1 = 0.1; key 2 has no later query.
    weights = torch.tensor([[[1.0, 0, 0], [0.8, 0.2, 0], [0.5, 0.1, 0.4]]])
    mass, sinks = received_attention(weights, threshold=0.3)
    assert mass[:2] == pytest.approx([0.65, 0.1])
    assert math.isnan(mass[2])
    assert sinks.tolist() == [1.0, 0.0, 0.0]  # only key 0 is above 0.3


def test_jensen_shannon_worked_examples():
    assert jensen_shannon(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)  # disjoint: 1 bit
    assert jensen_shannon(np.array([3.0, 1]), np.array([6.0, 2])) == pytest.approx(0.0)  # same after normalising
    # p = [.5, .5], q = [1, 0], m = [.75, .25]: KL(p||m) = .5·log2(.5/.75) + .5·log2(.5/.25) = 0.2075,
    # KL(q||m) = log2(1/.75) = 0.4150; JSD = (0.2075 + 0.4150) / 2 = 0.3113.
    assert jensen_shannon(np.array([0.5, 0.5]), np.array([1.0, 0])) == pytest.approx(0.3113, abs=1e-4)


def test_reasoning_opening_drops_the_think_tag():
    assert reasoning_opening("<think>\n  Okay, so the user") == "Okay, so the user"
    assert reasoning_opening("Okay, so") == "Okay, so"


@pytest.mark.integration
def test_prefix_statistics_count_every_trace(indexed_run):
    report = prefix_statistics(indexed_run / "traces")
    rows = TraceStore(indexed_run / "traces").read().to_pylist()
    assert report.overall.traces == len(rows) == sum(s.traces for s in report.by_source)
    matched = [r for r in rows if r["prefix_matched"]]
    assert report.overall.prefix_match_rate == pytest.approx(len(matched) / len(rows))
    assert sum(report.overall.prefix_length_counts.values()) == len(matched)
    opening = (report.forced_opening or "")
    okay = sum(reasoning_opening(opening + r["completion"]).startswith("Okay,") for r in rows)
    assert report.overall.okay_share == pytest.approx(okay / len(rows))


@pytest.mark.integration
def test_sinks_cover_every_position_and_stay_in_range(indexed_run):
    loaded = load_model(TraceStore(indexed_run / "traces").model_config(device="cpu"))
    report = analyze_sinks(loaded, indexed_run / "traces", SinkConfig(traces=4, window=6), show_progress=False)
    rows = sorted(TraceStore(indexed_run / "traces").read().to_pylist(),
                  key=lambda r: (not r["prefix_matched"], r["sequence_id"]))[:4]
    assert report.traces == len(rows)
    assert sum(p.positions for p in report.places) == sum(len(r["token_ids"]) for r in rows)
    first = next(p for p in report.places if p.place == "first_token")
    assert first.positions == len(rows)
    assert {p.place for p in report.places} <= set(PLACES)
    assert sum(p.share_of_sinks for p in report.places) == pytest.approx(1.0) or \
        all(p.share_of_sinks == 0 for p in report.places)
    for place in report.places:
        assert 0 <= place.attention_mass <= 1 and 0 <= place.sink_share <= 1
    assert len(report.aligned["offset"]) == 13 and report.layers == loaded.model.config.num_hidden_layers


@pytest.mark.integration
def test_segment_shift_counts_agree_with_the_feature_database(indexed_run):
    report, rates = segment_shift(indexed_run / "sae", indexed_run / "activations", indexed_run / "features.db",
                                  ShiftConfig(bootstrap=20, min_segment_tokens=1), show_progress=False)
    tokens = np.array([report.tokens[name] for name in SEGMENT_NAMES])
    firings = np.rint(rates * tokens[:, None]).sum(axis=0)  # (d_sae,) firings over all segments
    with FeatureDB(indexed_run / "features.db") as db:
        stored = dict(db.connection.execute("SELECT feature_id, firing_count FROM features"))
    # The same tokens (special and massive left out) are encoded by the same SAE as the index did.
    assert firings.tolist() == [stored[f] for f in range(len(firings))]
    for divergence in report.divergences:
        assert 0 <= divergence.low <= divergence.high <= 1 and 0 <= divergence.jsd <= 1
    for segment, features in report.enriched.items():
        assert segment in report.segments
        assert all(f.rate >= f.rate_elsewhere for f in features[:1])


@pytest.mark.integration
def test_segment_shift_reads_the_sae_layer_or_the_indexed_one(indexed_run, tmp_path):
    from thinklens.errors import ThinklensError
    from thinklens.sae.formats import save_sae

    run, config = indexed_run, ShiftConfig(bootstrap=20, min_segment_tokens=1)
    with pytest.raises(ThinklensError, match="reads layer 1 but layer 0 was asked"):
        segment_shift(run / "sae", run / "activations", run / "features.db", config.model_copy(update={"layer": 0}),
                      show_progress=False)
    foreign = tmp_path / "foreign"
    sae = load_sae(run / "sae")
    sae.config = sae.config.model_copy(update={"layer": None})
    save_sae(sae, foreign)
    # No layer in the SAE: the one the database was indexed on (recorded by index) is used.
    report, rates = segment_shift(foreign, run / "activations", run / "features.db", config, show_progress=False,
                                  device="cpu")
    own, own_rates = segment_shift(run / "sae", run / "activations", run / "features.db", config, show_progress=False)
    assert report.tokens == own.tokens and np.array_equal(rates, own_rates)


@pytest.fixture(scope="module")
def mapped_run(indexed_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mapped") / "run"
    shutil.copytree(indexed_run, run)
    write_feature_map(MapConfig(n_neighbors=5), run / "sae", run / "features.db", run / "map.html", run / "map.png",
                      run / "analysis" / "map.json")
    return run


@pytest.mark.integration
def test_feature_map_leaves_out_and_counts_dead_features(mapped_run):
    document = json.loads((mapped_run / "analysis" / "map.json").read_text())["result"]
    with FeatureDB(mapped_run / "features.db") as db:
        dead = db.connection.execute("SELECT count(*) FROM features WHERE firing_count = 0").fetchone()[0]
    d_sae = load_sae(mapped_run / "sae").config.d_sae
    assert document["features"] == d_sae and document["dead"] == dead + (d_sae - _rows(mapped_run))
    assert len(document["points"]) == document["live"] == d_sae - document["dead"]
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in document["points"])
    again = feature_map(mapped_run / "sae", mapped_run / "features.db", MapConfig(n_neighbors=5))
    assert [p.x for p in again.points] == pytest.approx([p["x"] for p in document["points"]])  # seeded


def _rows(run: Path) -> int:
    with FeatureDB(run / "features.db") as db:
        return db.connection.execute("SELECT count(*) FROM features").fetchone()[0]


def _colour_pixels(pixels: np.ndarray, colour: str, tolerance: float = 0.08) -> int:
    """Pixels of `colour` drawn over white at any opacity above 0.3: pixel = a·colour + (1 - a)·white."""
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    opacity = (1 - pixels[..., :3]) / (1 - rgb)  # (h, w, 3): the same a in every channel for a true tint
    same = opacity.max(axis=-1) - opacity.min(axis=-1) < tolerance
    return int((same & (opacity.mean(axis=-1) > 0.3)).sum())


@pytest.mark.integration
def test_static_map_is_an_image_of_the_points(mapped_run):
    pixels = mpimg.imread(mapped_run / "map.png")
    segments = {p["segment"] for p in json.loads((mapped_run / "analysis" / "map.json").read_text())["result"]["points"]}
    for segment in segments & set(SEGMENT_COLOURS):
        assert _colour_pixels(pixels, SEGMENT_COLOURS[segment]) > 20, segment


@pytest.mark.integration
def test_map_html_renders_points_offline_in_headless_chromium(mapped_run, tmp_path):
    html = (mapped_run / "map.html").read_text()
    assert "<script src=\"http" not in html and "<link href=\"http" not in html  # nothing to fetch
    live = json.loads((mapped_run / "analysis" / "map.json").read_text())["result"]["live"]
    # Under a loaded CPU, SwiftShader may not have drawn within the first budget: allow a longer second look.
    for wait_ms in (8000, 30000):
        pixels = mpimg.imread(screenshot(mapped_run / "map.html", tmp_path / "map.png", wait_ms=wait_ms))
        coloured = _saturated_pixels(pixels)
        if coloured > 4 * live:
            break
    assert coloured > 4 * live, coloured  # deck.gl drew the points, coloured by region (or segment)


def _saturated_pixels(pixels: np.ndarray) -> int:
    """Pixels of a clear colour (the page's text and frame are grey)."""
    rgb = pixels[..., :3]
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > 0.25).sum())


@pytest.mark.integration
def test_map_regions_and_layouts(mapped_run):
    document = json.loads((mapped_run / "analysis" / "map.json").read_text())["result"]
    assert document["layout"] == "coactivation" and len(document["region_sizes"]) == len(document["regions"])
    assert all(len(p["regions"]) == len(document["region_sizes"]) for p in document["points"])
    for key in ("top token", "label", "segment"):
        part = document["agreement"][key]
        assert 0 <= part["random"] <= 1 and 0 <= part["neighbours"] <= 1 and part["points"] > 0
    decoder = feature_map(mapped_run / "sae", mapped_run / "features.db",
                          MapConfig(n_neighbors=5, layout="decoder", region_sizes=(3,)))
    assert decoder.layout == "decoder" and decoder.region_sizes == [3] and decoder.regions[0] >= 1
    named = {p.regions[0] for p in decoder.points} - {"Unlabelled"}
    assert named and all(name.strip() for name in named)


@pytest.mark.integration
def test_run_analyses_writes_json_and_plots_then_skips(indexed_run, tmp_path):
    out = tmp_path / "analysis"
    config = AnalyzeConfig(sinks=SinkConfig(traces=3), shift=ShiftConfig(bootstrap=20, min_segment_tokens=1))
    first = run_analyses(config, indexed_run / "traces", indexed_run / "activations", indexed_run / "sae",
                         indexed_run / "features.db", out, show_progress=False)
    assert sorted(first.written) == ["prefix", "shift", "sinks"]
    for name in first.written:
        document = json.loads((out / f"{name}.json").read_text())
        assert document["format_version"] == 1 and document["result"]
        pixels = mpimg.imread(out / f"{name}.png")
        assert pixels.shape[0] > 100 and (pixels[..., :3] < 0.9).any()  # not blank
    second = run_analyses(config, indexed_run / "traces", indexed_run / "activations", indexed_run / "sae",
                          indexed_run / "features.db", out, show_progress=False)
    assert second.written == {} and sorted(second.skipped) == ["prefix", "shift", "sinks"]
