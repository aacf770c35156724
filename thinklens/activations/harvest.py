"""Harvest: teacher-forced forward passes over the traces, residual streams into the store.

The stage reads as a short loop: plan the shards → claim the store → for each shard not yet
complete: read its traces, run length-sorted padded batches to the last needed layer, place each
sequence's rows, then hand the shard to a writer thread (files, then manifest) while the next
shard computes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from pydantic import ConfigDict, Field, NonNegativeInt, field_validator

from thinklens.activations.capture import run_to_layers
from thinklens.activations.store import (
    INDEX_SCHEMA,
    STORE_FORMAT_VERSION,
    ActivationManifest,
    ActivationStore,
    ShardInfo,
    storage_itemsize,
    to_storage,
)
from thinklens.data.segments import PROMPT, Segments, token_char_spans
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError, refuse_other_identity
from thinklens.files import ensure_dir
from thinklens.models.layers import d_model, resolve_layer
from thinklens.models.loader import LoadedModel, ModelConfig, load_model, resolve_device
from thinklens.placement import RayPlacement
from thinklens.progress import progress_bar

_TRACE_COLUMNS = [
    "sequence_id", "prompt", "token_ids", "n_tokens", "generation_start", "prompt_end",
    "prefix_start", "prefix_end", "thinking_end", "format",
]


class HarvestConfig(RayPlacement):
    """Which layers to capture and how to lay them out on disk."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layers: tuple[NonNegativeInt, ...] = Field(
        min_length=1, description="Layers (0-based) whose residual stream after the block is captured."
    )

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"each layer once: {list(value)} repeats one (pass --layer L once per layer)")
        return value
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Storage dtype; 'auto' keeps the model's dtype."
    )
    shard_tokens: int = Field(default=32768, ge=1, description="Capacity of a shard in tokens (whole sequences).")
    batch_tokens: int = Field(default=8192, ge=1, description="Padded tokens per forward batch.")
    massive_ratio: float = Field(
        default=5.0, gt=1, description="A token is flagged massive when its norm exceeds this × its sequence's median."
    )
    model: ModelConfig | None = Field(default=None, description="Model override; default: the model of the traces.")
    device: str | None = Field(
        default=None,
        description="Where the model runs: 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...; "
        "default: where the traces' model ran.",
    )


@dataclass
class HarvestResult:
    activations_dir: Path
    shards_written: int
    shards_skipped: int
    tokens_written: int
    token_count: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0


def plan_shards(sequence_ids: list[int], lengths: list[int], shard_tokens: int) -> list[ShardInfo]:
    """Pack whole sequences, in order, into shards of at most `shard_tokens` rows (a longer sequence alone)."""
    shards: list[ShardInfo] = []
    first, rows, first_row = 0, 0, 0
    for position, length in enumerate(lengths):
        if rows and rows + length > shard_tokens:
            shards.append(ShardInfo(len(shards), first_row, rows, sequence_ids[first], sequence_ids[position - 1]))
            first, first_row, rows = position, first_row + rows, 0
        rows += length
    if rows:
        shards.append(ShardInfo(len(shards), first_row, rows, sequence_ids[first], sequence_ids[-1]))
    return shards


