"""Steering acts on exactly the positions its policy selects, under the KV cache and without it."""

from __future__ import annotations

import pytest
import torch

from thinklens.activations.capture import capture_resid_post
from thinklens.data.segments import PrefixConfig, segment_trace
from thinklens.errors import ThinklensError
from thinklens.models.formats import make_format
from thinklens.models.generate import Sampling
from thinklens.models.loader import ModelConfig, load_model
from thinklens.sae.sae import Sae, SaeConfig
from thinklens.steering.engine import FeatureEdit, SteeringHook, SteeringSpec, steering
from thinklens.steering.variant import Variant

pytestmark = pytest.mark.integration
PROMPTS = ["What is 2 + 3?", "Alice is taller than Bob. Bob is taller than Carol. Who is the tallest?"]
PREFILLS = ["Okay, so the user", "Okay, so the user has asked a question about who is tallest and"]


@pytest.fixture(scope="module", params=["qwen2", "deepseek_v3"])  # a dense model, and R1's family (MoE, MLA)
def variant_parts(tiny_models, request):
    loaded = load_model(ModelConfig(model=str(tiny_models[request.param]), device="cpu"))
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch="topk", d_in=64, d_sae=128, k=8, layer=1))
    typical = {feature: 2.0 for feature in range(128)}
    return loaded, sae, typical


def _variant(parts, policy: str, strength: float = 20.0, prefix: PrefixConfig | None = None) -> Variant:
    loaded, sae, typical = parts
    variant = Variant(loaded, sae, typical_max=typical, fmt=make_format("r1"), prefix=prefix or PrefixConfig(max_tokens=12))
    return variant.set(feature=3, strength=strength, policy=policy)


def test_changed_positions_equal_the_selected_ones(variant_parts):
    loaded, sae, _ = variant_parts
    variant = _variant(variant_parts, "first_token")
    (output,) = variant.generate(PROMPTS[:1], max_new_tokens=12, sampling=Sampling(greedy=True))
    n = len(output.token_ids)
    # Every generated position but the last (sampled, never fed back) goes through the model steered.
    assert output.acted == list(range(output.generation_start, n - 1))
    # Replaying the final sequence with the same hook: the residual changes exactly there.
    ids = torch.tensor([output.token_ids])
    with capture_resid_post(loaded.model, [1], stop_early=False) as clean:
        loaded.model(ids)
    clean_hidden = clean[1][0].clone()
    hook = SteeringHook(variant.spec, sae, 1, variant.typical_max, loaded.tokenizer, variant.fmt, variant.prefix,
                        [output.token_ids[: output.generation_start]])
    hook.before_forward(torch.tensor([0]), torch.arange(n)[None])
    with steering(loaded.model, hook), capture_resid_post(loaded.model, [1], stop_early=False) as steered:
        loaded.model(ids)
    changed = (steered[1][0] - clean_hidden).abs().sum(dim=-1) > 0
    assert changed.nonzero().flatten().tolist() == list(range(output.generation_start, n))
    expected = variant.typical_max[3] * 20.0 * sae.W_dec[3] / sae.config.input_scale  # strength × typical max × d_f
    torch.testing.assert_close(steered[1][0][-1] - clean_hidden[-1], expected.detach(), rtol=1e-4, atol=1e-3)


def test_greedy_output_is_identical_with_and_without_the_cache(variant_parts):
    for policy in ("first_token", "after_prefix"):
        variant = _variant(variant_parts, policy)
        cached = variant.generate(PROMPTS, max_new_tokens=14, sampling=Sampling(greedy=True), prefills=PREFILLS)
        uncached = variant.generate(PROMPTS, max_new_tokens=14, sampling=Sampling(greedy=True), prefills=PREFILLS,
                                    use_cache=False)
        assert [o.token_ids for o in cached] == [o.token_ids for o in uncached]
        assert [o.start for o in cached] == [o.start for o in uncached]


