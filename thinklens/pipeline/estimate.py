"""`thinklens run --dry-run`: what each stage of a run config would do, before anything runs.

Per stage: where it runs (workers, ranks, device), how many tokens it handles, the bytes it writes
and, where the config's `plan.throughput` gives a rate for it, the time. Byte sizes are arithmetic
on the settings (d_model × layers × bytes per value for the store, the SAE's matrices, the
database's measured bytes per row); the rates are the user's (measured on their hardware, or derived
as in docs/scale.md) and the plan names their source. Nothing is loaded: a model's width comes from
`plan.d_model`, or from its config.json when the model is on this machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError

# Measured on runs/demo (SmolLM2-135M, 512 traces, 86,245 tokens): the trace store's zstd Parquet is
# 322,003 B (3.7 B/token); the feature database's pages (sqlite3 dbstat): 13.4 B per indexed token,
# 21.1 B per example row, 415 B per feature row.
TRACE_BYTES_PER_TOKEN = 3.7
DB_BYTES_PER_TOKEN = 13.4
DB_BYTES_PER_EXAMPLE = 21.1
DB_BYTES_PER_FEATURE = 415
STORE_INDEX_BYTES_PER_TOKEN = 64  # harvest's budget for the token index (activations.harvest)
PROMPT_TOKENS = 64  # a prompt rendered in its chat template, when plan.trace_tokens is not given


class PlanConfig(BaseModel):
    """What `thinklens run --dry-run` needs beyond the stages' settings (nothing here changes a run)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    d_model: int | None = Field(default=None, ge=1, description="The model's width; default: its config.json, "
                                                                "when the model is on this machine.")
    trace_tokens: int | None = Field(
        default=None, ge=1,
        description="Mean tokens of a trace (prompt + generated); default: a 64-token prompt + max_new_tokens (a "
        "bound: traces that stop early are shorter).")
    throughput: dict[str, float] = Field(
        default_factory=dict,
        description="Tokens/s of one worker (or rank) per stage, e.g. {collect: 40000, harvest: 137000}; the time of "
        "a stage without one is not estimated.")
    throughput_source: str | None = Field(default=None, description="Where the rates come from (measured where, or "
                                                                    "derived how): printed with the plan.")


@dataclass(frozen=True)
class StagePlan:
    """One stage's plan: where it runs, the tokens it handles, the bytes it writes and the time it takes."""

    stage: str
    where: str
    tokens: int | None
    bytes_written: float | None
    seconds: float | None
    note: str = ""


def plan_run(config: Any) -> list[StagePlan]:
    """The plan of every stage of `config` (a RunConfig), in run order; a config `thinklens run` would
    refuse (a required section missing) is refused the same way."""
    from thinklens.pipeline.config import missing_sections  # config imports this module's PlanConfig

    problems = missing_sections(config)
    if problems:
        raise ThinklensError(problems[0])
    plan: PlanConfig = config.plan
    d_model = plan.d_model or _model_width(config.collect.model.model)
    traces = _trace_count(config.collect)
    trace_tokens = plan.trace_tokens or PROMPT_TOKENS + config.collect.generation.max_new_tokens
    tokens = None if traces is None else traces * trace_tokens
    d_sae = None if d_model is None else config.train.expansion * d_model
    plans = [
        _timed(plan, "collect", *_workers(config.collect), tokens,
               None if tokens is None else tokens * TRACE_BYTES_PER_TOKEN,
               f"{traces:,} traces × {trace_tokens:,} tokens" if traces else "set collect.limit"),
        _harvest(plan, config.harvest, tokens, d_model),
        _train(plan, config.train, tokens, d_model, d_sae),
        _timed(plan, "eval", _device(config.eval), 1, None, None, "held-out FVU, L0, spliced loss"),
        _timed(plan, "index", *_workers(config.index), tokens,
               None if tokens is None or d_sae is None else
               tokens * DB_BYTES_PER_TOKEN + d_sae * ((config.index.top + config.index.quantile_samples)
                                                      * DB_BYTES_PER_EXAMPLE + DB_BYTES_PER_FEATURE),
               f"top {config.index.top} + {config.index.quantile_samples} per feature"),
    ]
    later = ("label", "analyze", "findings", "map", "sweep", "report")
    return plans + [StagePlan(name, _device(getattr(config, name)), None, None, None, "small next to the above")
                    for name in later if not getattr(getattr(config, name), "skip", False)]


