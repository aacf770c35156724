"""Each writing stage killed at a deterministic point, inside the windows between the files of one
artifact, then run again: the result is the uninterrupted run's, byte for byte (the feature database row for row:
its migration log records when it was made). (Train's windows are in
tests/sae/test_train.py.) The kill is an exception that skips every `except Exception`, raised from
inside the stage at the chosen point; a real SIGKILL leaves at most temp files besides, which the next
writer removes (tests/reliability/test_catalogue.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.test_catalogue import tree_digest
from thinklens.activations.harvest import HarvestConfig, harvest
from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.traces import TraceStore
from thinklens.features.build import IndexConfig, build_index
from thinklens.models.loader import ModelConfig


class _Killed(BaseException):
    """A kill at a chosen point."""


def _die_on_call(monkeypatch, owner, name: str, call: int, after: bool = True) -> None:
    """Make `owner.name` raise _Killed on its `call`-th call (after doing its work, or before)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call and not after:
            raise _Killed
        result = real(*args, **kwargs)
        if calls["n"] == call:
            raise _Killed
        return result

    monkeypatch.setattr(owner, name, wrapped)


def _collect(tiny_models, out: Path) -> None:
    collect(CollectConfig(model=ModelConfig(model=str(tiny_models["llama"]), device="cpu"), prompts="arithmetic",
                          limit=12, generation=GenerationConfig(max_new_tokens=16, batch_size=4)),
            out, show_progress=False)


@pytest.mark.parametrize("window", ["after the first part", "before the last part"])
def test_collect_killed_between_parts_resumes_to_the_same_traces(tiny_models, tmp_path, monkeypatch, window):
    _collect(tiny_models, tmp_path / "whole")
    call, after = (1, True) if window == "after the first part" else (3, False)
    _die_on_call(monkeypatch, TraceStore, "write_part", call, after)
    with pytest.raises(_Killed):
        _collect(tiny_models, tmp_path / "killed")
    monkeypatch.undo()
    _collect(tiny_models, tmp_path / "killed")
    whole, killed = TraceStore(tmp_path / "whole").read(), TraceStore(tmp_path / "killed").read()
    assert killed.drop(["seconds"] if "seconds" in killed.column_names else []).equals(
        whole.drop(["seconds"] if "seconds" in whole.column_names else []))


@pytest.mark.parametrize("window", ["between a shard's files and its manifest", "after the second shard"])
def test_harvest_killed_inside_a_shard_resumes_to_the_same_store(indexed_run, tmp_path, monkeypatch, window):
    import thinklens.activations.harvest as harvesting
    from thinklens.activations.store import ActivationStore

    config = HarvestConfig(layers=(1,), shard_tokens=600)
    traces = Path(indexed_run) / "traces"
    harvest(config, traces, tmp_path / "whole", show_progress=False)
    if window == "between a shard's files and its manifest":
        _die_on_call(monkeypatch, ActivationStore, "write_shard_files", 2)  # files written, manifest not yet
    else:
        _die_on_call(monkeypatch, harvesting, "_commit_shard", 2)
    with pytest.raises(_Killed):
        harvest(config, traces, tmp_path / "activations", show_progress=False)
    monkeypatch.undo()
    harvest(config, traces, tmp_path / "activations", show_progress=False)
    assert tree_digest(tmp_path / "activations") == tree_digest(tmp_path / "whole")


def test_index_killed_mid_build_leaves_nothing_and_resumes_to_the_same_rows(indexed_run, tmp_path, monkeypatch):
    import thinklens.features.build as building

    config = IndexConfig(top=8, quantile_samples=4, batch_size=256)
    for name in ("whole", "run"):
        shutil.copytree(indexed_run, tmp_path / name)
        (tmp_path / name / "features.db").unlink()
    whole, run = tmp_path / "whole", tmp_path / "run"
    build_index(config, whole / "sae", whole / "activations", whole / "traces", whole / "features.db",
                show_progress=False)
    _die_on_call(monkeypatch, building, "_insert_features", 1, after=False)
    with pytest.raises(_Killed):
        build_index(config, run / "sae", run / "activations", run / "traces", run / "features.db", show_progress=False)
    monkeypatch.undo()
    assert not (run / "features.db").exists() and not list(run.glob(".tmp-*"))
    build_index(config, run / "sae", run / "activations", run / "traces", run / "features.db", show_progress=False)
    assert _contents(run / "features.db") == _contents(whole / "features.db")


def _contents(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, in order; the migrations' `applied_at` (when a file was made) is not content."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: connection.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
                if table == "schema_migrations" else connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in tables}