def harvest(config: HarvestConfig, traces_dir: Path, activations_dir: Path, show_progress: bool = True,
            loaded: LoadedModel | None = None, distributed_runner=None) -> HarvestResult:
    """Capture `config.layers` for every trace in `traces_dir` into `activations_dir` (resumable).

    With `config.workers` > 1 the shards are computed by `distributed_runner` (thinklens.distributed.harvest
    passes its Ray runner: call that module's `harvest`)."""
    started = time.perf_counter()
    traces, trace_meta = _open_traces(config, traces_dir)
    model_config = _model_config(config, traces)
    lengths = traces.read(["sequence_id", "n_tokens"]).to_pydict()
    plan = plan_shards(lengths["sequence_id"], lengths["n_tokens"], config.shard_tokens)

    store = ActivationStore(activations_dir)
    identity = _identity(config, model_config, trace_meta["identity"])
    done = _claim(store, identity, plan)
    todo = [shard for shard in plan if shard.shard >= len(done)]
    if not todo:
        return HarvestResult(store.directory, 0, len(plan), 0, store.token_count, time.perf_counter() - started)
    traces.verify(_TRACE_COLUMNS)

    chat_format = traces.read(["format"]).column(0)[0].as_py()  # the format collect resolved, not 'auto'
    if config.distributed:
        if distributed_runner is None:
            raise ThinklensError("harvest --workers runs through thinklens.distributed.harvest.harvest")
        written, redone = distributed_runner(config, model_config, traces_dir, store, identity, chat_format, plan, done,
                                         show_progress)
        return HarvestResult(store.directory, redone, len(plan) - redone, written, store.token_count,
                             time.perf_counter() - started)
    loaded = loaded or load_model(model_config)
    facts = ModelFacts.of(loaded, config)
    layers = facts.layers
    _check_space(store.directory, sum(shard.rows for shard in todo), facts.d_model, len(layers),
                 config.dtype if config.dtype != "auto" else facts.dtype)
    manifest = _manifest(store, identity, facts, config, chat_format, done)
    special_ids = set(loaded.tokenizer.all_special_ids)
    written = 0
    with ThreadPoolExecutor(max_workers=1) as writer, progress_bar(
        "harvest", total=sum(shard.rows for shard in plan), enabled=show_progress
    ) as bar:
        bar.advance(sum(shard.rows for shard in done))
        pending: Future[None] | None = None
        for shard in todo:
            arrays, index = _compute_shard(shard, traces_dir, loaded, layers, config, manifest.dtype, special_ids)
            if pending is not None:
                pending.result()  # at most one shard waits on disk while the next one computes
            pending = writer.submit(_commit_shard, store, manifest, shard, arrays, index)
            written += shard.rows
            bar.advance(shard.rows, tokens=shard.rows)
        if pending is not None:
            pending.result()
    manifest.complete = True
    store.write_manifest(manifest)
    store.clear_markers()  # a distributed harvest's, redone here
    seconds = time.perf_counter() - started
    return HarvestResult(store.directory, len(todo), len(plan) - len(todo), written, store.token_count, seconds)


def _open_traces(config: HarvestConfig, traces_dir: Path) -> tuple[TraceStore, dict[str, Any]]:
    """The traces and their meta; a missing device or missing traces fail before anything is written."""
    if config.device is not None:
        resolve_device(config.device)
    traces = TraceStore(traces_dir)
    trace_meta = traces.meta()
    if trace_meta is None or not traces.parts():
        raise ThinklensError(f"no traces in {traces_dir}: run `thinklens collect --out {Path(traces_dir).parent}` first")
    return traces, trace_meta


def _model_config(config: HarvestConfig, traces: TraceStore) -> ModelConfig:
    """The model to run: the override or the traces' own, placed on `config.device` when one is set."""
    placement = {} if config.device is None else {"device": config.device}
    if config.model is not None:
        return config.model.model_copy(update=placement)
    return traces.model_config(**placement)


INDEX_BYTES_PER_TOKEN = 64  # the token index's Parquet row, generously


def _check_space(directory: Path, tokens: int, width: int, layers: int, dtype: str) -> None:
    """Refuse to start a harvest the disk cannot hold, saying how much it needs."""
    needed = tokens * (width * layers * storage_itemsize(dtype) + INDEX_BYTES_PER_TOKEN)
    existing = directory
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ThinklensError(f"harvest needs ~{_size(needed)} at {directory} and {_size(free)} is free: free space, "
                             "harvest fewer layers, or store --dtype bfloat16")


def _size(n: float) -> str:
    unit = 0
    while n >= 1024 and unit < 4:
        n, unit = n / 1024, unit + 1
    return f"{n:.1f} {('B', 'KB', 'MB', 'GB', 'TB')[unit]}"


def _identity(config: HarvestConfig, model_config: ModelConfig, traces: dict[str, Any]) -> dict[str, Any]:
    """What makes a store these activations: a store harvested with anything else is refused."""
    return {"model": model_config.model, "revision": model_config.revision, "layers": sorted(config.layers),
            "dtype": config.dtype, "shard_tokens": config.shard_tokens, "massive_ratio": config.massive_ratio,
            "traces": traces}


