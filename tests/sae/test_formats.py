"""SAE files: bit-identical reloads through the thinklens and SAELens-layout paths, R1 .pt, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from thinklens.errors import ThinklensError
from thinklens.sae.formats import check_width, from_saelens, load_r1_pt, load_sae, save_sae
from thinklens.sae.sae import ARCHS, Sae, SaeConfig


def _trained_like(arch: str, centred: bool = True) -> Sae:
    torch.manual_seed(0)
    sae = Sae(SaeConfig(arch=arch, d_in=16, d_sae=48, k=4, model="smollm2", layer=15, chat_format="think",
                        centred_encoder=centred))
    sae.init_from_data(torch.randn(128, 16) * 40 + 7)  # input_scale becomes 2^-5 or so
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
        if arch.startswith("batchtopk"):
            sae.threshold.fill_(0.25)  # the inference threshold travels only with BatchTopK
    return sae.eval()


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_reload_is_bit_identical_through_both_paths(arch, centred, tmp_path):
    sae = _trained_like(arch, centred)
    assert sae.config.input_scale != 1.0
    save_sae(sae, tmp_path, metadata={"training": {"k": 4}})
    again = load_sae(tmp_path)
    assert again.config == sae.config
    for (name, ours), (_, theirs) in zip(sae.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name

    cfg = json.loads((tmp_path / "cfg.json").read_text())
    saelens_keys = {key: value for key, value in cfg.items() if key != "thinklens"}
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (16, 48) and tensors["W_dec"].shape == (48, 16)
    assert cfg["hook_name"] == "blocks.15.hook_resid_post" and cfg["thinklens"]["hook_name"] == "layers.15.resid_post"
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard"}.get(arch, "jumprelu")
    assert cfg["apply_b_dec_to_input"] is centred  # SAELens subtracts b_dec itself: no folding, no rounding
    foreign = from_saelens(saelens_keys, tensors)  # what any SAELens-layout reader sees: untied, unscaled
    x = torch.randn(64, 16) * 40
    with torch.no_grad():  # at inference: BatchTopK by its threshold, as SAELens's JumpReLU computes it
        assert torch.equal(foreign.encode(x, batch_dependent=False).dense(), sae.encode(x, batch_dependent=False).dense())
        torch.testing.assert_close(foreign(x).recon, sae(x).recon, rtol=1e-6, atol=1e-5)


def test_saelens_apply_b_dec_to_input_is_read_as_a_centred_encoder():
    torch.manual_seed(0)
    d_in, d_sae = 8, 24
    tensors = {"W_enc": torch.randn(d_in, d_sae), "W_dec": torch.randn(d_sae, d_in), "b_enc": torch.randn(d_sae),
               "b_dec": torch.randn(d_in)}
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True}
    sae = from_saelens(cfg, tensors)
    assert sae.config.centred_encoder
    x = torch.randn(5, d_in)
    expected = torch.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"])
    torch.testing.assert_close(sae.encode(x).dense(), expected, rtol=1e-5, atol=1e-5)


def test_r1_release_layout_matches_the_direct_computation(tmp_path):
    torch.manual_seed(0)
    d_in, d_sae, k = 12, 48, 3
    state = {"W": torch.randn(d_in, d_sae).bfloat16(), "b_enc": torch.randn(d_sae).bfloat16(),
             "b_dec": torch.randn(d_in).bfloat16()}  # the math SAE ships in bf16
    torch.save(state, tmp_path / "r1_math.pt")
    sae = load_r1_pt(tmp_path / "r1_math.pt", k=k)
    W, b_enc, b_dec = (state[name].float() for name in ("W", "b_enc", "b_dec"))
    x = torch.randn(10, d_in)
    pre = torch.relu(x @ W + b_enc)  # encode: ReLU(x W + b_enc), then the top k·batch values of the batch
    cut = pre.flatten().topk(k * 10).values[-1]
    f = pre * (pre >= cut)
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes.dense(), f)
        torch.testing.assert_close(sae.decode(codes), f @ W.T + b_dec, rtol=1e-5, atol=1e-5)
    assert sae.config.tied and sae.config.d_in == d_in


def test_bad_files_and_widths_are_refused(tmp_path):
    with pytest.raises(ThinklensError, match="no SAE in"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ThinklensError, match="corrupt"):
        load_sae(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ThinklensError, match="cannot read"):
        load_r1_pt(tmp_path / "bad.pt", k=64)
    torch.save({"W": torch.zeros(4, 8)}, tmp_path / "partial.pt")
    with pytest.raises(ThinklensError, match=r"lacks \['b_dec', 'b_enc'\]"):
        load_r1_pt(tmp_path / "partial.pt", k=64)
    sae = Sae(SaeConfig(arch="topk", d_in=7168, d_sae=8, k=2))
    with pytest.raises(ThinklensError, match="width 7168 but SmolLM2 layer 15 has width 576"):
        check_width(sae, 576, "SmolLM2 layer 15")
