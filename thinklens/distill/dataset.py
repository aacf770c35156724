"""Teacher traces as token ids: the prompt as the organism's template renders it, then the completion."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from thinklens.data.loaders import load_prompts
from thinklens.data.teacher import TeacherTrace, teach
from thinklens.distill.recipe import HELD_OUT_PROMPTS, DistillConfig
from thinklens.models.formats import make_format, render_prompt


@dataclass(frozen=True)
class Example:
    """One training trace: token ids, and where the completion (the part the loss is on) starts."""

    token_ids: list[int]
    completion_start: int


@dataclass(frozen=True)
class TraceSet:
    """The training examples, and what was left out of them."""

    examples: list[Example]
    traces: list[TeacherTrace]
    held_out: int  # prompts dropped because a held-out seed has them
    too_long: int  # traces dropped for exceeding max_length


def teacher_traces(config: DistillConfig) -> tuple[list[TeacherTrace], int]:
    """The teacher's traces for the training prompts, without any prompt of a held-out seed."""
    held_out = {
        record.prompt
        for seed in config.held_out_seeds
        for record in load_prompts(config.prompts, limit=HELD_OUT_PROMPTS, seed=seed)
    }
    # Draw a margin of extra prompts so that the set still has `traces` after dropping held-out ones.
    records = load_prompts(config.prompts, limit=config.traces * 2 + 64, seed=config.prompt_seed)
    kept = [record for record in records if record.prompt not in held_out]
    return [teach(record, seed=config.teacher_seed) for record in kept[: config.traces]], len(records) - len(kept)


def build_examples(config: DistillConfig, tokenizer: Any) -> TraceSet:
    """Tokenise the teacher traces: prompt ids (rendered as at generation) + completion ids + EOS."""
    traces, held_out = teacher_traces(config)
    fmt = make_format("r1")
    examples, too_long = [], 0
    for trace in traces:
        prompt_ids = tokenizer(render_prompt(tokenizer, fmt, trace.prompt.prompt), add_special_tokens=False).input_ids
        completion_ids = tokenizer(trace.completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(prompt_ids) + len(completion_ids) > config.max_length:
            too_long += 1
            continue
        examples.append(Example(prompt_ids + completion_ids, len(prompt_ids)))
    return TraceSet(examples, traces, held_out, too_long)


def batch_plan(n_examples: int, lengths: list[int], config: DistillConfig) -> list[list[int]]:
    """Example indices of every step, all epochs: shuffled, then length-grouped within windows so that
    a batch pads little, then the batches shuffled. Fixed by the seed, so a resumed run repeats it."""
    rng = random.Random(f"distill:{config.seed}")
    size, plan = config.batch_size, []
    for _ in range(config.epochs):
        order = list(range(n_examples))
        rng.shuffle(order)
        window = size * 16
        batches = []
        for first in range(0, n_examples, window):
            chunk = sorted(order[first : first + window], key=lambda i: lengths[i])
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        rng.shuffle(batches)
        plan.extend(batches)
    return plan


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and the mask of positions whose *next* token is trained on."""
    width = max(len(example.token_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.token_ids)
        ids[row, :n] = torch.tensor(example.token_ids)
        attention[row, :n] = 1
        targets[row, example.completion_start - 1 : n - 1] = True  # position t predicts token t + 1
    return ids, attention, targets