def _claim(store: ActivationStore, identity: dict[str, Any], plan: list[ShardInfo]) -> list[ShardInfo]:
    """Completed shards of a store harvested with the same identity; refuse any other store."""
    if not store.exists():
        if store.directory.is_dir() and any(store.directory.iterdir()):
            raise ThinklensError(f"{store.directory} is not empty and has no manifest: use another run or remove it")
        return []
    manifest = store.manifest()
    refuse_other_identity(store.directory, manifest.identity, identity, "activations of another harvest",
                          f"remove {store.directory} or harvest into another run")
    done = store.shards()
    if done != plan[: len(done)]:
        raise ThinklensError(f"the traces changed since {store.directory} was harvested: remove {store.directory}")
    store.remove_stale_temps()
    return store.intact_shards()  # a shard whose file went missing is harvested again, with all after it


@dataclass(frozen=True)
class ModelFacts:
    """What the manifest records of the loaded model (a Ray worker reports them from its own copy)."""

    location: str
    fingerprint: str
    revision: str | None
    d_model: int
    dtype: str  # the model's own
    layers: list[int]  # the asked layers, resolved (negative ones counted from the end)

    @classmethod
    def of(cls, loaded: LoadedModel, config: HarvestConfig) -> ModelFacts:
        return cls(loaded.spec.location if loaded.spec.kind == "hub" else loaded.config.model, loaded.fingerprint,
                   loaded.config.revision, d_model(loaded.model), str(loaded.model.dtype).removeprefix("torch."),
                   sorted({resolve_layer(loaded.model, layer) for layer in config.layers}))


PLACEMENT = {"workers", "ray_address"}  # how a harvest ran, not what it wrote: kept out of the manifest


def _manifest(
    store: ActivationStore,
    identity: dict[str, Any],
    facts: ModelFacts,
    config: HarvestConfig,
    chat_format: str,
    done: list[ShardInfo],
) -> ActivationManifest:
    manifest = ActivationManifest(
        format_version=STORE_FORMAT_VERSION,
        identity=identity,
        model=facts.location,
        model_fingerprint=facts.fingerprint,
        revision=facts.revision,
        layers=identity["layers"],
        names=[f"layers.{layer}.resid_post" for layer in identity["layers"]],
        d_model=facts.d_model,
        dtype=facts.dtype if config.dtype == "auto" else config.dtype,
        chat_format=chat_format,
        arguments=config.model_dump(mode="json", exclude=PLACEMENT),
        shards=list(done),
        token_count=sum(shard.rows for shard in done),
        complete=False,
    )
    ensure_dir(store.directory)
    store.write_manifest(manifest)
    return manifest


def _commit_shard(
    store: ActivationStore, manifest: ActivationManifest, shard: ShardInfo, arrays: dict[int, np.ndarray],
    index: pa.Table,
) -> None:
    """Runs on the writer thread: shard files first, then the manifest that makes them count."""
    store.write_shard_files(shard.shard, arrays, index)
    manifest.add_shard(shard)
    store.write_manifest(manifest)


def _compute_shard(
    shard: ShardInfo,
    traces_dir: Path,
    loaded: LoadedModel,
    layers: list[int],
    config: HarvestConfig,
    dtype: str,
    special_ids: set[int],
) -> tuple[dict[int, np.ndarray], pa.Table]:
    """Forward the shard's sequences and return its per-layer arrays and its token index."""
    rows = read_shard_traces(shard, traces_dir)
    offsets = np.cumsum([0] + [row["n_tokens"] for row in rows])
    storage_dtype = to_storage(torch.zeros(1, 1), dtype).dtype
    width = d_model(loaded.model)
    arrays = {layer: np.empty((shard.rows, width), dtype=storage_dtype) for layer in layers}
    norms = np.empty(shard.rows, dtype=np.float32)
    for batch, input_ids, mask in padded_batches(rows, config.batch_tokens, loaded.tokenizer.pad_token_id or 0):
        hidden = run_to_layers(loaded.model, input_ids.to(loaded.device), mask.to(loaded.device), layers)
        for slot, i in enumerate(batch):
            start, stop = offsets[i], offsets[i + 1]
            for layer in layers:
                arrays[layer][start:stop] = to_storage(hidden[layer][slot, : stop - start], dtype)
            norms[start:stop] = hidden[layers[0]][slot, : stop - start].float().norm(dim=-1).cpu().numpy()
    return arrays, _index_table(shard, rows, offsets, norms, config.massive_ratio, loaded.tokenizer, special_ids)


