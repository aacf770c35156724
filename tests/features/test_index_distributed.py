"""Index as a map-reduce: two Ray workers encode the shards, the driver merges their partial states in
shard order, and the database is the one a single process writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from thinklens.distributed.index import build_index
from thinklens.errors import ThinklensError
from thinklens.features.build import IndexConfig

pytest.importorskip("ray")
pytestmark = pytest.mark.integration


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return list(connection.iterdump())


def test_two_ray_workers_build_the_database_one_process_builds(indexed_run, tmp_path, one_build_second):
    config = IndexConfig(top=8, quantile_samples=4, batch_size=256)
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    build_index(config, indexed_run / "sae", indexed_run / "activations", indexed_run / "traces", one,
                show_progress=False)
    result = build_index(config.model_copy(update={"workers": 2}), indexed_run / "sae", indexed_run / "activations",
                         indexed_run / "traces", two, show_progress=False)
    assert result.indexed_tokens > 0
    assert _dump(two) == _dump(one)  # every table, the meta's arguments included (workers is placement)
    assert two.read_bytes() == one.read_bytes()


def test_store_all_is_refused_with_workers(indexed_run, tmp_path):
    with pytest.raises(ThinklensError, match="without --workers"):
        build_index(IndexConfig(store_all=True, workers=2), indexed_run / "sae", indexed_run / "activations",
                    indexed_run / "traces", tmp_path / "x.db", show_progress=False)
