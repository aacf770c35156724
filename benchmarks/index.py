"""Benchmark the feature database: encode-only vs full `index`, size per token, `show` latency.

In one run on the same store and SAE:
- encode-only: every stored row read and encoded by the SAE, the codes discarded;
- index: the whole stage (encode + per-feature bookkeeping + tokens, sequences, statistics, logit
  lens, labels, SQLite writes) into a fresh database;
then the database's bytes per harvested token and the p50/p95 latency of `show` over random
features (opened fresh, as a user would).

    .venv/bin/python benchmarks/index.py RUN [--replicate 10]   # RUN holds traces/, activations/ and sae/
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thinklens.activations.store import ActivationStore, ShardInfo
from thinklens.features.build import IndexConfig, build_index
from thinklens.features.db import FeatureDB
from thinklens.sae.formats import load_sae
from thinklens.sae.layer import resolve_sae_layer


def encode_only(run: Path, batch_size: int) -> float:
    store = ActivationStore(run / "activations")
    sae = load_sae(run / "sae")
    layer = resolve_sae_layer(sae.config.layer, store.layers, sae=f"the SAE in {run / 'sae'}")
    started = time.perf_counter()
    with torch.no_grad():
        for shard in store.shards():
            for start in range(0, shard.rows, batch_size):
                rows = store.read_rows(layer, shard, slice(start, min(start + batch_size, shard.rows))).float()
                sae.encode(rows, batch_dependent=False)
    return time.perf_counter() - started


def replicate_run(run: Path, copies: int, target: Path) -> Path:
    """A run holding `copies` copies of RUN's traces and activations under new sequence ids.

    Same data distribution, `copies` times the tokens: measures how `index` scales beyond a store
    that this CPU can collect in minutes, without pretending the copies are new text.
    """
    import os
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from thinklens.data.traces import TraceStore

    (target / "traces").mkdir(parents=True)
    (target / "activations" / "index").mkdir(parents=True)
    shutil.copy(run / "traces" / "_meta.json", target / "traces" / "_meta.json")
    (target / "sae").symlink_to((run / "sae").resolve())
    traces = TraceStore(run / "traces").read()
    offset = max(traces.column("sequence_id").to_pylist()) + 1
    store = ActivationStore(run / "activations")
    manifest = store.manifest()
    shards, shard_number, first_row = [], 0, 0
    for copy in range(copies):
        shifted = traces.set_column(0, "sequence_id", pc.add(traces.column("sequence_id"), copy * offset))
        pq.write_table(shifted, target / "traces" / f"part-{copy * offset:06d}.parquet")
        for shard in store.shards():
            for layer in store.layers:
                destination = target / "activations" / f"layers.{layer}.resid_post" / f"shard-{shard_number:05d}.bin"
                destination.parent.mkdir(exist_ok=True)
                os.link(store.shard_path(layer, shard.shard), destination)
            index = store.read_index(shard)
            index = index.set_column(0, "row", pc.add(index.column("row"), first_row - shard.first_row))
            index = index.set_column(1, "sequence_id", pc.add(index.column("sequence_id"), copy * offset))
            pq.write_table(index, target / "activations" / "index" / f"part-{shard_number:05d}.parquet")
            shards.append({"shard": shard_number, "first_row": first_row, "rows": shard.rows,
                           "first_sequence": shard.first_sequence + copy * offset,
                           "last_sequence": shard.last_sequence + copy * offset})
            shard_number, first_row = shard_number + 1, first_row + shard.rows
    ActivationStore(target / "activations").write_manifest(
        manifest.model_copy(update={"shards": [ShardInfo(**shard) for shard in shards], "token_count": first_row}))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--replicate", type=int, default=1, help="Index this many copies of the run's data.")
    args = parser.parse_args()
    scratch_run = tempfile.TemporaryDirectory(dir=args.run.parent)
    if args.replicate > 1:
        args.run = replicate_run(args.run, args.replicate, Path(scratch_run.name) / "run")

    config = IndexConfig()
    tokens = ActivationStore(args.run / "activations").token_count
    with tempfile.TemporaryDirectory() as scratch:
        db_path = Path(scratch) / "features.db"

        def index() -> float:
            db_path.unlink(missing_ok=True)
            started = time.perf_counter()
            build_index(config, args.run / "sae", args.run / "activations", args.run / "traces", db_path,
                        show_progress=False)
            return time.perf_counter() - started

        index()  # warm-up: imports, page cache, model file cache
        encode_seconds, index_seconds = [], []
        for _ in range(args.rounds):
            encode_seconds.append(encode_only(args.run, config.batch_size))
            index_seconds.append(index())
        size = db_path.stat().st_size
        db = FeatureDB(db_path)
        features = random.Random(0).choices(range(db.n_features), k=args.queries)
        latencies = []
        for feature in features:
            started = time.perf_counter()
            db.show(feature)
            latencies.append((time.perf_counter() - started) * 1000)
    encode_rate = tokens / statistics.median(encode_seconds)
    index_rate = tokens / statistics.median(index_seconds)
    latencies.sort()
    scratch_run.cleanup()
    copies = f" ({args.replicate} copies of the run's data)" if args.replicate > 1 else ""
    print(f"{tokens:,} harvested tokens{copies}, median of {args.rounds} rounds")
    print(f"encode only : {encode_rate:10,.0f} tok/s")
    print(f"index       : {index_rate:10,.0f} tok/s")
    print(f"ratio index/encode: {index_rate / encode_rate:.3f}")
    print(f"database: {size / 2**20:.1f} MiB = {size / tokens:.1f} bytes per harvested token")
    print(f"show latency over {args.queries} random features: p50 {latencies[len(latencies) // 2]:.2f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95)]:.2f} ms")


if __name__ == "__main__":
    main()
