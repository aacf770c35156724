"""Evaluation: FVU, L0, dead and dense fractions from streamed batches; the training window; the SAE's layer."""

from __future__ import annotations

import pytest
import torch

from thinklens.errors import ThinklensError
from thinklens.sae.evaluate import (
    EvalConfig,
    EvalReport,
    SegmentMetrics,
    _Accumulator,
    evaluate,
    feature_metrics,
    training_dead_fraction,
)
from thinklens.sae.formats import load_sae, sae_metadata, save_sae
from thinklens.sae.sae import Sae, SaeConfig, SaeOutput, SparseCodes
from thinklens.sae.saebench import core_result, sparse_probing_result


def _output(recon: torch.Tensor, rows: list[int], features: list[int], d_sae: int) -> SaeOutput:
    codes = SparseCodes(torch.ones(len(rows)), torch.tensor(features), torch.tensor(rows), len(recon), d_sae)
    return SaeOutput(recon, codes, torch.zeros(len(recon), d_sae))


def test_fvu_l0_dead_dense_worked_example():
    # x = (1,0), (3,0), (2,2); reconstructions (1,0), (1,0), (2,1).
    # Squared error: 0 + 4 + 1 = 5. Mean x̄ = (2, 2/3); Σ‖x − x̄‖² = 1 + 4/9 + 1 + 4/9 + 0 + 16/9 = 14/3.
    # FVU = 5 / (14/3) = 15/14. Features fired: 0 on rows 0,1,2; 1 on row 1 → L0 = 4/3.
    # Of 4 features, 2 never fire (dead 1/2); feature 0 fires on 3/3 and 1 on 1/3 of tokens (> 0.5: dense 1/4).
    accumulator = _Accumulator(d_in=2, d_sae=4)
    accumulator.add(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), _output(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), [0, 1, 1], [0, 0, 1], 4))
    accumulator.add(torch.tensor([[2.0, 2.0]]), _output(torch.tensor([[2.0, 1.0]]), [0], [0], 4))
    metrics = accumulator.metrics(dense_threshold=0.5)
    assert metrics.tokens == 3
    assert metrics.fvu == pytest.approx(15 / 14)
    assert metrics.l0 == pytest.approx(4 / 3)
    assert (metrics.dead_fraction, metrics.dense_fraction) == (0.5, 0.25)


def test_saebench_core_metrics_worked_example():
    # The same three tokens. ‖x‖ = 1, 3, 2√2; ‖x̂‖ = 1, 1, √5; x·x̂ = 1, 3, 6.
    # cos = 1, 1, 6/(2√2·√5); ‖x̂‖/‖x‖ = 1, 1/3, √5/(2√2); Σ‖x̂‖² / Σ x·x̂ = 7/10.
    # L1: four code values of 1 on three tokens; MSE: 5 over 3 tokens × 2 dimensions.
    accumulator = _Accumulator(d_in=2, d_sae=4)
    accumulator.add(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), _output(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), [0, 1, 1], [0, 0, 1], 4))
    accumulator.add(torch.tensor([[2.0, 2.0]]), _output(torch.tensor([[2.0, 1.0]]), [0], [0], 4))
    metrics = accumulator.metrics(dense_threshold=0.5)
    root2, root5 = 2 ** 0.5, 5 ** 0.5
    assert metrics.cossim == pytest.approx((2 + 6 / (2 * root2 * root5)) / 3)
    assert metrics.l2_norm_in == pytest.approx((4 + 2 * root2) / 3)
    assert metrics.l2_norm_out == pytest.approx((2 + root5) / 3)
    assert metrics.l2_ratio == pytest.approx((1 + 1 / 3 + root5 / (2 * root2)) / 3)
    assert metrics.relative_reconstruction_bias == pytest.approx(0.7)
    assert (metrics.l1, metrics.mse) == (pytest.approx(4 / 3), pytest.approx(5 / 6))


def test_feature_metrics_worked_example():
    # Decoder rows (1,0), (0,1), (1,1)/√2, (1,−1)/√2: each row's nearest other row is at cosine 1/√2.
    sae = Sae(SaeConfig(arch="batchtopk_tied", d_in=2, d_sae=4, k=1))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]))
    # Fired on 3 of 3 tokens, 1 of 3, never, never: rates 1, 1/3, 0, 0.
    metrics = feature_metrics(sae, torch.tensor([3, 1, 0, 0]), tokens=3)
    assert metrics["freq_over_1_percent"] == metrics["freq_over_10_percent"] == 0.5
    assert metrics["normalized_freq_over_1_percent"] == pytest.approx(1.0)
    assert metrics["frac_alive"] == 0.5
    assert metrics["average_max_decoder_cosine_sim"] == pytest.approx(2 ** -0.5)
    assert metrics["average_max_encoder_cosine_sim"] == pytest.approx(2 ** -0.5)  # tied: the same rows


