"""The real embedded default model: SmolLM2-135M-Instruct from its GGUF file."""

from __future__ import annotations

import pytest
import torch

from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.traces import TraceStore
from thinklens.models.formats import detect_format
from thinklens.models.layers import decoder_blocks
from thinklens.models.loader import ModelConfig

pytestmark = pytest.mark.acceptance


def test_smollm2_loads_and_generates(smollm2):
    path, blocks = decoder_blocks(smollm2.model)
    assert (path, len(blocks), smollm2.model.config.hidden_size) == ("model.layers", 30, 576)
    assert detect_format(smollm2.tokenizer) == "think"
    assert len(smollm2.fingerprint) == 64  # sha256 of the GGUF file
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.inference_mode():
        output = smollm2.model.generate(ids, max_new_tokens=12, do_sample=False)
    reply = smollm2.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    assert "5" in reply


def test_collect_with_smollm2_segments_the_forced_opening(smollm2, tmp_path):
    config = CollectConfig(
        model=ModelConfig(model="smollm2", device="cpu"),
        prompts="arithmetic",
        limit=4,
        generation=GenerationConfig(max_new_tokens=24, batch_size=4),
    )
    result = collect(config, tmp_path / "traces", show_progress=False)
    assert result.n_written == 4 and result.format == "think"
    for trace in TraceStore(tmp_path / "traces").read().to_pylist():
        assert trace["prefix_text"].startswith("Okay, so")
        assert trace["prefix_matched"]
        assert trace["prompt_end"] < trace["generation_start"] < trace["prefix_end"]
        assert 1 <= trace["n_tokens"] - trace["generation_start"] <= 24
