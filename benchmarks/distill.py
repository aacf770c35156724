"""Benchmark distillation: the plain fine-tuning step vs thinklens's, on the same SmolLM2 batches.

- baseline: float32, `model(input_ids, labels=…)` (logits over every position), batches in random order;
- thinklens: bfloat16 matmuls under autocast where the CPU/GPU has them (weights stay float32),
  logits only at the completion's positions, batches grouped by length (less padding).

Both run the same number of optimiser steps over the same teacher traces. Prints tokens/s of each
(real tokens, padding not counted) and their ratio, the projected training time of the default
recipe, and — if `smollm2-r1` is made on this machine — the wall time its making took.

    .venv/bin/python benchmarks/distill.py [--steps 6] [--traces 96]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from thinklens.distill.dataset import batch_plan, build_examples, collate
from thinklens.distill.recipe import DistillConfig
from thinklens.distill.template import r1_chat_template
from thinklens.distill.train import autocast_dtype, completion_loss, read_record
from thinklens.models.loader import ModelConfig, load_model, made_organism_dir


def run_arm(name: str, loaded, examples, batches, step_loss) -> float:
    model = loaded.model
    state = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = loaded.tokenizer.pad_token_id
    tokens, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        ids, attention, targets = collate([examples[j] for j in batch], pad)
        started = time.perf_counter()
        loss = step_loss(model, ids, attention, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - started
            tokens += int(attention.sum())
    model.load_state_dict(state)
    rate = tokens / seconds
    print(f"{name:<10} {rate:8.0f} tok/s  ({len(batches) - 1} timed steps, {tokens:,} tokens)")
    return rate


def plain_loss(model, ids, attention, targets):
    labels = torch.where(torch.roll(targets, 1, dims=1), ids, torch.full_like(ids, -100))
    return model(input_ids=ids, attention_mask=attention, labels=labels).loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--traces", type=int, default=96)
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = DistillConfig()
    config = DistillConfig(traces=args.traces)
    loaded = load_model(ModelConfig(model="smollm2", device="cpu", dtype="float32"))
    loaded.model.train()
    loaded.tokenizer.chat_template = r1_chat_template(loaded.tokenizer)
    examples = build_examples(config, loaded.tokenizer).examples
    lengths = [len(e.token_ids) for e in examples]
    grouped = batch_plan(len(examples), lengths, config)[: args.steps + 1]
    shuffled = list(range(len(examples)))
    random.Random(0).shuffle(shuffled)
    random_batches = [shuffled[i : i + config.batch_size] for i in range(0, len(shuffled), config.batch_size)]
    dtype = autocast_dtype("auto", torch.device("cpu"))
    baseline = run_arm("baseline", loaded, examples, random_batches[: args.steps + 1], plain_loss)
    ours = run_arm("thinklens", loaded, examples, grouped,
                   lambda m, i, a, t: completion_loss(m, i, a, t, dtype))
    print(f"ratio thinklens/baseline: {ours / baseline:.2f}× (autocast {dtype})")
    full = build_examples(recipe, loaded.tokenizer).examples
    total = sum(len(e.token_ids) for e in full) * recipe.epochs
    print(f"default recipe: {total:,} tokens → ~{total / ours / 60:.1f} min of training at this rate")
    made = made_organism_dir()
    record = read_record(made) if made else None
    if record is not None:
        wall = f"{record.wall_seconds / 60:.1f} min wall" if record.wall_seconds else "wall not recorded"
        print(f"smollm2-r1 as made here: {record.seconds / 60:.1f} min training, {wall}, "
              f"{record.trained_tokens / record.seconds:,.0f} tok/s")


if __name__ == "__main__":
    main()
