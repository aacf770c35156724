"""Benchmark SAE training: thinklens vs a plain dense PyTorch TopK loop, same data, same shapes.

Both arms stream the same activation store through the same shuffled reader (same batches, same
order), with the same d_in, width, k, batch size, token budget and learning rate. The plain loop is
the textbook one: dense pre-activations, top-k, a dense (batch × d_sae) code matrix, dense decoder
matmul and dense gradients. thinklens' `train` decodes and back-propagates only the active entries.
Prints tokens/s of each, their ratio, and the held-out FVU each reached.

    .venv/bin/python benchmarks/train.py [ACTIVATIONS_DIR] [--expansion 8 --k 32 --batch-size 4096 --tokens N] [--default-recipe]

Without a store it builds a synthetic one (d_model 576, sparse planted features plus a shared mean).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from thinklens.activations.reader import ActivationReader, ReaderConfig
from thinklens.activations.store import ActivationStore
from thinklens.sae.formats import load_sae
from thinklens.sae.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.activations.synthetic
from plain_topk import plain_recon, plain_topk_training  # noqa: E402 - a sibling script module


def holdout_fvu(activations: Path, config: TrainConfig, layer: int, reconstruct) -> float:
    reader = ActivationReader(activations, ReaderConfig(layer=layer, batch_size=4096, split="holdout",
                                                        holdout_fraction=config.holdout_fraction))
    error = total = 0.0
    batches = list(reader)
    x_all = torch.cat(batches)
    mean = x_all.mean(dim=0)
    with torch.no_grad():
        for x in batches:
            error += (x - reconstruct(x)).pow(2).sum().item()
            total += (x - mean).pow(2).sum().item()
    return error / total


def synthetic_store(directory: Path) -> Path:
    from tests.activations.synthetic import sparse_mixture, write_store_from_array

    data = sparse_mixture(n=131_072, d_model=576, n_directions=3000, active=24) * 20.0
    write_store_from_array(directory / "activations", data, tokens_per_sequence=256, shard_tokens=32768)
    return directory / "activations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("activations", nargs="?", type=Path)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=4096 * 100)
    parser.add_argument("--default-recipe", action="store_true",
                        help="train thinklens's arm with its defaults (tied BatchTopK, AuxK, warm-up) instead of plain TopK")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        activations = args.activations or synthetic_store(Path(scratch))
        shape = {"expansion": args.expansion, "k": args.k, "batch_size": args.batch_size, "tokens": args.tokens}
        config = TrainConfig(**shape) if args.default_recipe else TrainConfig(
            arch="topk", **shape, warmup_steps=0, decay_fraction=0.0, lr=4e-4, aux_coefficient=0.0)
        layer = ActivationStore(activations).layers[0]
        steps = args.tokens // args.batch_size
        result = train(config, activations, Path(scratch) / "sae", show_progress=False)
        ours_rate = result.tokens / result.seconds
        sae = load_sae(Path(scratch) / "sae")
        ours_fvu = holdout_fvu(activations, config, layer, lambda x: sae(x).recon)
        weights, plain_seconds = plain_topk_training(activations, config, layer, steps)
        plain_rate = steps * args.batch_size / plain_seconds
        plain_fvu = holdout_fvu(activations, config, layer, lambda x: plain_recon(weights, x, args.k))
    d_in = weights["W_dec"].shape[1]
    print(f"{config.arch} SAE (plain loop: topk) {d_in} → {args.expansion * d_in}, k {args.k}, batch {args.batch_size}, {steps} steps, "
          f"{steps * args.batch_size:,} tokens, {torch.get_num_threads()} threads")
    print(f"plain dense loop : {plain_rate:10,.0f} tok/s   held-out FVU {plain_fvu:.4f}")
    print(f"thinklens train  : {ours_rate:10,.0f} tok/s   held-out FVU {ours_fvu:.4f}   (incl. init and save)")
    print(f"ratio thinklens/plain: {ours_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
