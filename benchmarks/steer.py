"""Benchmark steered vs unsteered generation, same prompts, same seeds, in one run.

Arms (interleaved over rounds, medians):
- unsteered: the plain generation loop;
- steered, zero strength: the full steering machinery (after_prefix detection during generation,
  position masks, the edit) with a zero edit, so the tokens are identical and the ratio is pure
  overhead;
- steered: a real edit (tokens differ, so this rate is informative, not comparable 1:1);
- sweep point: what one point of a sweep does, the steered generation *and* its measures (perplexity
  and read-back under the unsteered model): on the prompt pass kept from an earlier point (as
  `run_sweep` and the findings' experiments do, `Variant.readouts`), in one padded pass over prompt
  and completion, and one pass per sample; the issue's figure is sweep tokens/s ÷ unsteered tokens/s.

    .venv/bin/python benchmarks/steer.py RUN [--feature F --prompts 16 --max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from thinklens.models.generate import Sampling
from thinklens.steering.from_run import open_variant, run_prompts
from thinklens.steering.metrics import unsteered_readout, unsteered_readouts


def timed(variant, prompts, max_new_tokens) -> tuple[float, int, list[list[int]]]:
    started = time.perf_counter()
    outputs = variant.generate(prompts, max_new_tokens, Sampling(greedy=True), seed=0)
    seconds = time.perf_counter() - started
    return seconds, sum(len(o.token_ids) - o.generation_start for o in outputs), [o.token_ids for o in outputs]


def timed_sweep_point(variant, prompts, max_new_tokens, feature, read_back: str) -> tuple[float, int]:
    started = time.perf_counter()
    outputs = variant.generate(prompts, max_new_tokens, Sampling(greedy=True), seed=0)
    if read_back == "kept":
        variant.readouts(outputs, feature)
    elif read_back == "batched":
        unsteered_readouts(variant.loaded, variant.sae, feature, variant.layer, outputs)
    else:
        for output in outputs:
            unsteered_readout(variant.loaded, variant.sae, feature, variant.layer, output)
    return time.perf_counter() - started, sum(len(o.token_ids) - o.generation_start for o in outputs)


READ_BACKS = ("kept", "batched", "per-sample")  # prompt pass kept across points / one padded pass / one per sample


def timed_outputs(variant, prompts):
    return variant.generate(prompts, 2, Sampling(greedy=True), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--feature", type=int, default=0)
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    variant = open_variant(args.run / "traces", args.run / "sae", args.run / "features.db", [args.feature])
    prompts = [record.prompt for record in run_prompts(args.run / "traces", args.prompts)]
    arms = {"unsteered": None, "steered, zero strength": 0.0, f"steered, strength {args.strength:g}": args.strength}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    tokens_of: dict[str, list[list[int]]] = {}
    timed(variant, prompts[:2], 8)  # warm-up
    for _ in range(args.rounds):
        for name, strength in arms.items():
            variant.reset()
            if strength is not None:
                variant.set(args.feature, strength, policy="after_prefix")
            seconds, tokens, ids = timed(variant, prompts, args.max_new_tokens)
            rates[name].append(tokens / seconds)
            tokens_of[name] = ids
    variant.readouts(timed_outputs(variant, prompts), args.feature)  # a sweep's first point makes the prompt pass
    for kind in READ_BACKS:
        name = f"sweep point ({kind} read-back)"
        rates[name] = []
        for _ in range(args.rounds):
            variant.reset()
            variant.set(args.feature, args.strength, policy="after_prefix")
            seconds, tokens = timed_sweep_point(variant, prompts, args.max_new_tokens, args.feature, kind)
            rates[name].append(tokens / seconds)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy, policy after_prefix, "
          f"median of {args.rounds} rounds")
    for name, value in median.items():
        print(f"{name:28s} {value:8.1f} tok/s")
    assert tokens_of["unsteered"] == tokens_of["steered, zero strength"], "a zero edit must not change the tokens"
    print(f"ratio steered (zero edit) / unsteered: {median['steered, zero strength'] / median['unsteered']:.3f}")
    name = f"steered, strength {args.strength:g}"
    print(f"ratio steered (strength {args.strength:g}) / unsteered: {median[name] / median['unsteered']:.3f} "
          "(different tokens)")
    for kind in READ_BACKS:
        print(f"ratio sweep point ({kind} read-back) / unsteered: "
              f"{median[f'sweep point ({kind} read-back)'] / median['unsteered']:.3f}")


if __name__ == "__main__":
    main()
