"""Benchmark BatchTopK selection: thinklens's `batch_topk_mask` vs one flat top-k over the batch.

The flat top-k over all n·d_sae pre-activations is the textbook BatchTopK and what thinklens fell
back to on every step before rows were widened one by one. Both arms get the same pre-activations
of real batches (a trained SAE on a run's activations, or a random SAE on a synthetic store with a
shared offset) and must give the same mask; prints the time of each and their ratio.

    .venv/bin/python benchmarks/batch_topk.py [RUN] [--batch-size 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from thinklens.activations.reader import ActivationReader, ReaderConfig
from thinklens.sae.formats import load_sae
from thinklens.sae.sae import batch_topk_mask


def flat_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    cut = pre.flatten().topk(k * pre.shape[0]).values[-1]
    return (pre >= cut) & (pre > 0)


def timed(function, pre: torch.Tensor, k: int, repeats: int) -> tuple[float, torch.Tensor]:
    times, mask = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        mask = function(pre, k)
        times.append(time.perf_counter() - started)
    return statistics.median(times), mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", type=Path, default=Path("runs/demo"))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sae = load_sae(args.run / "sae")
    k = sae.config.k
    reader = ActivationReader(args.run / "activations", ReaderConfig(layer=sae.config.layer, batch_size=args.batch_size))
    flat_times, ours_times = [], []
    for i, batch in enumerate(reader):
        if i == 3:
            break
        pre = sae.pre_acts(batch.float())
        flat_time, reference = timed(flat_mask, pre, k, args.repeats)
        ours_time, mask = timed(batch_topk_mask, pre, k, args.repeats)
        assert torch.equal(mask, reference), "batch_topk_mask differs from the flat top-k"
        flat_times.append(flat_time)
        ours_times.append(ours_time)
    flat_time, ours_time = statistics.median(flat_times), statistics.median(ours_times)
    print(f"batch {args.batch_size} × d_sae {sae.config.d_sae}, k {k}: flat top-k {flat_time * 1e3:.1f} ms, "
          f"batch_topk_mask {ours_time * 1e3:.1f} ms, ratio {flat_time / ours_time:.1f}× (same mask)")


if __name__ == "__main__":
    main()
