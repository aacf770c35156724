"""Index with N Ray workers against one process, on the same run (its SAE, store and traces).

Both arms are whole `index` builds into a fresh database (the Ray arm includes starting the local
cluster and loading the SAE in each worker). Rounds alternate the arms; medians. Prints each arm's
tokens/s, the ratio (workers ÷ one process) and the Ray arm's overhead beyond a perfect split, per shard.

    .venv/bin/python benchmarks/index_ray.py [RUN] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.harvest_ray import report
from thinklens.activations.store import ActivationStore
from thinklens.distributed.index import build_index
from thinklens.features.build import IndexConfig


def timed(config: IndexConfig, run: Path) -> float:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        build_index(config, run / "sae", run / "activations", run / "traces", Path(directory) / "features.db",
                    show_progress=False)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/demo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = Path(args.run)
    store = ActivationStore(run / "activations")
    tokens, shards = store.token_count, len(store.shards())
    one = IndexConfig(checkpoint_seconds=1e9)  # no checkpoint in either arm: the same work
    many = one.model_copy(update={"workers": args.workers})
    single, ray = [], []
    for _ in range(args.rounds):
        single.append(timed(one, run))
        ray.append(timed(many, run))
    report(tokens, shards, single, ray, args.workers, "one SAE load")

if __name__ == "__main__":
    main()