def test_first_token_and_after_prefix_act_on_different_positions(variant_parts):
    first = _variant(variant_parts, "first_token").generate(PROMPTS, 16, Sampling(greedy=True), prefills=PREFILLS)
    after = _variant(variant_parts, "after_prefix").generate(PROMPTS, 16, Sampling(greedy=True), prefills=PREFILLS)
    for a, b in zip(first, after, strict=True):
        assert a.start == a.generation_start
        assert b.start > b.trace.segments.prefix_start
        assert a.acted != b.acted


def test_batched_prefixes_each_start_where_their_own_prefix_ends(variant_parts):
    variant = _variant(variant_parts, "after_prefix")
    outputs = variant.generate(PROMPTS, max_new_tokens=20, sampling=Sampling(greedy=True), prefills=PREFILLS)
    starts = []
    for output in outputs:
        # Decided during generation = what segmentation of the finished trace says.
        segments = segment_trace(variant.loaded.tokenizer, output.token_ids, output.generation_start, variant.fmt,
                                 variant.prefix).segments
        assert segments.prefix_matched
        assert output.start == segments.prefix_end
        assert output.acted == list(range(int(output.start), len(output.token_ids) - 1))
        starts.append(output.start - output.generation_start)
    assert starts[0] != starts[1]


def test_steering_changes_the_output_and_unsteered_matches_plain_generation(variant_parts):
    loaded, sae, typical = variant_parts
    plain = Variant(loaded, sae, typical, fmt=make_format("r1")).generate(PROMPTS, 10, Sampling(greedy=True))
    pushed = _variant(variant_parts, "first_token", strength=200.0).generate(PROMPTS, 10, Sampling(greedy=True))
    assert [o.token_ids for o in plain] != [o.token_ids for o in pushed]
    assert all(o.acted == [] for o in plain)


@pytest.mark.parametrize(("mode", "strength"), [("clamp", 7.0), ("scale", 3.0)])
def test_clamp_and_scale_replace_the_features_decoder_contribution(variant_parts, mode, strength):
    # The SAE reconstruction's term for feature f is a_f·d_f; clamp makes it 7·d_f, scale 3·a_f·d_f,
    # everything else (other features, the SAE's error) untouched: h' − h = (target − a_f)·d_f.
    loaded, sae, typical = variant_parts
    torch.manual_seed(1)
    hidden = torch.randn(1, 1, 64) * 3 + 0.1 * torch.randn(1, 3, 64)  # similar tokens: the same features fire
    with torch.no_grad():
        acts = sae.encode(hidden[0], batch_dependent=False).dense()
    feature = int((acts > 0).all(dim=0).float().mul(acts.sum(dim=0)).argmax())  # active on every position
    spec = SteeringSpec(edits=(FeatureEdit(feature=feature, strength=strength, mode=mode),), policy="index:1")
    hook = SteeringHook(spec, sae, 1, typical, loaded.tokenizer, make_format("r1"), PrefixConfig(), [[1, 2, 3]])
    hook.before_forward(torch.tensor([0]), torch.arange(3)[None])
    edited = hook(hidden)
    current = acts[:, feature]
    assert bool((current > 0).all())
    with torch.no_grad():
        direction = sae.W_dec[feature] / sae.config.input_scale
    target = torch.full_like(current, strength) if mode == "clamp" else current * strength
    expected = (target - current)[:, None] * direction
    torch.testing.assert_close(edited[0, 1:] - hidden[0, 1:], expected[1:], rtol=1e-4, atol=1e-4)
    assert torch.equal(edited[0, 0], hidden[0, 0])  # index:1 leaves position 0 alone


