"""thinklens's default recipe against EleutherAI's sparsify on the same batches: tokens/s and held-out FVU.

sparsify (`eai-sparsify`) lives in a side environment this benchmark makes on first use
(`.venv-peers`: torch 2.13.0 first, so pip keeps the CPU build, then sparsify and thinklens itself,
so that its arm reads the store through thinklens's reader). It is never a test dependency.

Both arms see the same shuffled batches of the same store (thinklens's reader, same seed), the
same width, k, batch size and step count. sparsify's arm is its own `SparseCoder` and the step of
its own trainer: FVU loss, its default optimiser (sign-SGD under schedule-free, lr 5e-3/√(n/2¹⁴)),
gradients parallel to decoder rows removed, unit-norm decoder, b_dec at the first batch's mean;
its weights are read in schedule-free's eval mode, as its trainer saves them. Each arm's time runs
from opening the reader (whose shuffle buffer fills before the first batch) to the last step;
thinklens's also includes its data-based initialisation, threshold calibration and saving. The arms
run one after the other, never side by side.

    .venv/bin/python benchmarks/peers.py [ACTIVATIONS_DIR] [--expansion 8 --k 32 --batch-size 4096 --steps 200]
        [--repeats 2]   (~3 min per repeat on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from thinklens.activations.reader import ActivationReader, ReaderConfig
from thinklens.activations.store import ActivationStore
from thinklens.sae.formats import load_sae
from thinklens.sae.train import TrainConfig, _reader_config, train

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
SPARSIFY = "eai-sparsify==1.3.3"


def ensure_peers_venv() -> Path:
    """The side environment's python, made on first use."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if stamp.is_file():
        return python
    print(f"making {PEERS_VENV} (torch 2.13.0, {SPARSIFY}, thinklens; a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, SPARSIFY, "-e", str(ROOT)], check=True)
    stamp.touch()
    return python


def same_batches(activations: Path, args: argparse.Namespace):
    """The reader both arms train from, and the layer it reads."""
    layer = ActivationStore(activations).layers[0]
    return ActivationReader(activations, _reader_config(thinklens_config(args), layer, epochs=10**9)), layer


def thinklens_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(expansion=args.expansion, k=args.k, batch_size=args.batch_size,
                       tokens=args.batch_size * args.steps)


def holdout_fvu(activations: Path, layer: int, reconstruct) -> float:
    """FVU on the held-out split (the same split for both arms), against its own mean."""
    config = ReaderConfig(layer=layer, batch_size=4096, split="holdout",
                          holdout_fraction=TrainConfig().holdout_fraction)
    total = count = 0
    sum_x = None
    for x in ActivationReader(activations, config):
        sum_x = x.sum(dim=0) if sum_x is None else sum_x + x.sum(dim=0)
        count += len(x)
    mean = sum_x / count
    error = 0.0
    with torch.no_grad():
        for x in ActivationReader(activations, config):
            error += (x - reconstruct(x)).pow(2).sum().item()
            total += (x - mean).pow(2).sum().item()
    return error / total


def sparsify_arm(activations: Path, args: argparse.Namespace) -> dict:
    """Train sparsify's SparseCoder with its trainer's step; runs inside the side environment."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    reader, layer = same_batches(activations, args)
    started = time.perf_counter()  # like thinklens's figure, from the reader's first fill of its buffer
    batches = iter(reader)
    torch.manual_seed(0)
    first = next(batches)
    sae = SparseCoder(first.shape[1], SparseCoderConfig(expansion_factor=args.expansion, k=args.k))
    optimizer = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=5e-3 / (sae.num_latents / 2**14) ** 0.5),
                                    momentum=0.95)
    optimizer.train()
    sae.b_dec.data = first.mean(dim=0)
    x = first
    for step in range(args.steps):
        if step:
            x = next(batches)
        sae.set_decoder_norm_to_unit_norm()
        sae(x).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    optimizer.eval()  # schedule-free's averaged weights, as sparsify's trainer saves them
    sae.set_decoder_norm_to_unit_norm()
    fvu = holdout_fvu(activations, layer, lambda batch: sae(batch).sae_out)
    return {"tokens_per_second": args.steps * args.batch_size / seconds, "fvu": fvu, "seconds": seconds}


def thinklens_arm(activations: Path, args: argparse.Namespace, scratch: Path) -> dict:
    config = thinklens_config(args)
    result = train(config, activations, scratch / "sae", show_progress=False)
    sae = load_sae(scratch / "sae")
    fvu = holdout_fvu(activations, sae.config.layer, lambda batch: sae(batch).recon)
    return {"tokens_per_second": result.tokens / result.seconds, "fvu": fvu, "seconds": result.seconds,
            "dead": result.final["dead_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("activations", nargs="?", type=Path, default=ROOT / "runs/demo/activations")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2,
                        help="pairs of runs, the arms alternating; medians are printed (this VM's speed drifts)")
    parser.add_argument("--arm", choices=["sparsify"], help=argparse.SUPPRESS)  # the side environment's call
    args = parser.parse_args()
    if args.arm == "sparsify":
        print(json.dumps(sparsify_arm(args.activations, args)))
        return
    python = ensure_peers_venv()
    shape = ["--expansion", str(args.expansion), "--k", str(args.k), "--batch-size", str(args.batch_size),
             "--steps", str(args.steps)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    theirs, ours = [], []
    for repeat in range(args.repeats):
        completed = subprocess.run([str(python), __file__, str(args.activations), *shape, "--arm", "sparsify"],
                                   check=True, capture_output=True, text=True, env=environment)
        theirs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        with tempfile.TemporaryDirectory() as scratch:
            ours.append(thinklens_arm(args.activations, args, Path(scratch)))
        print(f"repeat {repeat + 1}: sparsify {theirs[-1]['tokens_per_second']:,.0f} tok/s, "
              f"thinklens {ours[-1]['tokens_per_second']:,.0f} tok/s", flush=True)
    ratios = [mine["tokens_per_second"] / other["tokens_per_second"] for mine, other in zip(ours, theirs, strict=True)]

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"{args.activations}: width ×{args.expansion}, k {args.k}, batch {args.batch_size}, {args.steps} steps, "
          f"medians of {args.repeats}")
    print(f"sparsify {SPARSIFY.split('==')[1]} (TopK) : {median(theirs, 'tokens_per_second'):10,.0f} tok/s   "
          f"held-out FVU {median(theirs, 'fvu'):.4f}")
    print(f"thinklens default recipe : {median(ours, 'tokens_per_second'):10,.0f} tok/s   held-out FVU "
          f"{median(ours, 'fvu'):.4f}   dead {median(ours, 'dead'):.1%}  (incl. init and save)")
    print(f"ratio thinklens/sparsify tokens/s: {statistics.median(ratios):.2f}x "
          f"(per repeat: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")


if __name__ == "__main__":
    main()
