"""Trace collection: generate reasoning traces for a prompt set and write them to a trace store.

The stage reads as a short loop: load prompts → claim the store → skip finished prompts → for each
batch: render, generate with the KV cache, segment, extract answers, write the part atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinklens.data.answers import answers_match, extract_answer, visible_text
from thinklens.data.loaders import load_prompts
from thinklens.data.records import PromptRecord
from thinklens.data.segments import PrefixConfig, segment_trace
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.models.formats import ReasoningFormat, detect_format, make_format, render_prompt
from thinklens.models.generate import Sampling, generate
from thinklens.models.loader import LoadedModel, ModelConfig, load_model, load_tokenizer
from thinklens.placement import RayPlacement
from thinklens.progress import progress_bar


class GenerationConfig(BaseModel):
    """How traces are sampled."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_new_tokens: int = Field(default=512, ge=1, description="Cap on generated tokens per trace.")
    greedy: bool = Field(default=False, description="Greedy decoding instead of sampling.")
    temperature: float = Field(default=0.6, gt=0, description="Sampling temperature (reasoning-model default 0.6).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass (reasoning-model default 0.95).")
    seed: int = Field(default=0, description="Seed of the sampler; each batch derives its own from it.")
    batch_size: int = Field(default=32, ge=1, description="Prompts generated together.")


