"""A killed index resumes from its checkpoint: the shards it had merged are not encoded again, and the
database is the one an uninterrupted build writes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinklens.activations.store import ActivationStore
from thinklens.features import build
from thinklens.features.build import IndexConfig, build_index

CONFIG = IndexConfig(top=8, quantile_samples=4, batch_size=256, checkpoint_seconds=0)
_SHARD_STATE = build.shard_state


def _build(run: Path, db: Path, config: IndexConfig = CONFIG) -> build.IndexResult:
    return build_index(config, run / "sae", run / "activations", run / "traces", db, show_progress=False)


class _Killed(BaseException):
    """What a kill looks like from inside: nothing after it runs (not even `except Exception`)."""


def _encoding_counted(monkeypatch, kill_at: int | None = None) -> list[int]:
    """Count (and number) the shards encoded; with `kill_at`, the build dies encoding that one."""
    encoded: list[int] = []

    def counted(sae, store, layer, shard, *args, **kwargs):
        if kill_at is not None and len(encoded) == kill_at:
            raise _Killed
        encoded.append(shard.shard)
        return _SHARD_STATE(sae, store, layer, shard, *args, **kwargs)

    monkeypatch.setattr(build, "shard_state", counted)
    return encoded


def test_a_killed_index_resumes_after_its_checkpoint_to_the_same_database(indexed_run, tmp_path, monkeypatch,
                                                                        one_build_second):
    shards = [shard.shard for shard in ActivationStore(indexed_run / "activations").shards()]
    assert len(shards) >= 4
    whole = tmp_path / "whole.db"
    _build(indexed_run, whole)
    db = tmp_path / "features.db"
    checkpoint = db.with_name("features.db.checkpoint")
    _encoding_counted(monkeypatch, kill_at=3)
    with pytest.raises(_Killed):
        _build(indexed_run, db)
    assert checkpoint.is_file() and not db.exists()
    encoded = _encoding_counted(monkeypatch)
    _build(indexed_run, db)
    assert encoded == shards[3:]  # the three merged shards came from the checkpoint
    assert db.read_bytes() == whole.read_bytes()
    assert not checkpoint.exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(indexed_run, tmp_path, monkeypatch, one_build_second):
    shards = [shard.shard for shard in ActivationStore(indexed_run / "activations").shards()]
    db = tmp_path / "features.db"
    _encoding_counted(monkeypatch, kill_at=2)
    with pytest.raises(_Killed):
        _build(indexed_run, db)
    encoded = _encoding_counted(monkeypatch)
    other = CONFIG.model_copy(update={"top": 6})
    _build(indexed_run, db, other)
    assert encoded == shards  # nothing of the top-8 build was reused
    assert db.read_bytes() == _build_fresh(indexed_run, tmp_path / "fresh.db", other)


def _build_fresh(run: Path, db: Path, config: IndexConfig) -> bytes:
    _build(run, db, config)
    return db.read_bytes()
