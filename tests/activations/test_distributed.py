"""Harvest on a local Ray cluster: two workers write the store one process writes, byte for byte, and a
worker that dies mid-harvest costs only its unfinished shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinklens.activations.harvest import HarvestConfig
from thinklens.activations.store import ActivationStore
from thinklens.distributed.harvest import EXIT_AFTER_ENV, harvest
from thinklens.errors import ThinklensError

pytest.importorskip("ray")

CONFIG = HarvestConfig(layers=(0, 1), shard_tokens=300)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


@pytest.fixture(scope="module")
def single(indexed_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "activations"
    harvest(CONFIG, indexed_run / "traces", out, show_progress=False)
    assert len(ActivationStore(out).shards()) >= 4  # enough shards for two workers to share
    return out


@pytest.mark.integration
def test_two_ray_workers_write_the_same_store_as_one_process(indexed_run, single, tmp_path):
    out = tmp_path / "activations"
    result = harvest(CONFIG.model_copy(update={"workers": 2}), indexed_run / "traces", out, show_progress=False)
    assert result.shards_written == len(ActivationStore(single).shards()) and result.shards_skipped == 0
    assert _files(out) == _files(single)  # every file, the manifest included; no marker left behind
    again = harvest(CONFIG.model_copy(update={"workers": 2}), indexed_run / "traces", out, show_progress=False)
    assert again.shards_written == 0


@pytest.mark.integration
def test_a_dead_worker_costs_only_its_unfinished_shards(indexed_run, single, tmp_path, monkeypatch):
    out = tmp_path / "activations"
    monkeypatch.setenv(EXIT_AFTER_ENV, "1")  # each worker's process dies right after its first shard
    with pytest.raises(ThinklensError, match="a harvest worker died"):
        harvest(CONFIG.model_copy(update={"workers": 2}), indexed_run / "traces", out, show_progress=False)
    monkeypatch.delenv(EXIT_AFTER_ENV)
    finished = ActivationStore(out).marked_shards()
    assert 1 <= len(finished) <= 2 and not ActivationStore(out).is_complete()
    resumed = harvest(CONFIG.model_copy(update={"workers": 2}), indexed_run / "traces", out, show_progress=False)
    total = len(ActivationStore(single).shards())
    assert resumed.shards_written == total - len(finished)  # the marked shards were not redone
    assert _files(out) == _files(single)


def test_workers_without_ray_is_one_line(monkeypatch, indexed_run, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ThinklensError, match=r"pip install 'thinklens\[ray\]'"):
        harvest(CONFIG.model_copy(update={"workers": 2}), indexed_run / "traces", tmp_path / "a", show_progress=False)