class CollectConfig(RayPlacement):
    """What `collect` generates: model, prompts, reasoning format and sampling (and, as placement, the Ray
    workers that may generate it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: ModelConfig = Field(default_factory=ModelConfig, description="The model that writes the traces.")
    prompts: str = Field(
        default="arithmetic",
        description=(
            "Built-in set (arithmetic, logic), a .jsonl/.json/.parquet/.csv file, or a hub dataset (org/name); "
            "join several with + (arithmetic+logic) to interleave them."
        ),
    )
    limit: int | None = Field(default=None, ge=1, description="Use the first N prompts of the set.")
    prompt_seed: int = Field(default=0, description="Seed of the built-in procedural sets.")
    split: str = Field(default="train", description="Split of a hub dataset.")
    format: Literal["auto", "r1", "qwen3", "think"] = Field(
        default="auto", description="Reasoning format; 'auto' detects it from the tokenizer."
    )
    forced_opening: str | None = Field(
        default=None,
        description="Text placed after <think> before generation; default 'Okay, so' for the think format, none otherwise.",
    )
    prefix: PrefixConfig = Field(default_factory=PrefixConfig, description="How the opening prefix is found.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Sampling settings.")
    engine: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description="What generates: 'transformers' (thinklens' own KV-cache loop) or 'vllm' (vLLM's offline engine: "
        "continuous batching, CUDA graphs; each prompt seeded by its sequence id). Harvesting is the same either way.")
    import_traces: bool = Field(
        default=False, description="Import the traces the data carries (e.g. OpenR1-Math generations) instead of generating."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_spec(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value  # `model: smollm2` in a YAML file

    def identity(self) -> dict[str, Any]:
        """What makes two collections the same run (the limit may grow between runs)."""
        facts = self.model_dump(mode="json", exclude={"limit", *RayPlacement.model_fields})
        facts["model"] = {key: facts["model"][key] for key in ("model", "revision", "dtype")}
        facts["generation"].pop("batch_size")
        return facts


@dataclass
class CollectResult:
    """What one `collect` call did."""

    traces_dir: Path
    n_prompts: int
    n_written: int
    n_skipped: int
    generated_tokens: int
    seconds: float
    format: str | None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def collect(
    config: CollectConfig, traces_dir: Path, show_progress: bool = True, loaded: LoadedModel | None = None,
    distributed_runner=None,
) -> CollectResult:
    """Generate (or import) traces for every prompt not yet in `traces_dir`.

    `loaded` reuses a model already in memory (it must be the one `config.model` names). The prompts left
    are generated in batches of `generation.batch_size`, each seeded by its first prompt, so a batch's
    traces are the same whoever generates it; with `config.workers` > 1 `distributed_runner` generates
    them (thinklens.distributed.collect passes its Ray one: call that module's `collect`).
    """
    started = time.perf_counter()
    prompts = load_prompts(config.prompts, limit=config.limit, seed=config.prompt_seed, split=config.split)
    store = TraceStore(traces_dir)
    store.check_claim(config.identity())  # refuse another run's store before anything is loaded or written
    done = store.done_sequence_ids()
    todo = [record for record in prompts if record.sequence_id not in done]
    if not todo:
        return CollectResult(traces_dir, len(prompts), 0, len(prompts), 0, time.perf_counter() - started, None)
    if config.import_traces:
        store.claim(config.identity())
        return _import(config, store, prompts, todo, started, show_progress)

    batches = [todo[first:first + config.generation.batch_size]
               for first in range(0, len(todo), config.generation.batch_size)]
    if config.distributed:
        if distributed_runner is None:
            raise ThinklensError("collect --workers runs through thinklens.distributed.collect.collect")
        tokens, format_name = distributed_runner(config, store, batches, len(prompts), show_progress)
    else:
        tokens, format_name = _generate_here(config, store, batches, len(prompts), loaded, show_progress)
    seconds = time.perf_counter() - started
    return CollectResult(traces_dir, len(prompts), len(todo), len(prompts) - len(todo), tokens, seconds, format_name)


class TraceWriter:
    """A model ready to write traces batch by batch, through the configured engine; what a Ray worker holds too."""

    def __init__(self, config: CollectConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        if config.engine == "vllm":
            from thinklens.models.vllm_engine import VllmGenerator

            self.engine: Any = VllmGenerator(config.model)
            self.tokenizer = self.engine.tokenizer
        else:
            self.engine = loaded or load_model(config.model)
            self.tokenizer = self.engine.tokenizer
        self.format = resolve_format(self.tokenizer, config)

    def write(self, store: TraceStore, batch: list[PromptRecord]) -> int:
        """Generate `batch` and write it as one part; returns the generated tokens."""
        if self.config.engine == "vllm":
            rows, tokens = _vllm_batch(self.engine, self.format, batch, self.config)
        else:
            rows, tokens = generate_batch(self.engine, self.format, batch, self.config)
        store.write_part(rows)
        return tokens


def _generate_here(config: CollectConfig, store: TraceStore, batches: list[list[PromptRecord]], total: int,
                   loaded: LoadedModel | None, show_progress: bool) -> tuple[int, str]:
    """Generate and write `batches` in this process; returns (generated tokens, format name)."""
    writer = TraceWriter(config, loaded)
    store.claim(config.identity())  # only now: a model that fails to load leaves nothing that refuses the retry
    tokens = 0
    with progress_bar("collect", total=total, enabled=show_progress) as bar:
        bar.advance(total - sum(map(len, batches)))
        for batch in batches:
            batch_tokens = writer.write(store, batch)
            tokens += batch_tokens
            bar.advance(len(batch), tokens=batch_tokens)
    return tokens, writer.format.name


def resolve_format(tokenizer: Any, config: CollectConfig) -> ReasoningFormat:
    """The configured format, or the one detected from the tokenizer when 'auto'."""
    name = detect_format(tokenizer) if config.format == "auto" else config.format
    return make_format(name, forced_opening=config.forced_opening)


def generate_batch(
    loaded: LoadedModel, fmt: ReasoningFormat, batch: list[PromptRecord], config: CollectConfig
) -> tuple[list[dict[str, Any]], int]:
    """Generate one batch of traces with the KV cache; returns trace rows and generated-token count."""
    tokenizer, model, generation = loaded.tokenizer, loaded.model, config.generation
    rendered = [render_prompt(tokenizer, fmt, record.prompt) for record in batch]
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    encoded = tokenizer(rendered, add_special_tokens=False, padding=True, return_tensors="pt").to(loaded.device)
    completions = generate(
        model,
        encoded["input_ids"],
        encoded["attention_mask"],
        max_new_tokens=generation.max_new_tokens,
        eos_token_ids=loaded.eos_token_ids,
        sampling=Sampling(greedy=generation.greedy, temperature=generation.temperature, top_p=generation.top_p),
        # Seeded by the batch's first prompt: a resumed run gives a batch the seed it had before.
        seed=generation.seed * 1_000_003 + batch[0].sequence_id,
    )
    rows = []
    for i, (record, completion) in enumerate(zip(batch, completions, strict=True)):
        prompt_ids = encoded["input_ids"][i][encoded["attention_mask"][i].bool()].tolist()
        row = trace_row(tokenizer, fmt, config.prefix, record, prompt_ids, completion.token_ids, completion.finish_reason)
        rows.append(row)
    return rows, sum(len(completion.token_ids) for completion in completions)


def _vllm_batch(generator: Any, fmt: ReasoningFormat, batch: list[PromptRecord], config: CollectConfig
                ) -> tuple[list[dict[str, Any]], int]:
    """Generate one batch through vLLM, each prompt with its own seed; returns trace rows and generated tokens."""
    tokenizer, generation = generator.tokenizer, config.generation
    prompts = [tokenizer(render_prompt(tokenizer, fmt, record.prompt), add_special_tokens=False)["input_ids"]
               for record in batch]
    completions = generator.generate(
        prompts, [generation.seed * 1_000_003 + record.sequence_id for record in batch],
        Sampling(greedy=generation.greedy, temperature=generation.temperature, top_p=generation.top_p),
        generation.max_new_tokens)
    rows = [trace_row(tokenizer, fmt, config.prefix, record, ids, completion.token_ids, completion.finish_reason)
            for record, ids, completion in zip(batch, prompts, completions, strict=True)]
    return rows, sum(len(completion.token_ids) for completion in completions)


def trace_row(
    tokenizer: Any,
    fmt: ReasoningFormat,
    prefix: PrefixConfig,
    record: PromptRecord,
    prompt_ids: list[int],
    completion_ids: list[int],
    finish_reason: str,
) -> dict[str, Any]:
    """Segment one trace and extract its answer: the row the trace store keeps."""
    token_ids = prompt_ids + completion_ids
    trace = segment_trace(tokenizer, token_ids, len(prompt_ids), fmt, prefix)
    segments = trace.segments
    answer_text = trace.text_of(segments.thinking_end, segments.n_tokens)
    completion = trace.text_of(segments.generation_start, segments.n_tokens)
    answer = extract_answer(visible_text(tokenizer, answer_text) or visible_text(tokenizer, completion))
    return {
        "sequence_id": record.sequence_id,
        "prompt_id": record.prompt_id,
        "source": record.source,
        "prompt": record.prompt,
        "reference_answer": record.answer,
        "metadata": json.dumps(record.metadata, sort_keys=True),
        "token_ids": token_ids,
        "text": trace.text,
        "completion": completion,
        **segments.as_dict(),
        "prefix_text": trace.text_of(segments.prefix_start, segments.prefix_end),
        "answer_text": answer_text,
        "answer": answer,
        "correct": answers_match(answer, record.answer),
        "finish_reason": finish_reason,
        "format": fmt.name,
    }


def _import(
    config: CollectConfig,
    store: TraceStore,
    prompts: list[PromptRecord],
    todo: list[PromptRecord],
    started: float,
    show_progress: bool,
) -> CollectResult:
    """Turn traces that came with the data into trace rows, tokenised with the model's tokenizer."""
    missing = [record.prompt_id for record in todo if not record.completion]
    if missing:
        raise ThinklensError(
            f"--import-traces needs a trace for every prompt, but {len(missing)} have none (first: {missing[0]}): "
            "drop --import-traces to generate them"
        )
    tokenizer = load_tokenizer(config.model)
    fmt = resolve_format(tokenizer, config)
    batch_size = config.generation.batch_size
    tokens = 0
    with progress_bar("import", total=len(prompts), enabled=show_progress) as bar:
        bar.advance(len(prompts) - len(todo))
        for first in range(0, len(todo), batch_size):
            rows = []
            for record in todo[first : first + batch_size]:
                prompt_ids = tokenizer(render_prompt(tokenizer, fmt, record.prompt), add_special_tokens=False).input_ids
                completion = _strip_repeated_open_tag(record.completion or "", fmt)
                completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
                tokens += len(completion_ids)
                rows.append(trace_row(tokenizer, fmt, config.prefix, record, prompt_ids, completion_ids, "imported"))
            store.write_part(rows)
            bar.advance(len(rows), tokens=sum(row["n_tokens"] - row["generation_start"] for row in rows))
    seconds = time.perf_counter() - started
    return CollectResult(store.directory, len(prompts), len(todo), len(prompts) - len(todo), tokens, seconds, fmt.name)


def _strip_repeated_open_tag(completion: str, fmt: ReasoningFormat) -> str:
    """Datasets written before the R1 template opened the thinking start their traces with `<think>`."""
    stripped = completion.lstrip()
    if fmt.opens_in_prompt and stripped.startswith(fmt.open_tag):
        return stripped[len(fmt.open_tag) :].lstrip("\n")
    return completion
