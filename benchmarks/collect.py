"""Benchmark trace collection: bare `model.generate` vs the full `collect` stage, same batches.

Both arms generate greedily from the same rendered prompts with the same batch size and token cap,
so they produce the same tokens; `collect` adds rendering, segmentation, answer extraction and the
atomic Parquet writes. Prints tokens/s of each and their ratio (goal: close to 1).

    .venv/bin/python benchmarks/collect.py [--prompts 32] [--batch-size 16] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thinklens.data.collect import CollectConfig, GenerationConfig, collect, resolve_format
from thinklens.data.loaders import load_prompts
from thinklens.models.formats import render_prompt
from thinklens.models.loader import ModelConfig, load_model


def bare_generate(loaded, config: CollectConfig) -> tuple[int, float]:
    """Generated tokens and seconds for plain batched `generate` over the same prompts."""
    tokenizer, generation = loaded.tokenizer, config.generation
    fmt = resolve_format(tokenizer, config)
    prompts = load_prompts(config.prompts, limit=config.limit)
    tokenizer.padding_side = "left"
    tokens, started = 0, time.perf_counter()
    for first in range(0, len(prompts), generation.batch_size):
        texts = [render_prompt(tokenizer, fmt, p.prompt) for p in prompts[first : first + generation.batch_size]]
        encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.inference_mode():
            output = loaded.model.generate(
                **encoded, max_new_tokens=generation.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        completion = output[:, encoded["input_ids"].shape[1] :]
        # Count up to and including the first EOS, as collect does.
        is_eos = completion == tokenizer.eos_token_id
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, completion.shape[1])
        tokens += int(lengths.sum())
    return tokens, time.perf_counter() - started


def full_collect(loaded, config: CollectConfig) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as directory:
        result = collect(config, Path(directory) / "traces", show_progress=False, loaded=loaded)
    return result.generated_tokens, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config = CollectConfig(
        model=ModelConfig(model=args.model),
        prompts="arithmetic",
        limit=args.prompts,
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, greedy=True),
    )
    loaded = load_model(config.model)
    bare_generate(loaded, config.model_copy(update={"limit": args.batch_size}))  # warm-up
    rates = {"bare generate": [], "collect": []}
    for _ in range(args.rounds):  # interleaved, so drifts in machine speed hit both arms alike
        for name, arm in (("bare generate", bare_generate), ("collect", full_collect)):
            tokens, seconds = arm(loaded, config)
            rates[name].append(tokens / seconds)
    bare, full = statistics.median(rates["bare generate"]), statistics.median(rates["collect"])
    print(f"model {args.model}, {args.prompts} prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"median of {args.rounds} rounds")
    print(f"bare generate : {bare:8.1f} tok/s")
    print(f"collect       : {full:8.1f} tok/s")
    print(f"ratio collect/bare: {full / bare:.3f}")


if __name__ == "__main__":
    main()