def test_training_dead_fraction_worked_examples():
    # Recorded by train: taken as it is.
    assert training_dead_fraction({"dead_features": {"fraction": 0.02, "window_tokens": 50_000}}) == (0.02, 50_000)
    # Trained before the record: 400 steps × 512 tokens = 204,800 > the 50,000-token window, so the last
    # step's dead fraction is the one over the training window.
    old = {"training": {"dead_after_tokens": 50_000, "batch_size": 512}, "steps": 400, "final": {"dead_fraction": 0.01}}
    assert training_dead_fraction(old) == (0.01, 50_000)
    # 60 steps × 512 = 30,720 tokens never filled the window: that figure was 0 by construction.
    assert training_dead_fraction({**old, "steps": 60}) == (None, None)
    assert training_dead_fraction({}) == (None, None)  # a foreign SAE


def test_report_dict_keeps_its_keys_and_adds_the_training_window():
    metrics = SegmentMetrics(tokens=2364, fvu=0.2, l0=30.0, dead_fraction=0.23, dense_fraction=0.0)
    report = EvalReport(overall=metrics, segments={"thinking": metrics}, dead_fraction_training=0.0,
                        dead_window_tokens=50_000)
    document = report.as_dict()
    assert {"overall", "segments", "lm"} <= set(document)
    assert document["overall"]["tokens"] == 2364 and document["overall"]["dead_fraction"] == 0.23
    assert (document["dead_fraction_training"], document["dead_window_tokens"]) == (0.0, 50_000)


@pytest.mark.integration
def test_evaluate_a_foreign_sae_needs_its_layer_and_reports_both_dead_fractions(indexed_run, tmp_path):
    run = indexed_run
    report = evaluate(run / "sae", run / "activations", run / "traces", EvalConfig(lm_sequences=0, device="cpu"))
    steps = sae_metadata(run / "sae")["steps"]
    # The fixture trains 128-token batches for fewer tokens than the 50,000-token window: the window is
    # the whole run, and "dead" there means never fired in training.
    assert report.dead_window_tokens == steps * 128 < 50_000
    assert 0 <= report.dead_fraction_training <= 1 and report.overall.tokens > 0
    foreign = tmp_path / "foreign"
    sae = load_sae(run / "sae")
    sae.config = sae.config.model_copy(update={"layer": None})
    save_sae(sae, foreign)
    with pytest.raises(ThinklensError, match=r"the SAE in .*foreign names no layer: pass --layer L \(layers in the activations in .*: 1\)"):
        evaluate(foreign, run / "activations", run / "traces", EvalConfig(lm_sequences=0))
    with pytest.raises(ThinklensError, match="reads layer 1 but layer 0 was asked"):
        evaluate(run / "sae", run / "activations", run / "traces", EvalConfig(lm_sequences=0, layer=0))
    given = evaluate(foreign, run / "activations", run / "traces", EvalConfig(lm_sequences=0, layer=1))
    assert given.overall == report.overall  # the same weights on the same layer
    assert given.dead_fraction_training is None  # saved without training metadata


@pytest.mark.integration
def test_evaluate_adds_kl_and_probes_and_writes_saebench_layouts(indexed_run, monkeypatch):
    run = indexed_run
    monkeypatch.setattr("thinklens.sae.probing.MIN_PER_CLASS", 3)  # the fixture's 24 traces are few
    report = evaluate(run / "sae", run / "activations", run / "traces",
                      EvalConfig(lm_sequences=4, device="cpu", probe_ks=(1, 2)))
    lm = report.lm
    assert lm["kl_spliced"] >= 0 and lm["kl_zero_ablated"] > 0
    assert lm["kl_div_score"] == pytest.approx(1 - lm["kl_spliced"] / lm["kl_zero_ablated"])
    assert 0 < report.features["frac_alive"] <= 1
    assert report.probes and all(probe.task.startswith(("operator=", "correct", "source=")) for probe in report.probes)
    for probe in report.probes:
        assert set(probe.top_k_accuracy) == {1, 2} and 0 <= probe.sae_accuracy <= 1
    document = report.as_dict()
    cfg = {"architecture": "topk"}
    core = core_result(document, {"lm_sequences": 4}, cfg)
    assert core["eval_type_id"] == "core" and core["sae_cfg_dict"] == cfg
    assert set(core["eval_result_metrics"]) == {
        "model_behavior_preservation", "model_performance_preservation", "reconstruction_quality", "shrinkage",
        "sparsity", "token_stats", "misc_metrics"}
    metrics = core["eval_result_metrics"]
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(1 - report.overall.fvu)
    assert metrics["model_performance_preservation"]["ce_loss_score"] == lm["loss_recovered"]
    assert metrics["model_behavior_preservation"]["kl_div_score"] == lm["kl_div_score"]
    probing = sparse_probing_result(report.probes, (1, 2), {}, cfg)
    assert {"llm_test_accuracy"} == set(probing["eval_result_metrics"]["llm"])
    assert {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy"} == set(
        probing["eval_result_metrics"]["sae"])
    assert [row["dataset_name"] for row in probing["eval_result_details"]] == [p.task for p in report.probes]
