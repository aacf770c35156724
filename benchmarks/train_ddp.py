"""SAE training on N torchrun ranks against one process, on the same store with the same settings.

Both arms are whole `thinklens train RUN --tokens T [--nproc N]` commands into a fresh run whose
activations link to the store (what a user waits for: the N-rank arm includes starting torchrun and
joining the gloo group). Each arm runs at two token budgets, T and 2T; the difference removes the
fixed start-up, so `T / (t(2T) − t(T))` is the steady training rate and `t(T) − T / rate` the start-up.
Rounds alternate the arms; medians. Prints both per arm and the ratio of steady rates (ranks ÷ one
process); on a machine with fewer cores than ranks × threads, expect ≤ 1.

    .venv/bin/python benchmarks/train_ddp.py [ACTIVATIONS_DIR] [--nproc 2] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(activations: Path, tokens: int, nproc: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as directory:
        run = Path(directory) / "run"
        run.mkdir()
        (run / "activations").symlink_to(activations.resolve())
        command = [sys.executable, "-m", "thinklens", "train", str(run), "--tokens", str(tokens),
                   "--batch-size", str(args.batch_size), "--expansion", str(args.expansion), "--k", str(args.k),
                   "--checkpoint-every", str(10**6), "--nproc", str(nproc)]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("activations", nargs="?", default="runs/demo/activations")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="steps of the shorter budget T")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    activations = Path(args.activations)
    short = args.steps * args.batch_size
    times: dict[int, list[tuple[float, float]]] = {1: [], args.nproc: []}
    for _ in range(args.rounds):
        for nproc in times:
            times[nproc].append((timed(activations, short, nproc, args), timed(activations, 2 * short, nproc, args)))
    rates = {}
    for nproc, pairs in times.items():
        rate = statistics.median(short / (second - first) for first, second in pairs)
        first = statistics.median(first for first, _ in pairs)
        rates[nproc] = rate
        label = "one process" if nproc == 1 else f"{nproc} ranks (gloo)"
        print(f"{label:16s} steady {rate:9,.0f} tok/s   start-up {first - short / rate:5.1f} s   "
              f"(median of {args.rounds}: {short:,} tokens in {first:.1f} s)")
    print(f"ratio of steady rates, {args.nproc} ranks / one process: {rates[args.nproc] / rates[1]:.2f}x")

if __name__ == "__main__":
    main()
