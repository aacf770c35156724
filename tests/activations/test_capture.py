"""Captured residual streams equal `output_hidden_states` for every family; early stop skips later blocks."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import FAMILIES
from thinklens.activations.capture import capture_resid_post, run_to_layers
from thinklens.models.layers import decoder_blocks
from thinklens.models.loader import ModelConfig, load_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_output_hidden_states(tiny_models, family):
    loaded = load_model(ModelConfig(model=str(tiny_models[family]), device="cpu"))
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    batch = tokenizer(["Okay, so the user has asked 2 + 3.", "Hmm"], return_tensors="pt", padding=True)
    _, blocks = decoder_blocks(loaded.model)
    # hidden_states[i + 1] is the output of block i, except the last, which HF returns after the final norm.
    layers = list(range(len(blocks) - 1))
    captured = run_to_layers(loaded.model, batch["input_ids"], batch["attention_mask"], layers)
    with torch.no_grad():
        reference = loaded.model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    for layer in layers:
        torch.testing.assert_close(captured[layer][real], reference[layer + 1][real], rtol=1e-5, atol=1e-5)


def test_forward_stops_after_the_last_needed_block(tiny_models):
    loaded = load_model(ModelConfig(model=str(tiny_models["llama"]), device="cpu"))
    _, blocks = decoder_blocks(loaded.model)
    calls = []
    handle = blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        ids = loaded.tokenizer("Okay", return_tensors="pt")
        captured = run_to_layers(loaded.model, ids["input_ids"], ids["attention_mask"], [0])
    finally:
        handle.remove()
    assert list(captured) == [0] and calls == []


def test_hooks_are_removed_even_after_an_exception(tiny_models):
    loaded = load_model(ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"))
    _, blocks = decoder_blocks(loaded.model)
    with pytest.raises(RuntimeError, match="boom"), capture_resid_post(loaded.model, [0, 1]):
        raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in blocks)
