"""The SAE module: gradients equal a dense reference, exact BatchTopK, batch-independent inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from thinklens.sae.sae import ARCHS, Sae, SaeConfig, _indices_at_least, batch_topk_mask, geometric_median_of


def _dense_reference(sae: Sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook dense computation of the same SAE: (reconstruction, activations)."""
    scale, k = sae.config.input_scale, sae.config.k
    encoder_input = x * scale - sae.b_dec if sae.config.centred_encoder else x * scale
    pre = encoder_input @ sae.encoder_weight.T + sae.b_enc
    with torch.no_grad():
        if sae.config.arch == "topk":
            mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(k, dim=-1).indices, True)
        elif sae.config.arch == "relu":
            mask = pre > 0
        else:
            flat_cut = F.relu(pre).flatten().topk(k * len(x)).values[-1]
            mask = (pre >= flat_cut) & (pre > 0)
    acts = F.relu(pre) * mask
    return (acts @ sae.W_dec + sae.b_dec) / scale, acts


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_paths_give_the_dense_loss_and_gradients(arch, centred):
    """Including b_dec's gradient through a centred encoder's x − b_dec."""
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch=arch, d_in=16, d_sae=64, k=4, centred_encoder=centred)).train()
    x = torch.randn(32, 16) * 3 + 1
    sae.init_from_data(x)
    output = sae(x)
    ((output.recon - x).pow(2).sum() + 0.1 * output.codes.values.sum()).backward()
    sparse_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    recon, acts = _dense_reference(sae, x)
    ((recon - x).pow(2).sum() + 0.1 * acts.sum()).backward()
    torch.testing.assert_close(output.codes.dense(), acts.detach())
    for name, parameter in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], parameter.grad, rtol=1e-4, atol=1e-4)
    assert ("W_enc" in sparse_grads) == (arch != "batchtopk_tied")


def test_batch_topk_worked_example_and_fallback():
    # k=1 over 2 rows keeps the 2 largest positive values of the whole batch: 9 and 7 (both in row 0).
    pre = torch.tensor([[9.0, 7.0, -1.0], [5.0, 0.5, -3.0]])
    assert batch_topk_mask(pre, k=1).tolist() == [[True, True, False], [False, False, False]]
    # A row holding more than 4k of the top values takes the exact fallback: same as a flat top-k.
    torch.manual_seed(1)
    pre = torch.randn(8, 64)
    pre[0] += 10
    flat = torch.zeros(8 * 64, dtype=torch.bool)
    flat[pre.flatten().topk(16).indices] = True
    assert torch.equal(batch_topk_mask(pre, k=2), flat.view(8, 64))


@pytest.mark.parametrize("seed", range(6))
def test_batch_topk_is_exact_when_rows_overflow_their_candidates(seed):
    # Some rows hold far more than 4k of the batch's top values (one needs widening twice), as rows of
    # real activations with a large shared offset do; the result must equal a flat top-k's.
    generator = torch.Generator().manual_seed(seed)
    n, d_sae, k = 64, 512, 4
    pre = torch.randn(n, d_sae, generator=generator)
    pre[:3] += torch.linspace(4, 12, 3)[:, None]  # row 2 alone holds more than 16k·4 values above the rest
    pre[5, :40] += 6.0
    flat = torch.zeros(n * d_sae, dtype=torch.bool)
    flat[pre.flatten().topk(n * k).indices] = True
    assert torch.equal(batch_topk_mask(pre, k=k), flat.view(n, d_sae) & (pre > 0))


@pytest.mark.parametrize(("size", "density"), [(8 * 1000, 0.01), (8 * 1000, 0.6), (8 * 125 + 3, 0.05), (64, 0.0)])
def test_candidate_indices_read_by_words_equal_nonzero(size, density):
    generator = torch.Generator().manual_seed(size)
    flat = torch.rand(size, generator=generator)
    cut = torch.tensor(1 - density)
    assert torch.equal(_indices_at_least(flat, cut), (flat >= cut).nonzero().squeeze(1))