def read_shard_traces(shard: ShardInfo, traces_dir: Path) -> list[dict[str, Any]]:
    """The traces of one planned shard, in sequence order."""
    in_shard = (ds.field("sequence_id") >= shard.first_sequence) & (ds.field("sequence_id") <= shard.last_sequence)
    return TraceStore(traces_dir).read(_TRACE_COLUMNS, where=in_shard).to_pylist()


def padded_batches(
    rows: list[dict[str, Any]], batch_tokens: int, pad_id: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(row indices, input_ids, attention_mask) batches, longest first, padded size within `batch_tokens`.

    Right padding: under causal attention the real tokens never see the pads, so each sequence gets
    exactly the activations it would get alone.
    """
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["n_tokens"])
    batches: list[list[int]] = []
    for i in order:
        if batches and rows[batches[-1][0]]["n_tokens"] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    for batch in batches:
        width = rows[batch[0]]["n_tokens"]
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for slot, i in enumerate(batch):
            n = rows[i]["n_tokens"]
            input_ids[slot, :n] = torch.tensor(rows[i]["token_ids"])
            mask[slot, :n] = 1
        yield batch, input_ids, mask


def _index_table(
    shard: ShardInfo,
    rows: list[dict[str, Any]],
    offsets: np.ndarray,
    norms: np.ndarray,
    massive_ratio: float,
    tokenizer: Any,
    special_ids: set[int],
) -> pa.Table:
    columns: dict[str, list[np.ndarray]] = {name: [] for name in INDEX_SCHEMA.names}
    for i, row in enumerate(rows):
        n = row["n_tokens"]
        token_ids = np.asarray(row["token_ids"], dtype=np.int32)
        segments = Segments(
            n, row["generation_start"], row["prompt_end"], row["prefix_start"], row["prefix_end"], row["thinking_end"],
            True, True, True, False,
        ).labels()
        sequence_norms = norms[offsets[i] : offsets[i + 1]]
        ratio = sequence_norms / max(float(np.median(sequence_norms)), 1e-12)
        columns["row"].append(np.arange(shard.first_row + offsets[i], shard.first_row + offsets[i + 1]))
        columns["sequence_id"].append(np.full(n, row["sequence_id"]))
        columns["token_idx"].append(np.arange(n, dtype=np.int32))
        columns["token_id"].append(token_ids)
        columns["segment"].append(segments)
        columns["special"].append(special_mask(tokenizer, row, token_ids, segments, special_ids))
        columns["norm"].append(sequence_norms)
        columns["norm_ratio"].append(ratio.astype(np.float32))
        columns["massive"].append(ratio > massive_ratio)
    arrays = [pa.array(np.concatenate(columns[field.name]), type=field.type) for field in INDEX_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA)


def special_mask(
    tokenizer: Any, row: dict[str, Any], token_ids: np.ndarray, segments: np.ndarray, special_ids: set[int]
) -> np.ndarray:
    """Special tokens anywhere, plus prompt tokens outside the user's own words (the chat template)."""
    special = np.isin(token_ids, list(special_ids))
    prompt_end = int((segments == PROMPT).sum())
    text, spans = token_char_spans(tokenizer, token_ids[:prompt_end].tolist())
    content_start = text.rfind(row["prompt"]) if row["prompt"] else -1
    for position, (start, end) in enumerate(spans):
        inside = content_start >= 0 and content_start <= start and end <= content_start + len(row["prompt"])
        special[position] |= not inside
    return special