def test_bad_specs_are_refused(variant_parts):
    loaded, sae, typical = variant_parts
    with pytest.raises(ValueError, match="unknown position policy 'later'"):
        SteeringSpec(edits=(FeatureEdit(feature=1, strength=1.0),), policy="later")
    spec = SteeringSpec(edits=(FeatureEdit(feature=999, strength=1.0),))
    with pytest.raises(ThinklensError, match="feature 999 does not exist"):
        SteeringHook(spec, sae, 1, typical, loaded.tokenizer, make_format("r1"), PrefixConfig(), [[1]])
    spec = SteeringSpec(edits=(FeatureEdit(feature=1, strength=1.0),))
    with pytest.raises(ThinklensError, match="never fired"):
        SteeringHook(spec, sae, 1, {}, loaded.tokenizer, make_format("r1"), PrefixConfig(), [[1]])


def test_the_steering_layer_follows_the_one_rule(variant_parts):
    loaded, sae, typical = variant_parts  # a 2- or 3-layer model; the SAE reads layer 1
    assert Variant(loaded, sae, typical, fmt=make_format("r1")).layer == 1
    assert Variant(loaded, sae, typical, fmt=make_format("r1"), layer=1).layer == 1
    with pytest.raises(ThinklensError, match="reads layer 1 but layer 0 was asked"):
        Variant(loaded, sae, typical, fmt=make_format("r1"), layer=0)
    unnamed = Sae(sae.config.model_copy(update={"layer": None}))
    assert Variant(loaded, unnamed, typical, fmt=make_format("r1"), layer=1).layer == 1
    variant = Variant(loaded, unnamed, typical, fmt=make_format("r1"))
    variant.generate(PROMPTS[:1], 2, Sampling(greedy=True))  # unsteered generation needs no layer
    with pytest.raises(ThinklensError, match=r"names no layer: pass layer= to Variant.* \(layers in the model .*: 0, 1(, 2)?\)"):
        variant.set(feature=3, strength=1.0).generate(PROMPTS[:1], 2, Sampling(greedy=True))


def test_batched_readouts_equal_the_per_sample_ones(variant_parts):
    from thinklens.steering.metrics import unsteered_readout, unsteered_readouts

    loaded, sae, _ = variant_parts
    variant = _variant(variant_parts, "first_token")
    outputs = variant.generate(PROMPTS, max_new_tokens=10, sampling=Sampling(greedy=True))
    assert len({len(o.token_ids) for o in outputs}) > 1  # rows of different lengths: the batch is padded
    batched = unsteered_readouts(loaded, sae, 3, 1, outputs)
    for output, (perplexity, readback) in zip(outputs, batched, strict=True):
        alone = unsteered_readout(loaded, sae, 3, 1, output)
        assert perplexity == pytest.approx(alone[0], rel=1e-4) and readback == pytest.approx(alone[1], rel=1e-4, abs=1e-6)


def test_a_kept_readouts_reuses_the_prompt_pass_and_still_equals_the_per_sample_ones(variant_parts):
    from thinklens.steering.metrics import unsteered_readout
    from thinklens.steering.readout import Readouts

    loaded, sae, _ = variant_parts
    readouts = Readouts(loaded, layer=1)
    first = _variant(variant_parts, "first_token").generate(PROMPTS, max_new_tokens=6, sampling=Sampling(greedy=True))
    second = _variant(variant_parts, "after_prefix", strength=4.0).generate(PROMPTS, max_new_tokens=9,
                                                                          sampling=Sampling(greedy=True))
    assert len({o.generation_start for o in second}) > 1  # prompts of different lengths: left-padded once
    for outputs in (first, second, first):  # the second and third calls run on the kept prompt pass
        for output, (perplexity, readback) in zip(outputs, readouts(outputs, sae, 3), strict=True):
            alone = unsteered_readout(loaded, sae, 3, 1, output)
            assert perplexity == pytest.approx(alone[0], rel=1e-4)
            assert readback == pytest.approx(alone[1], rel=1e-4, abs=1e-6)
    assert len(readouts._passes) == 1
    (kept,) = readouts._passes.values()
    assert kept.cache.get_seq_length() == kept.mask.shape[1]  # cropped back to the prompts after every call