def test_batchtopk_inference_is_batch_independent_once_the_threshold_is_learnt():
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch="batchtopk", d_in=8, d_sae=32, k=3))
    x = torch.randn(20, 8)
    sae.threshold.fill_(0.4)
    sae.eval()
    together = sae.encode(x).dense()
    alone = torch.cat([sae.encode(row[None]).dense() for row in x])
    torch.testing.assert_close(together, alone)
    assert torch.equal(together > 0, sae.pre_acts(x) > 0.4)
    assert not torch.equal(sae.encode(x, batch_dependent=True).dense() > 0, together > 0)


def test_geometric_median_worked_example():
    # On a line, the geometric median is the ordinary median: of 0, 1 and 10 it is 1 (the mean is 3.67).
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(geometric_median_of(points), torch.tensor([1.0, 0.0]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("centred", [True, False])
def test_data_init_centres_the_encoder_and_scales_by_a_power_of_two(centred):
    torch.manual_seed(0)
    x = torch.randn(256, 16) + 50.0  # a large shared mean, as in residual streams
    sae = Sae(SaeConfig(arch="topk", d_in=16, d_sae=32, k=4, centred_encoder=centred))
    sae.init_from_data(x, geometric_median=False)
    scale = sae.config.input_scale
    assert scale == 2.0 ** round(math.log2(4.0 / x.norm(dim=-1).mean().item()))  # √16 = 4
    torch.testing.assert_close(sae.b_dec, (x * scale).mean(dim=0))
    # At initialisation the encoder sees x − b_dec: pre-activations of the mean input are zero.
    torch.testing.assert_close(sae.pre_acts(x.mean(dim=0, keepdim=True)), torch.zeros(1, 32), atol=1e-4, rtol=0)


def test_a_centred_encoder_stays_centred_when_b_dec_moves():
    """The difference the centred encoder makes: moving b_dec (as training does) moves what an uncentred
    encoder sees by b_dec's shift projected on every feature; a centred encoder's pre-activations of the
    new centre stay at b_enc."""
    torch.manual_seed(0)
    x = torch.randn(256, 16) + 50.0
    for centred, drift in ((True, 0.0), (False, None)):
        sae = Sae(SaeConfig(arch="topk", d_in=16, d_sae=32, k=4, centred_encoder=centred))
        sae.init_from_data(x, geometric_median=False)
        with torch.no_grad():
            sae.b_dec.add_(1.0)
        centre = (sae.b_dec / sae.config.input_scale)[None]
        moved = (sae.pre_acts(centre) - sae.b_enc).abs().max().item()
        assert moved == pytest.approx(drift, abs=1e-4) if drift is not None else moved > 0.1


def test_threshold_calibration_keeps_k_per_token_on_average():
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch="batchtopk_tied", d_in=16, d_sae=64, k=4))
    batches = [torch.randn(512, 16) * 2 + 1 for _ in range(4)]
    sae.init_from_data(torch.cat(batches))
    sae.calibrate_threshold(batches)
    cuts = [sae.pre_acts(x)[batch_topk_mask(sae.pre_acts(x), 4)].min() for x in batches]
    assert sae.threshold.item() == pytest.approx(torch.stack(cuts).mean().item())
    sae.eval()
    l0 = torch.cat([sae.encode(x).l0().float() for x in batches]).mean().item()
    assert l0 == pytest.approx(4, rel=0.05)
    topk = Sae(SaeConfig(arch="topk", d_in=16, d_sae=64, k=4))
    topk.calibrate_threshold(batches)
    assert topk.threshold.item() == -1.0  # only BatchTopK SAEs have one


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("threshold", [-1.0, 0.3])
def test_one_features_activations_are_its_column_of_the_codes(arch, threshold):
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch=arch, d_in=16, d_sae=48, k=4)).eval()
    with torch.no_grad():
        sae.b_enc.normal_()
    sae.threshold.fill_(threshold)
    x = torch.randn(40, 16)
    dense = sae.encode(x, batch_dependent=False).dense()
    for feature in (0, 7, 47):
        assert torch.allclose(sae.feature_activations(x, feature), dense[:, feature], atol=1e-5)
    assert (dense > 0).any()
