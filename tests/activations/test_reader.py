"""The shuffled reader: every filtered row once per epoch, seeded order, filters, split, bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.activations.synthetic import write_synthetic_store
from thinklens.activations.reader import ActivationReader, ReaderConfig, in_holdout
from thinklens.errors import ThinklensError


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("store")
    # 40 sequences × 16 tokens = 640 rows in shards of 96 rows (6 sequences).
    write_synthetic_store(directory, n_sequences=40, tokens_per_sequence=16, d_model=8, shard_tokens=96)
    return directory


def _rows(reader) -> list[int]:
    return [int(value) for batch in reader for value in batch[:, 0]]


def test_an_epoch_yields_every_kept_row_once_in_shuffled_order(store_dir):
    config = ReaderConfig(layer=0, batch_size=32, buffer_tokens=128, chunk_tokens=16, exclude_special=False,
                          exclude_massive=False)
    rows = _rows(ActivationReader(store_dir, config))
    assert sorted(rows) == list(range(640))
    assert rows != sorted(rows)
    # Mixing across shards: the first batch already draws from several of the 7 shards.
    assert len({row // 96 for row in rows[:32]}) >= 3


def test_same_seed_same_batches_other_seed_or_epoch_differs(store_dir):
    config = ReaderConfig(layer=0, batch_size=50, buffer_tokens=200, chunk_tokens=20, epochs=2)
    first, second = _rows(ActivationReader(store_dir, config)), _rows(ActivationReader(store_dir, config))
    assert first == second
    half = len(first) // 2
    assert first[:half] != first[half:] and sorted(first[:half]) == sorted(first[half:])
    other = _rows(ActivationReader(store_dir, ReaderConfig(layer=0, batch_size=50, buffer_tokens=200, chunk_tokens=20, seed=1)))
    assert other != first[:half]


@pytest.mark.parametrize("drop_last", [True, False])
def test_each_rank_reads_its_share_and_the_shares_are_the_one_process_batches(store_dir, drop_last):
    config = ReaderConfig(layer=0, batch_size=48, buffer_tokens=150, chunk_tokens=20, epochs=2, seed=3,
                          split="train", drop_last=drop_last)
    whole = list(ActivationReader(store_dir, config))
    shares = [list(ActivationReader(store_dir, replace(config, rank=rank, world=3))) for rank in range(3)]
    assert [len(share) for share in shares] == [len(whole)] * 3
    for number, batch in enumerate(whole):
        parts = [share[number] for share in shares]
        if len(batch) == config.batch_size:
            assert [len(part) for part in parts] == [16, 16, 16]
        assert torch.equal(torch.cat(parts), batch)  # every value, in the same order


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(store_dir):
    with pytest.raises(ThinklensError, match="a batch of 50 rows does not split over 3 ranks"):
        ActivationReader(store_dir, ReaderConfig(layer=0, batch_size=50, rank=0, world=3))


def test_filters_drop_special_massive_and_unwanted_segments(store_dir):
    # In the synthetic store, position 0 is special, position 1 massive, segment = position // 4 (capped at 3).
    reader = ActivationReader(store_dir, ReaderConfig(layer=0, batch_size=64, segments=("prompt",)))
    rows = _rows(reader)
    positions = {row % 16 for row in rows}
    assert positions == {2, 3}
    assert reader.n_tokens == len(rows) == 40 * 2


def test_holdout_split_is_by_sequence_and_disjoint(store_dir):
    def read(split: str) -> set[int]:
        config = ReaderConfig(layer=0, batch_size=64, split=split, holdout_fraction=0.25, exclude_special=False,
                              exclude_massive=False)
        return set(_rows(ActivationReader(store_dir, config)))

    train, holdout = read("train"), read("holdout")
    assert train.isdisjoint(holdout) and len(train | holdout) == 640
    assert {row // 16 for row in train}.isdisjoint({row // 16 for row in holdout})
    assert 3 <= len(holdout) // 16 <= 18  # about a quarter of the 40 sequences
    assert in_holdout(np.arange(1000), 0.1).mean() == pytest.approx(0.1, abs=0.03)


def test_unknown_layer_or_segment_is_refused(store_dir):
    with pytest.raises(ThinklensError, match=r"layer 3 was not harvested: the store holds layers \[0\]"):
        ActivationReader(store_dir, ReaderConfig(layer=3))
    with pytest.raises(ThinklensError, match="unknown segment"):
        ActivationReader(store_dir, ReaderConfig(layer=0, segments=("reasoning",)))


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_buffer_not_the_store(tmp_path):
    """Read a 256 MiB store through a 16 MiB buffer in a fresh process; its peak RSS grows far less than the store."""
    write_synthetic_store(tmp_path, n_sequences=256, tokens_per_sequence=256, d_model=1024, shard_tokens=8192)
    script = textwrap.dedent(f"""
        import resource
        import torch
        from thinklens.activations.reader import ActivationReader, ReaderConfig
        config = ReaderConfig(layer=0, batch_size=1024, buffer_tokens=4096, chunk_tokens=512,
                              exclude_special=False, exclude_massive=False)
        reader = ActivationReader({str(tmp_path)!r}, config)
        next(iter(reader))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = sum(len(batch) for batch in reader)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(rows, (after - before) * 1024)
    """)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    rows, growth = (int(value) for value in output.split())
    store_bytes = 256 * 256 * 1024 * 4
    assert rows == 256 * 256
    assert growth < store_bytes / 4, f"peak RSS grew by {growth / 2**20:.0f} MiB reading a {store_bytes / 2**20:.0f} MiB store"
