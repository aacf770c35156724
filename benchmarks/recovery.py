"""Feature recovery on a planted dictionary: does an SAE find the directions the data was made of?

The data (written as an activation store, so every arm trains through thinklens's real reader) is
what residual streams look like in miniature:
- superposition: more true unit directions than dimensions (default 256 in 64);
- skewed frequencies: direction i fires with probability ∝ (i + 1)^-zipf, scaled so that a token has
  `active` of them on average;
- magnitudes uniform in [0.5, 2];
- a shared mean offset of norm `offset` (default 8: several times a token's feature content, as in
  real models) and isotropic Gaussian noise.

The SAE (512 features, k 5, batch 1024, 2,000 steps) has two features per true direction. Arms:
`plain` (the reference), `default` (thinklens's default recipe), the default with one choice undone
(`uncentred`, `lr-4e-4`, `no-aux`, `aux-1/32`), and the other architectures with their defaults
(`batchtopk`, `topk`, `relu`; `topk-plain`: TopK without warm-up, decay or AuxK).

For each arm it prints, from the same run: MMCS (mean over true directions of the best decoder
cosine), the share of true directions recovered at cos ≥ 0.9, dead features at the end of training
(never firing on 65,536 fresh tokens, and the trainer's own record), held-out FVU and L0. The plain
TopK loop (`plain_topk.py`) is the reference every thinklens arm is printed beside.

    .venv/bin/python benchmarks/recovery.py [--arms plain,default,uncentred,...] [--tokens N]  (~5 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thinklens.sae.formats import load_sae
from thinklens.sae.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.activations.synthetic
from plain_topk import plain_codes, plain_topk_training  # noqa: E402 - a sibling script module

EVAL_TOKENS = 65_536


@dataclass(frozen=True)
class PlantedDictionary:
    """The generative model of the benchmark's activations."""

    directions: np.ndarray  # (n_true, d_in), unit rows
    rates: np.ndarray  # (n_true,) firing probability per token
    offset: np.ndarray  # (d_in,)
    noise: float

    @classmethod
    def make(cls, d_in: int, n_true: int, active: float, zipf: float, offset_norm: float, noise: float,
             seed: int = 0) -> PlantedDictionary:
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((n_true, d_in))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        weights = (np.arange(n_true) + 1.0) ** -zipf
        rates = np.minimum(1.0, weights * active / weights.sum())
        offset = rng.standard_normal(d_in)
        offset *= offset_norm / np.linalg.norm(offset)
        return cls(directions.astype(np.float32), rates, offset.astype(np.float32), noise)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, d_in) float32 activations."""
        fires = rng.random((n, len(self.rates)), dtype=np.float32) < self.rates.astype(np.float32)
        magnitudes = rng.uniform(0.5, 2.0, fires.shape).astype(np.float32) * fires
        noise = self.noise * rng.standard_normal((n, self.directions.shape[1]), dtype=np.float32)
        return magnitudes @ self.directions + self.offset + noise


def write_store(dictionary: PlantedDictionary, directory: Path, tokens: int, chunk: int = 32_768) -> Path:
    """A store of `tokens` samples, generated chunk by chunk into a memory map (bounded memory)."""
    from tests.activations.synthetic import write_store_from_array

    rng = np.random.default_rng(1)
    data = np.lib.format.open_memmap(directory / "data.npy", mode="w+", dtype=np.float32,
                                     shape=(tokens, dictionary.directions.shape[1]))
    for start in range(0, tokens, chunk):
        stop = min(tokens, start + chunk)
        data[start:stop] = dictionary.sample(stop - start, rng)
    write_store_from_array(directory / "activations", data, tokens_per_sequence=256, shard_tokens=65_536)
    return directory / "activations"


@dataclass
class Recovery:
    arm: str
    mmcs: float
    recovered: float  # share of true directions with a decoder row at cos ≥ 0.9
    dead_eval: float  # share of features that never fire on fresh tokens
    dead_train: float | None  # the trainer's own record at the end of training
    fvu: float
    l0: float
    seconds: float


def score(arm: str, decoder: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
          decode: Callable[[torch.Tensor], torch.Tensor], dictionary: PlantedDictionary,
          dead_train: float | None, seconds: float) -> Recovery:
    """Compare a trained SAE (decoder rows in model units, dense encode/decode) with the truth."""
    true = torch.from_numpy(dictionary.directions)
    cosines = true @ torch.nn.functional.normalize(decoder, dim=-1).T  # (n_true, d_sae)
    best = cosines.max(dim=1).values
    x = torch.from_numpy(dictionary.sample(EVAL_TOKENS, np.random.default_rng(2)))
    with torch.no_grad():
        codes = encode(x)
        error = (x - decode(codes)).pow(2).sum()
    fvu = (error / (x - x.mean(dim=0)).pow(2).sum()).item()
    fired = (codes > 0).any(dim=0)
    return Recovery(arm, best.mean().item(), (best >= 0.9).float().mean().item(), 1 - fired.float().mean().item(),
                    dead_train, fvu, (codes > 0).sum(dim=1).float().mean().item(), seconds)


def thinklens_arm(arm: str, config: TrainConfig, activations: Path, scratch: Path,
                  dictionary: PlantedDictionary) -> Recovery:
    result = train(config, activations, scratch / arm, show_progress=False)
    sae = load_sae(scratch / arm).eval()
    dead = sae_metadata_dead(scratch / arm)
    scale = sae.config.input_scale
    return score(arm, sae.W_dec.detach() / scale, lambda x: sae.encode(x).dense(),
                 lambda codes: (codes @ sae.W_dec + sae.b_dec) / scale, dictionary, dead, result.seconds)


def sae_metadata_dead(directory: Path) -> float | None:
    from thinklens.sae.formats import sae_metadata

    return sae_metadata(directory).get("dead_features", {}).get("fraction")


def plain_arm(config: TrainConfig, activations: Path, steps: int, dictionary: PlantedDictionary) -> Recovery:
    weights, seconds = plain_topk_training(activations, config, 0, steps)
    return score("plain TopK loop", weights["W_dec"], lambda x: plain_codes(weights, x, config.k),
                 lambda codes: codes @ weights["W_dec"] + weights["b_dec"], dictionary, None, seconds)


def arm_configs(shape: dict) -> dict[str, TrainConfig]:
    """Every named arm's settings; 'default' is thinklens's default recipe at this shape."""
    plain = {"warmup_steps": 0, "decay_fraction": 0.0, "aux_coefficient": 0.0}
    return {
        "default": TrainConfig(**shape),
        "batchtopk": TrainConfig(arch="batchtopk", **shape),
        "topk": TrainConfig(arch="topk", **shape),
        "topk-plain": TrainConfig(arch="topk", **shape, **plain),
        "relu": TrainConfig(arch="relu", **shape),
        # The default with one of its choices undone, to show what each is worth:
        "uncentred": TrainConfig(**shape, centred_encoder=False),  # the encoder thinklens had before
        "lr-4e-4": TrainConfig(**shape, lr=4e-4, warmup_steps=50),  # the schedule thinklens had before
        "no-aux": TrainConfig(**shape, aux_coefficient=0.0),
        "aux-1/32": TrainConfig(**shape, aux_coefficient=1 / 32),  # the AuxK weight thinklens had before
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="plain,default,uncentred,lr-4e-4,batchtopk,topk,topk-plain")
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--n-true", type=int, default=256)
    parser.add_argument("--active", type=float, default=5, help="true directions active per token, on average")
    parser.add_argument("--zipf", type=float, default=0.6)
    parser.add_argument("--offset", type=float, default=8.0)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=1024 * 2000)
    parser.add_argument("--store-tokens", type=int, default=1 << 19)
    args = parser.parse_args()
    dictionary = PlantedDictionary.make(args.d_in, args.n_true, args.active, args.zipf, args.offset, args.noise)
    shape = {"expansion": args.expansion, "k": args.k, "batch_size": args.batch_size, "tokens": args.tokens}
    configs = arm_configs(shape)
    arms = args.arms.split(",")
    unknown = [arm for arm in arms if arm != "plain" and arm not in configs]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}: choose from plain, {', '.join(configs)}")
    steps = args.tokens // args.batch_size
    print(f"{args.n_true} true directions in {args.d_in} dims, {args.active:g} active per token (zipf {args.zipf}), "
          f"offset {args.offset:g}, noise {args.noise:g}; SAE {args.d_in} → {args.expansion * args.d_in}, k {args.k}, "
          f"batch {args.batch_size}, {steps} steps, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        activations = write_store(dictionary, scratch, args.store_tokens)
        print(f"store of {args.store_tokens:,} tokens written in {time.perf_counter() - started:.0f} s")
        results = [plain_arm(configs["default"], activations, steps, dictionary) if arm == "plain"
                   else thinklens_arm(arm, configs[arm], activations, scratch, dictionary) for arm in arms]
    print(f"{'arm':18} {'MMCS':>6} {'cos≥0.9':>8} {'dead(eval)':>10} {'dead(train)':>11} {'FVU':>7} {'L0':>6} {'s':>5}")
    for r in results:
        dead_train = "—" if r.dead_train is None else f"{r.dead_train:.1%}"
        print(f"{r.arm:18} {r.mmcs:6.3f} {r.recovered:8.1%} {r.dead_eval:10.1%} {dead_train:>11} {r.fvu:7.4f} "
              f"{r.l0:6.1f} {r.seconds:5.0f}")
    reference = next((r for r in results if r.arm == "plain TopK loop"), None)
    if reference is not None and reference.recovered > 0:
        for r in results:
            if r is not reference:
                print(f"ratio recovered {r.arm}/plain: {r.recovered / reference.recovered:.2f}x")


if __name__ == "__main__":
    main()
