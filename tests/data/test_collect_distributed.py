"""Collect on a local Ray cluster: two workers write the trace parts one process writes, byte for byte,
and a worker that dies costs only the batches it had not finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinklens.data.collect import CollectConfig, GenerationConfig
from thinklens.data.traces import TraceStore
from thinklens.distributed.collect import EXIT_AFTER_ENV, collect
from thinklens.errors import ThinklensError
from thinklens.models.loader import ModelConfig

pytest.importorskip("ray")
pytestmark = pytest.mark.integration


def _config(tiny_models, **placement) -> CollectConfig:
    """Sampled (not greedy) generation in batches of 3: 12 prompts make 4 batches, each seeded by its first."""
    return CollectConfig(model=ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"), prompts="arithmetic",
                         limit=12, generation=GenerationConfig(max_new_tokens=12, batch_size=3), **placement)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def single(tiny_models, tmp_path_factory) -> Path:
    traces = tmp_path_factory.mktemp("single") / "traces"
    collect(_config(tiny_models), traces, show_progress=False)
    assert len(TraceStore(traces).parts()) == 4
    return traces


def test_two_ray_workers_write_the_traces_one_process_writes(tiny_models, single, tmp_path):
    traces = tmp_path / "traces"
    result = collect(_config(tiny_models, workers=2), traces, show_progress=False)
    assert (result.n_written, result.format) == (12, "r1")
    assert _files(traces) == _files(single)  # every part and the store's meta (workers is placement)
    again = collect(_config(tiny_models, workers=2), traces, show_progress=False)
    assert again.n_written == 0


def test_a_dead_worker_costs_only_its_unfinished_batches(tiny_models, single, tmp_path, monkeypatch):
    traces = tmp_path / "traces"
    monkeypatch.setenv(EXIT_AFTER_ENV, "1")  # each worker's process dies right after its first batch
    with pytest.raises(ThinklensError, match="a collect worker died"):
        collect(_config(tiny_models, workers=2), traces, show_progress=False)
    monkeypatch.delenv(EXIT_AFTER_ENV)
    kept = TraceStore(traces).parts()
    assert 1 <= len(kept) < 4
    resumed = collect(_config(tiny_models), traces, show_progress=False)  # one process finishes the rest
    assert resumed.n_written == 12 - 3 * len(kept)
    assert _files(traces) == _files(single)


def test_a_model_that_does_not_load_is_one_line_naming_the_fix(tmp_path):
    config = CollectConfig(model=ModelConfig(model=str(tmp_path / "no-such-model"), device="cpu"), limit=2,
                           workers=2)
    with pytest.raises(ThinklensError) as raised:
        collect(config, tmp_path / "traces", show_progress=False)
    assert "\n" not in str(raised.value) and "no-such-model" in str(raised.value)
    assert not (tmp_path / "traces" / "meta.json").exists()
