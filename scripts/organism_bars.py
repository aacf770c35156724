"""Measure a model against the distill issue's bars on held-out prompts, greedy and at T 0.6.

Collects traces for N prompts of a seed the organism never trained on (its training drew seed 1
and left out the first 1,000 prompts of seeds 0 and 2), then prints each bar with its Wilson 95 %
interval and writes them to OUT/bars.json. The teacher's own "Wait," rate on the same prompts is
printed beside the model's.

    .venv/bin/python scripts/organism_bars.py [--model smollm2-r1] [-n 200] [--prompt-seed 2] \\
        [--modes greedy,t0.6] [--max-new-tokens 192] [--dtype bfloat16] [--out runs/bars]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.loaders import load_prompts
from thinklens.data.teacher import teach
from thinklens.distill.bars import OrganismBars, measure_bars
from thinklens.distill.organism import ensure_organism
from thinklens.models.default import ORGANISM_NAME
from thinklens.models.loader import ModelConfig
from thinklens.stats import rate


def collect_mode(args: argparse.Namespace, mode: str) -> Path:
    greedy = mode == "greedy"
    temperature = 0.6 if greedy else float(mode.removeprefix("t"))
    config = CollectConfig(
        model=ModelConfig(model=args.model, dtype=args.dtype), prompts=args.prompts, limit=args.n,
        prompt_seed=args.prompt_seed,
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, greedy=greedy, temperature=temperature,
                                    batch_size=args.batch_size),
    )
    traces = args.out / f"{Path(args.model).name}-{mode}" / "traces"
    collect(config, traces)
    return traces


def print_bars(title: str, bars: OrganismBars, teacher_wait: str) -> None:
    print(f"\n## {title} ({bars.traces} traces)")
    print(f"- opening starts with 'Okay,':     {bars.okay_opening}")
    print(f"- </think> closed within the cap:  {bars.thinking_closed}")
    print(f"- answer from the answer segment:  {bars.answer_from_answer_segment}")
    print(f"- 'Wait,' in the thinking:         {bars.wait}   (teacher on these prompts: {teacher_wait})")
    print(f"- accuracy:                        {bars.accuracy}")
    for name, value in {**bars.accuracy_by_group, **{f"arithmetic, first op {k}": v
                                                     for k, v in bars.accuracy_by_operator.items()}}.items():
        print(f"    {name:<28} {value}")
    print(f"- prefix tokens:     {bars.prefix_tokens}")
    print(f"- completion tokens: {bars.completion_tokens}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=ORGANISM_NAME)
    parser.add_argument("--prompts", default="arithmetic+logic")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--prompt-seed", type=int, default=2)
    parser.add_argument("--modes", default="greedy,t0.6")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=Path("runs/bars"))
    args = parser.parse_args()
    if args.model == ORGANISM_NAME:
        ensure_organism()
    prompts = load_prompts(args.prompts, limit=args.n, seed=args.prompt_seed)
    teacher = [teach(record) for record in prompts]
    teacher_wait = str(rate(sum(t.truth.slip_step is not None for t in teacher), len(teacher)))
    results = {}
    for mode in args.modes.split(","):
        bars = measure_bars(collect_mode(args, mode))
        print_bars(f"{args.model}, {mode}", bars, teacher_wait)
        results[mode] = bars.model_dump(mode="json")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{Path(args.model).name}-bars.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
