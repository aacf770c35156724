"""Harvest with N Ray workers against one process, on the same traces in the same run.

Both arms are whole `harvest` calls into a fresh store (the Ray arm includes starting the local
cluster and loading one model per worker: what a user waits for). Rounds alternate the arms; medians.
Prints each arm's tokens/s, the ratio (workers ÷ one process) and the Ray arm's fixed overhead
(its wall time beyond a perfect split of the one-process time) per shard of the plan.

    .venv/bin/python benchmarks/harvest_ray.py [RUN] [--workers 2] [--traces 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harvest import ensure_traces
from thinklens.activations.harvest import HarvestConfig, harvest, plan_shards
from thinklens.data.traces import TraceStore


def timed(config: HarvestConfig, traces: Path) -> float:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        harvest(config, traces, Path(directory) / "activations", show_progress=False)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/bench-harvest")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--traces", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-tokens", type=int, default=2048)
    args = parser.parse_args()
    traces = Path(args.run) / "traces"
    if TraceStore(traces).meta() is None:
        ensure_traces(Path(args.run), args.traces)
    lengths = TraceStore(traces).read(["sequence_id", "n_tokens"]).to_pydict()
    shards = plan_shards(lengths["sequence_id"], lengths["n_tokens"], args.shard_tokens)
    tokens = sum(lengths["n_tokens"])
    one = HarvestConfig(layers=(args.layer,), shard_tokens=args.shard_tokens)
    many = one.model_copy(update={"workers": args.workers})
    single, ray = [], []
    for _ in range(args.rounds):
        single.append(timed(one, traces))
        ray.append(timed(many, traces))
    report(tokens, len(shards), single, ray, args.workers, "one model load")


def report(tokens: int, shards: int, single: list[float], ray: list[float], workers: int, load: str) -> None:
    """Each arm's tokens/s (medians), the ratio, and the Ray arm's overhead beyond a perfect split."""
    print(f"{tokens:,} tokens in {shards} shards, {len(single)} rounds (medians)")
    print(f"one process:      {tokens / statistics.median(single):8.0f} tok/s")
    print(f"{workers} Ray workers:   {tokens / statistics.median(ray):8.0f} tok/s")
    print(f"ratio workers / one process: {statistics.median(single) / statistics.median(ray):.2f}x")
    beyond = statistics.median(ray) - statistics.median(single) / workers
    print(f"Ray overhead: {beyond:.1f} s beyond a perfect split of the one-process time, {beyond / shards:.2f} s "
          f"per shard (cluster start and {load} per worker included)")

if __name__ == "__main__":
    main()
