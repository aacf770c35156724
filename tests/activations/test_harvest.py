"""Harvest into the store: rows match direct forward passes, the index matches the traces, resume, refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from thinklens.activations.capture import run_to_layers
from thinklens.activations.harvest import HarvestConfig, harvest, plan_shards
from thinklens.activations.store import ActivationStore, ShardInfo
from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.segments import Segments
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.models.loader import ModelConfig, load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory) -> Path:
    """A run directory with 12 traces of the tiny Qwen2 (an R1-distill family) model."""
    run = tmp_path_factory.mktemp("run")
    config = CollectConfig(
        model=ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"),
        prompts="arithmetic",
        limit=12,
        generation=GenerationConfig(max_new_tokens=24, batch_size=6),
    )
    collect(config, run / "traces", show_progress=False)
    return run


def test_plan_packs_whole_sequences_in_order():
    # lengths 5, 4, 3, 9, 2 with capacity 9: [5+4] [3] [9] [2]; a 12-token sequence would sit alone.
    plan = plan_shards([10, 11, 12, 13, 14], [5, 4, 3, 9, 2], shard_tokens=9)
    assert plan == [
        ShardInfo(0, 0, 9, 10, 11), ShardInfo(1, 9, 3, 12, 12), ShardInfo(2, 12, 9, 13, 13), ShardInfo(3, 21, 2, 14, 14)
    ]
    assert plan_shards([0], [12], shard_tokens=9) == [ShardInfo(0, 0, 12, 0, 0)]


def test_harvest_rows_equal_single_sequence_forward_passes(tiny_run, tiny_models, tmp_path):
    config = HarvestConfig(layers=(0, 1), shard_tokens=200, batch_tokens=150)
    result = harvest(config, tiny_run / "traces", tmp_path / "activations", show_progress=False)
    store = ActivationStore(tmp_path / "activations")
    traces = TraceStore(tiny_run / "traces").read().to_pylist()
    assert result.token_count == store.token_count == sum(trace["n_tokens"] for trace in traces)
    assert len(store.shards()) > 1 and store.is_complete()
    manifest = store.manifest()
    assert (manifest.d_model, manifest.dtype, manifest.layers) == (64, "float32", [0, 1])
    assert manifest.names == ["layers.0.resid_post", "layers.1.resid_post"]
    assert (manifest.chat_format, manifest.token_count) == ("r1", store.token_count)
    assert manifest.model_fingerprint and manifest.arguments["shard_tokens"] == 200
    assert store.model_config() == TraceStore(tiny_run / "traces").model_config()
    # A fresh store object reads the same manifest back from disk.
    assert ActivationStore(tmp_path / "activations").manifest() == manifest

    index = store.index().to_pydict()
    assert index["row"] == list(range(store.token_count))
    loaded = load_model(ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"))
    row = 0
    for trace in traces:  # padded, length-sorted batches give each sequence exactly its own activations
        n = trace["n_tokens"]
        assert index["token_id"][row : row + n] == trace["token_ids"]
        assert index["sequence_id"][row : row + n] == [trace["sequence_id"]] * n
        bounds = {key: trace[key] for key in ("generation_start", "prompt_end", "prefix_start", "prefix_end", "thinking_end")}
        expected_segments = Segments(n_tokens=n, has_thinking=True, thinking_closed=True, prefix_matched=True,
                                     prefix_truncated=False, **bounds).labels().tolist()
        assert index["segment"][row : row + n] == expected_segments
        ids = torch.tensor([trace["token_ids"]])
        direct = run_to_layers(loaded.model, ids, torch.ones_like(ids), [0, 1])
        shard = next(s for s in store.shards() if s.first_row <= row < s.first_row + s.rows)
        for layer in (0, 1):
            stored = store.read_rows(layer, shard, slice(row - shard.first_row, row - shard.first_row + n))
            torch.testing.assert_close(stored, direct[layer][0], rtol=1e-4, atol=1e-5)
        row += n
    # The chat template (and special tokens) are flagged; the user's own words are not.
    first = traces[0]
    special = index["special"][: first["n_tokens"]]
    assert special[0] and not all(special[: first["prompt_end"]])


def test_rerun_does_nothing_and_other_layers_are_refused(tiny_run, tmp_path):
    target = tmp_path / "activations"
    harvest(HarvestConfig(layers=(1,)), tiny_run / "traces", target, show_progress=False)
    again = harvest(HarvestConfig(layers=(1,)), tiny_run / "traces", target, show_progress=False)
    assert again.shards_written == 0
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(ThinklensError, match=r"holds activations of another harvest \(layers: \[1\], asked \[0\]\)"):
        harvest(HarvestConfig(layers=(0,)), tiny_run / "traces", target, show_progress=False)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before


def test_bfloat16_storage_round_trips(tiny_run, tmp_path):
    harvest(HarvestConfig(layers=(1,), dtype="bfloat16"), tiny_run / "traces", tmp_path / "bf16", show_progress=False)
    harvest(HarvestConfig(layers=(1,)), tiny_run / "traces", tmp_path / "fp32", show_progress=False)
    bf16, fp32 = ActivationStore(tmp_path / "bf16"), ActivationStore(tmp_path / "fp32")
    low = bf16.read_rows(1, bf16.shards()[0], slice(0, 50))
    high = fp32.read_rows(1, fp32.shards()[0], slice(0, 50))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, high.to(torch.bfloat16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_an_unavailable_device_is_refused_before_anything_is_written(tiny_run, tmp_path):
    with pytest.raises(ThinklensError, match="device 'cuda' asked but CUDA is not available here"):
        harvest(HarvestConfig(layers=(1,), device="cuda"), tiny_run / "traces", tmp_path / "activations",
                show_progress=False)
    assert not (tmp_path / "activations").exists()


def test_missing_traces_name_the_command(tmp_path):
    with pytest.raises(ThinklensError, match="run `thinklens collect"):
        harvest(HarvestConfig(layers=(0,)), tmp_path / "traces", tmp_path / "activations", show_progress=False)


def test_sigkill_mid_harvest_then_resume_equals_uninterrupted(tiny_run, tmp_path):
    """A real harvest subprocess is killed after some shards; the re-run completes the exact same store."""
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "thinklens.cli", "harvest", str(out), "--layer", "1", "--shard-tokens", "40",
                "--batch-tokens", "40", "--device", "cpu"]

    for name in ("killed", "whole"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "traces").symlink_to(tiny_run / "traces")
    killed = tmp_path / "killed"
    manifest = killed / "activations" / "manifest.json"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    shards_at_kill = len(json.loads(manifest.read_text())["shards"])
    env = {**os.environ, "COLUMNS": "100"}
    subprocess.run(command(killed), check=True, capture_output=True, env=env)
    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True, env=env)
    resumed, whole = ActivationStore(killed / "activations"), ActivationStore(tmp_path / "whole" / "activations")
    assert shards_at_kill < len(whole.shards()), "the kill should land mid-run"
    assert resumed.shards() == whole.shards() and resumed.is_complete()
    for shard in whole.shards():
        assert np.array_equal(resumed.open_shard(1, shard), whole.open_shard(1, shard))
        assert resumed.read_index(shard).equals(whole.read_index(shard))
    assert not list((killed / "activations").rglob(".tmp-*"))
