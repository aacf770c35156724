"""Synthetic activation stores written with the store's own primitives (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from thinklens.activations.harvest import plan_shards
from thinklens.activations.store import (
    INDEX_SCHEMA,
    STORE_FORMAT_VERSION,
    ActivationManifest,
    ActivationStore,
)


def write_synthetic_store(
    directory: Path, n_sequences: int, tokens_per_sequence: int, d_model: int, shard_tokens: int, layer: int = 0
) -> ActivationStore:
    """Row r holds the value r in column 0 (so readers can be checked row by row) and noise elsewhere."""
    store = ActivationStore(directory)
    plan = plan_shards(list(range(n_sequences)), [tokens_per_sequence] * n_sequences, shard_tokens)
    rng = np.random.default_rng(0)
    for shard in plan:
        array = rng.standard_normal((shard.rows, d_model), dtype=np.float32)
        array[:, 0] = np.arange(shard.first_row, shard.first_row + shard.rows)
        sequences = np.repeat(np.arange(shard.first_sequence, shard.last_sequence + 1), tokens_per_sequence)
        positions = np.tile(np.arange(tokens_per_sequence), len(sequences) // tokens_per_sequence)
        columns = {
            "row": np.arange(shard.first_row, shard.first_row + shard.rows),
            "sequence_id": sequences,
            "token_idx": positions.astype(np.int32),
            "token_id": positions.astype(np.int32),
            "segment": np.minimum(positions // max(tokens_per_sequence // 4, 1), 3).astype(np.uint8),
            "special": positions == 0,
            "norm": np.ones(shard.rows, dtype=np.float32),
            "norm_ratio": np.ones(shard.rows, dtype=np.float32),
            "massive": positions == 1,
        }
        index = pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in INDEX_SCHEMA], schema=INDEX_SCHEMA)
        store.write_shard_files(shard.shard, {layer: array}, index)
    store.write_manifest(ActivationManifest(
        format_version=STORE_FORMAT_VERSION, layers=[layer], d_model=d_model, dtype="float32", shards=plan,
        token_count=sum(shard.rows for shard in plan), complete=True,
    ))
    return store


def write_store_from_array(directory: Path, data: np.ndarray, tokens_per_sequence: int, shard_tokens: int,
                           layer: int = 0) -> ActivationStore:
    """A store holding `data` (n, d) row by row, every token a 'thinking' token with nothing flagged."""
    store = ActivationStore(directory)
    n, d_model = data.shape
    n_sequences = n // tokens_per_sequence
    plan = plan_shards(list(range(n_sequences)), [tokens_per_sequence] * n_sequences, shard_tokens)
    for shard in plan:
        rows = np.arange(shard.first_row, shard.first_row + shard.rows)
        columns = {
            "row": rows,
            "sequence_id": rows // tokens_per_sequence,
            "token_idx": (rows % tokens_per_sequence).astype(np.int32),
            "token_id": np.zeros(shard.rows, dtype=np.int32),
            "segment": np.full(shard.rows, 2, dtype=np.uint8),
            "special": np.zeros(shard.rows, dtype=bool),
            "norm": np.linalg.norm(data[rows], axis=1).astype(np.float32),
            "norm_ratio": np.ones(shard.rows, dtype=np.float32),
            "massive": np.zeros(shard.rows, dtype=bool),
        }
        index = pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in INDEX_SCHEMA], schema=INDEX_SCHEMA)
        store.write_shard_files(shard.shard, {layer: np.ascontiguousarray(data[rows], dtype=np.float32)}, index)
    store.write_manifest(ActivationManifest(
        format_version=STORE_FORMAT_VERSION, layers=[layer], d_model=d_model, dtype="float32", shards=plan,
        token_count=sum(shard.rows for shard in plan), complete=True,
    ))
    return store


def sparse_mixture(n: int, d_model: int, n_directions: int, active: int, seed: int = 0) -> np.ndarray:
    """Tokens that are sums of `active` of `n_directions` random unit directions, plus a shared offset."""
    return planted_mixture(n, d_model, n_directions, active, seed)[0]


def planted_mixture(n: int, d_model: int, n_directions: int, active: int, seed: int = 0,
                    offset_norm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, the unit directions they are made of): as `sparse_mixture`, with the shared offset's norm
    set to `offset_norm` when given."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_directions, d_model))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    picks = np.argsort(rng.random((n, n_directions)), axis=1)[:, :active]
    weights = rng.uniform(1.0, 3.0, (n, active))
    offset = 4.0 * directions.mean(axis=0)  # residual streams share a large mean
    if offset_norm is not None:
        offset *= offset_norm / np.linalg.norm(offset)
    data = np.einsum("na,nad->nd", weights, directions[picks]) + offset
    return data.astype(np.float32), directions.astype(np.float32)