def _harvest(plan: PlanConfig, harvest: Any, tokens: int | None, d_model: int | None) -> StagePlan:
    value_bytes = 4 if harvest.dtype == "float32" else 2  # 'auto' stores a bf16/fp16 model's own 2 bytes
    per_token = None if d_model is None else d_model * len(harvest.layers) * value_bytes + STORE_INDEX_BYTES_PER_TOKEN
    return _timed(plan, "harvest", *_workers(harvest), tokens,
                  None if tokens is None or per_token is None else tokens * per_token,
                  f"layers {', '.join(map(str, harvest.layers))}: {per_token:,} B/token" if per_token else
                  "set plan.d_model")


def _train(plan: PlanConfig, train: Any, tokens: int | None, d_model: int | None, d_sae: int | None) -> StagePlan:
    trained = train.tokens or (None if tokens is None else train.epochs * tokens)
    matrices = 1 if train.arch == "batchtopk_tied" else 2
    weights = None if d_sae is None else matrices * d_model * d_sae * 4  # float32
    # The SAE, plus a checkpoint holding it again with Adam's two moments.
    return _timed(plan, "train", f"{train.nproc} rank(s) on {train.device}", train.nproc, trained,
                  None if weights is None else 4 * weights,
                  f"{d_model:,} → {d_sae:,}, k {train.k}, {train.epochs} epochs" if d_sae else "set plan.d_model")


def _timed(plan: PlanConfig, stage: str, where: str, workers: int, tokens: int | None, bytes_written: float | None,
           note: str) -> StagePlan:
    """The stage's plan, timed at `workers` × its rate when the plan gives one (perfect scaling: a bound)."""
    rate = plan.throughput.get(stage)
    seconds = None if rate is None or tokens is None else tokens / (rate * workers)
    return StagePlan(stage, where, tokens, bytes_written, seconds, note)


def _workers(config: Any) -> tuple[str, int]:
    """Where a Ray-capable stage runs, and on how many workers."""
    device = getattr(config, "device", None) or getattr(getattr(config, "model", None), "device", None) or "auto"
    place = f" at {config.ray_address}" if config.ray_address else ""
    return f"{config.workers} worker(s){place} on {device}", config.workers


def _device(config: Any) -> str:
    return f"on {getattr(config, 'device', None) or 'auto'}"


def _trace_count(collect: Any) -> int | None:
    """The traces collect will write: its limit, or the size of a built-in set (others need the network)."""
    if collect.limit is not None:
        return collect.limit
    from thinklens.data.loaders import BUILTIN_SETS, load_prompts

    if all(part in BUILTIN_SETS for part in collect.prompts.split("+")):
        return len(load_prompts(collect.prompts, seed=collect.prompt_seed))
    return None


def _model_width(spec: str) -> int | None:
    """d_model from the model's config.json when it is on this machine (a directory or the hub's cache)."""
    from thinklens.models.loader import model_source, parse_model_spec

    try:
        parsed = parse_model_spec(spec)
        if parsed.gguf_file is not None:
            return _gguf_width(parsed.gguf_file)
        if parsed.kind == "hub":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
            path = Path(cached) if isinstance(cached, str) else None
        else:
            path = Path(model_source(parsed, _plain_model(spec))[0]) / "config.json"
    except ThinklensError:
        return None
    if path is None or not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("hidden_size") or config.get("n_embd") or config.get("text_config", {}).get("hidden_size")


def _gguf_width(path: Path) -> int | None:
    """`<arch>.embedding_length` from a GGUF file's header (read without loading the tensors)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    for name, field in fields.items():
        if name.endswith(".embedding_length"):
            return int(field.parts[field.data[0]][0])
    return None


def _plain_model(spec: str) -> Any:
    from thinklens.models.loader import ModelConfig

    return ModelConfig(model=spec)
