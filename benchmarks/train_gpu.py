"""SAE training at the R1 size on a GPU: tokens/s and peak memory of thinklens's step against a plain loop.

The shape of Goodfire's R1 SAEs: d_in 7168 → 28,672 features, k 64, batch 8192. Batches are made on
the device from a planted dictionary (32,768 Zipf-frequent unit directions, 64 active per token, a
shared offset), so the figure is the trainer's, not the disk's. Arms, each after warm-up steps,
timed with CUDA synchronisation:
- thinklens default (tied BatchTopK, AuxK, `dtype auto`: bf16 autocast + TF32) — `_Trainer.train_step`,
  the step `thinklens train` runs;
- thinklens in float32 (`dtype float32`);
- the plain dense TopK loop (`plain_topk.PlainTopK.step`: dense codes, dense decoder matmul), float32.
Prints tokens/s, peak memory, and each arm's ratio against the plain loop.

    python benchmarks/train_gpu.py [--steps 30] [--device cuda]
    python benchmarks/train_gpu.py --device cpu --d-in 256 --expansion 4 --k 16 --batch-size 1024 --steps 3  (a smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from plain_topk import PlainTopK  # a sibling script module

from thinklens.sae.sae import SaeConfig
from thinklens.sae.train import TrainConfig, _resolve_schedule, _Trainer


class PlantedBatches:
    """Batches of a planted sparse dictionary, generated on the device."""

    def __init__(self, d_in: int, n_true: int, active: int, batch_size: int, device: torch.device) -> None:
        generator = torch.Generator(device="cpu").manual_seed(0)
        self.directions = F.normalize(torch.randn(n_true, d_in, generator=generator), dim=-1).to(device)
        self.rates = ((torch.arange(n_true) + 1.0) ** -0.6).to(device)
        self.offset = (8.0 * F.normalize(torch.randn(d_in, generator=generator), dim=0)).to(device)
        self.active, self.batch_size, self.device = active, batch_size, device

    def __call__(self) -> torch.Tensor:
        picks = torch.multinomial(self.rates, self.batch_size * self.active, replacement=True)
        weights = torch.empty(len(picks), device=self.device).uniform_(0.5, 2.0)
        offsets = torch.arange(0, len(picks), self.active, device=self.device)
        x = F.embedding_bag(picks, self.directions, offsets, mode="sum", per_sample_weights=weights)
        return x + self.offset


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batches: PlantedBatches, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(tokens/s, peak GiB) of `step(x)` over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step(batches())
    synchronise(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    inputs = [batches() for _ in range(steps)] if device.type != "cuda" else None
    started = time.perf_counter()
    for i in range(steps):
        step(inputs[i] if inputs is not None else batches())
    synchronise(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return steps * batches.batch_size / seconds, peak


def thinklens_step(config: TrainConfig, d_in: int, total_steps: int, device: torch.device, sample: torch.Tensor):
    sae_config = SaeConfig(arch=config.arch, d_in=d_in, d_sae=config.expansion * d_in, k=config.k,
                           centred_encoder=config.centred_encoder)
    trainer = _Trainer(_resolve_schedule(config, sae_config.d_sae, total_steps), sae_config, total_steps, device)
    trainer.sae.init_from_data(sample)
    return trainer.train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--d-in", type=int, default=7168)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--arms", default="default,float32,plain")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it where a GPU is, or pass --device cpu with a small shape")
    d_sae = args.expansion * args.d_in
    batches = PlantedBatches(args.d_in, 32_768 if device.type == "cuda" else 4 * d_sae, args.k, args.batch_size, device)
    sample = torch.cat([batches() for _ in range(2)])
    total = args.steps + args.warmup
    shape = {"expansion": args.expansion, "k": args.k, "batch_size": args.batch_size}
    arms = {
        "default": lambda: thinklens_step(TrainConfig(**shape), args.d_in, total, device, sample),
        "float32": lambda: thinklens_step(TrainConfig(**shape, dtype="float32"), args.d_in, total, device, sample),
        "plain": lambda: PlainTopK(args.d_in, d_sae, args.k, sample).step,
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.d_in} → {d_sae}, k {args.k}, batch {args.batch_size}, {args.steps} timed steps on {name}")
    results = {}
    for arm in args.arms.split(","):
        step = arms[arm]()
        results[arm] = timed(step, batches, args.steps, args.warmup, device)
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rate, peak = results[arm]
        print(f"{arm:8}: {rate:12,.0f} tok/s   peak {peak:6.1f} GiB", flush=True)
    if "plain" in results:
        for arm, (rate, _) in results.items():
            if arm != "plain":
                print(f"ratio {arm}/plain: {rate / results['plain'][0]:.2f}x")


if __name__ == "__main__":
    main()
