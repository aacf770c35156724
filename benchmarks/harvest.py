"""Benchmark harvesting against the bare forward pass, on the same padded batches in the same run.

Arms (interleaved over several rounds, medians reported):
- bare forward (full): `model(...)` over every batch, no hooks, nothing kept — the issue's baseline;
- bare forward (to layer): the same, stopped after the harvested layer (the compute harvest must do);
- harvest: the whole stage into a fresh store (capture, dtype conversion, index, atomic shard writes).

Prints tokens/s of each, harvest's ratio to both baselines, and peak RSS.

    .venv/bin/python benchmarks/harvest.py [RUN] [--layer 15] [--traces 64]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thinklens.activations.capture import run_to_layers
from thinklens.activations.harvest import (
    HarvestConfig,
    harvest,
    padded_batches,
    plan_shards,
    read_shard_traces,
)
from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.traces import TraceStore
from thinklens.models.loader import load_model


def ensure_traces(run: Path, n_traces: int) -> Path:
    """Traces of the default model to harvest (collected once, reused by later benchmark runs)."""
    config = CollectConfig(limit=n_traces, generation=GenerationConfig(max_new_tokens=192))
    collect(config, run / "traces", show_progress=False)
    return run / "traces"


def bare_forward(loaded, batches, layer: int | None) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for _, input_ids, mask in batches:
            if layer is None:
                loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            else:
                run_to_layers(loaded.model, input_ids, mask, [layer])
    return time.perf_counter() - started


def full_harvest(loaded, traces: Path, config: HarvestConfig) -> float:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        harvest(config, traces, Path(directory) / "activations", show_progress=False, loaded=loaded)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("runs/bench-harvest"))
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--traces", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    traces = ensure_traces(args.run, args.traces)
    config = HarvestConfig(layers=(args.layer,))
    loaded = load_model(TraceStore(traces).model_config())
    lengths = TraceStore(traces).read(["sequence_id", "n_tokens"]).to_pydict()
    plan = plan_shards(lengths["sequence_id"], lengths["n_tokens"], config.shard_tokens)
    pad_id = loaded.tokenizer.pad_token_id or 0
    batches = [b for shard in plan for b in padded_batches(read_shard_traces(shard, traces), config.batch_tokens, pad_id)]
    tokens = sum(lengths["n_tokens"])

    arms = {
        "bare forward (full model)": lambda: bare_forward(loaded, batches, None),
        f"bare forward (to layer {args.layer})": lambda: bare_forward(loaded, batches, args.layer),
        "harvest": lambda: full_harvest(loaded, traces, config),
    }
    arms["harvest"]()  # warm-up: page cache, allocator
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, arm in arms.items():
            seconds[name].append(arm())
    rate = {name: tokens / statistics.median(values) for name, values in seconds.items()}
    print(f"{tokens:,} tokens of {len(lengths['n_tokens'])} traces, layer {args.layer}, median of {args.rounds} rounds")
    for name, value in rate.items():
        print(f"{name:32s} {value:10,.0f} tok/s")
    full, truncated = (rate[name] for name in list(arms)[:2])
    print(f"ratio harvest / bare forward (full model): {rate['harvest'] / full:.3f}")
    print(f"ratio harvest / bare forward (to layer)  : {rate['harvest'] / truncated:.3f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
