"""Build `features.db`: encode the harvested store with the SAE and keep what a reader needs.

The loop: for each shard, for each chunk of rows: read activations and their token index, encode
(batch-independent), update per-feature counts, sums, segment counts and histograms, offer the
entries to the top-N and to a uniform reservoir (for quantile samples). Codes are never all held:
memory is the per-feature state, (d_sae × (N + reservoir)) entries. Then: tokens, sequences,
features (with the decoder's logit lens), histograms, activations (top N + examples across
quantiles, or every non-zero activation with `store_all`), heuristic labels and meta — into a temp
file renamed over `features.db` when complete.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, Field

from thinklens.activations.store import ActivationManifest, ActivationStore
from thinklens.data.segments import SEGMENT_NAMES
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.features.checkpoint import IndexCheckpoint, Resumed
from thinklens.features.db import FeatureDB
from thinklens.features.labels import HEURISTIC_MODEL, HEURISTIC_VERSION, heuristic_labels
from thinklens.features.schema import migrate
from thinklens.features.topk import TopPerFeature
from thinklens.files import atomic_path, result_settings, without_placement
from thinklens.models.loader import file_sha256, load_model, resolve_device
from thinklens.placement import RayPlacement
from thinklens.progress import progress_bar
from thinklens.sae.formats import WEIGHTS_FILE, check_same_model, check_width, load_sae
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae

DB_FORMAT_VERSION = 1
HISTOGRAM_EDGES = np.concatenate([[0.0], np.logspace(-4, 4, 65)])  # activation bins shared by all features


class IndexConfig(RayPlacement):
    """What the feature database keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    top: int = Field(default=64, ge=1, description="Top examples kept per feature.")
    quantile_samples: int = Field(default=16, ge=0, description="Extra examples per feature spread across quantiles.")
    store_all: bool = Field(default=False, description="Keep every non-zero activation (large; for ad-hoc analysis).")
    batch_size: int = Field(default=4096, ge=1, description="Tokens encoded together.")
    include_special: bool = Field(default=False, description="Index special/chat-template tokens too.")
    include_massive: bool = Field(default=False, description="Index massive-activation tokens too.")
    logit_tokens: int = Field(default=10, ge=1, description="Top and bottom logit-lens tokens kept per feature.")
    seed: int = Field(default=0, description="Seed of the quantile sampling.")
    layer: int | None = Field(
        default=None, description="Layer the SAE reads; only needed for an SAE that names none (it may not contradict it)."
    )
    device: str = Field(
        default="auto", description="Where the SAE (and the model, for the logit lens) run: 'auto' (cuda when "
        "available, else cpu), 'cpu', 'cuda:1', ..."
    )
    allow_other_model: bool = Field(
        default=False, description="Use an SAE trained on another model than the run's (a deliberate transfer).")
    checkpoint_seconds: float = Field(
        default=60.0, ge=0, description="Save the merged state this often (seconds), so a killed index resumes "
        "there; 0: after every shard.")




@dataclass
class IndexResult:
    db_path: Path
    tokens: int
    indexed_tokens: int
    seconds: float
    db_bytes: int
    skipped: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class FeatureStats:
    """Everything accumulated per feature while encoding."""

    def __init__(self, d_sae: int, config: IndexConfig, shard: int = 0) -> None:
        self.firing = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.per_segment = torch.zeros(d_sae, len(SEGMENT_NAMES), dtype=torch.long)
        self.histogram = torch.zeros(d_sae, len(HISTOGRAM_EDGES), dtype=torch.long)
        self.segment_tokens = torch.zeros(len(SEGMENT_NAMES), dtype=torch.long)
        self.top = TopPerFeature(d_sae, config.top)
        self.reservoir = TopPerFeature(d_sae, max(4 * config.quantile_samples, 1))  # uniform sample via random keys
        # Each shard samples with its own seed, so a shard's partial state is the same whichever worker makes it.
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + shard)

    def __getstate__(self) -> dict[str, Any]:  # a Ray worker sends its partial state; the generator stays
        return {key: value for key, value in self.__dict__.items() if key != "generator"}

    def merge(self, other: FeatureStats) -> None:
        """Fold another shard's partial state into this one (in shard order, the result is deterministic)."""
        self.firing += other.firing
        self.total += other.total
        self.per_segment += other.per_segment
        self.histogram += other.histogram
        self.segment_tokens += other.segment_tokens
        self.top.merge(other.top)
        self.reservoir.merge(other.reservoir)

    def add(self, features: torch.Tensor, values: torch.Tensor, sequence_ids: torch.Tensor, token_idx: torch.Tensor,
            segments: torch.Tensor | None, keys: torch.Tensor | None = None) -> None:
        """Count a batch of active entries (1-D, same length). `segments` None: not known (an imported
        release); `keys`: the reservoir's sampling keys, drawn from the stats' generator when None."""
        d_sae = len(self.firing)
        self.firing += torch.bincount(features, minlength=d_sae)
        self.total.index_add_(0, features, values.double())
        if segments is not None:
            self.per_segment += torch.bincount(features * len(SEGMENT_NAMES) + segments,
                                               minlength=d_sae * len(SEGMENT_NAMES)).view(d_sae, -1)
        bins = torch.bucketize(values, torch.from_numpy(HISTOGRAM_EDGES).float())
        self.histogram += torch.bincount(features * self.histogram.shape[1] + bins.clamp_max(self.histogram.shape[1] - 1),
                                         minlength=self.histogram.numel()).view(d_sae, -1)
        self.top.update(features, values, values, sequence_ids, token_idx)
        if keys is None:
            keys = torch.rand(len(values), generator=self.generator)  # the N largest random keys: a uniform sample
        self.reservoir.update(features, keys, values, sequence_ids, token_idx)


def build_index(config: IndexConfig, sae_dir: Path, activations_dir: Path, traces_dir: Path, db_path: Path,
                show_progress: bool = True, distributed_states=None) -> IndexResult:
    """Encode every stored token with the SAE and write `db_path` (atomically). With `config.workers` > 1
    the shards are encoded by `distributed_states` (thinklens.distributed.index passes its Ray one: call
    that module's `build_index`)."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    existing = _existing_index(Path(db_path), sae_dir, config)
    if existing is not None:
        return existing
    sae = load_sae(sae_dir).to(device)
    store = ActivationStore(activations_dir)
    manifest = store.manifest()
    check_width(sae, manifest.d_model, f"the activations in {activations_dir}")
    check_same_model(sae, manifest.model, manifest.model_fingerprint, f"the activations in {activations_dir}",
                     config.allow_other_model)
    layer = resolve_sae_layer(sae.config.layer, manifest.layers, config.layer, sae=f"the SAE in {sae_dir}",
                              holder=f"the activations in {activations_dir}")
    # The model gives its tokenizer and unembedding (the logit lens): float32 on CPU, its own dtype on a GPU.
    precision = {"dtype": "float32"} if device.type == "cpu" else {}
    loaded = load_model(store.model_config(device=config.device, **precision))
    tokenizer = loaded.tokenizer
    if config.distributed and config.store_all:
        raise ThinklensError("--store-all keeps every activation in one database writer: index it without --workers")
    checkpoint = IndexCheckpoint(Path(db_path), {"sae_sha256": _sha256(Path(sae_dir) / WEIGHTS_FILE),
                                                 "arguments": result_settings(config),
                                                 "store": _sha256(store.directory / "manifest.json")},
                                 config.checkpoint_seconds)
    with atomic_path(Path(db_path)) as temp, closing(sqlite3.connect(temp)) as connection:  # closed on any error
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")  # a temp file until renamed
        migrate(connection)
        stats, indexed, vocabulary = _encode_shards(sae, store, layer, config, connection, sae_dir, checkpoint,
                                                    distributed_states, show_progress)
        _insert_vocab(connection, tokenizer, vocabulary)
        _insert_sequences(connection, traces_dir)
        unembedding = loaded.model.get_output_embeddings()
        _insert_features(connection, sae, stats, indexed, None if unembedding is None else unembedding.weight.detach(),
                         tokenizer, config.logit_tokens)
        if not config.store_all:
            insert_examples(connection, stats, config)
        connection.executemany(
            "INSERT OR REPLACE INTO autointerp VALUES (?, ?, ?, ?, NULL, NULL, ?, ?)",
            (row + (HEURISTIC_MODEL, HEURISTIC_VERSION) for row in heuristic_labels(connection)),
        )
        _insert_meta(connection, sae_dir, sae, layer, manifest, config, store.token_count, indexed)
        connection.commit()
        connection.execute("ANALYZE")
        connection.execute("VACUUM")  # packs the pages the B-trees left part-empty: ~10 % smaller
    checkpoint.remove()
    size = Path(db_path).stat().st_size
    return IndexResult(Path(db_path), store.token_count, indexed, time.perf_counter() - started, size)


def _existing_index(db_path: Path, sae_dir: Path, config: IndexConfig) -> IndexResult | None:
    """A complete database of the same SAE and settings (nothing to do), or None to build.

    A database of another SAE or other settings is replaced only by a fresh build, never mixed.
    """
    if not db_path.is_file():
        return None
    try:
        meta = FeatureDB(db_path).meta()
    except sqlite3.DatabaseError:
        return None
    same_sae = meta.get("sae_sha256") == _sha256(Path(sae_dir) / WEIGHTS_FILE)
    arguments = without_placement(meta.get("arguments") or {})
    if not same_sae or {**_ADDED_DEFAULTS, **arguments} != result_settings(config):
        return None
    return IndexResult(db_path, int(meta["tokens"]), int(meta["indexed_tokens"]), 0.0, db_path.stat().st_size,
                       skipped=True)


_ADDED_DEFAULTS = {"layer": None}  # fields added since the first databases: what those were built with


def _sha256(path: Path) -> str:
    # Chunked and remembered while the file is unchanged: one build asks for the SAE's hash three times
    # (is the database up to date, the checkpoint's identity, the meta).
    return file_sha256(path)


@torch.no_grad()
def _encode_shards(sae: Sae, store: ActivationStore, layer: int, config: IndexConfig, connection: sqlite3.Connection,
                   sae_dir: Path, checkpoint: IndexCheckpoint, distributed_states, show_progress: bool
                   ) -> tuple[FeatureStats, int, set[int]]:
    """Every shard's tokens into the database and its partial state merged in shard order, resuming after
    the shards a checkpoint holds (their tokens are inserted again; they are not encoded again). Returns
    the merged state, the tokens indexed and the vocabulary seen."""
    stats = FeatureStats(sae.config.d_sae, config)
    resumed = Resumed() if config.store_all else checkpoint.load()
    if resumed.state is not None:
        stats.__dict__.update(resumed.state)
    indexed, vocabulary, shards = resumed.indexed, set(), store.shards()
    with progress_bar("index", total=store.token_count, enabled=show_progress) as bar:
        for shard in shards[:resumed.shards]:
            vocabulary.update(_insert_shard_tokens(connection, store, shard))
            bar.advance(shard.rows)
        states = _shard_states(sae, store, layer, shards[resumed.shards:], config, connection, sae_dir,
                               distributed_states)
        for done, (shard, (partial, count)) in enumerate(states, start=resumed.shards + 1):
            vocabulary.update(_insert_shard_tokens(connection, store, shard))
            stats.merge(partial)
            indexed += count
            if not config.store_all and done < len(shards):
                checkpoint.save_if_due(done, indexed, stats.__getstate__())
            bar.advance(shard.rows, tokens=shard.rows)
    return stats, indexed, vocabulary


def _insert_shard_tokens(connection: sqlite3.Connection, store: ActivationStore, shard) -> set[int]:
    """One shard's tokens into the `tokens` table; returns the token ids it holds."""
    index = store.read_index(shard, ["sequence_id", "token_idx", "token_id", "segment"]).to_pydict()
    _insert_tokens(connection, index)
    return set(np.unique(index["token_id"]).tolist())


def _shard_states(sae: Sae, store: ActivationStore, layer: int, shards: list, config: IndexConfig,
                  connection: sqlite3.Connection, sae_dir: Path, distributed_states
                  ) -> Iterator[tuple[Any, tuple[FeatureStats, int]]]:
    """(shard, (its partial state, tokens indexed)) for `shards` in order: computed here, or by Ray workers."""
    if config.distributed:
        if distributed_states is None:
            raise ThinklensError("index --workers runs through thinklens.distributed.index.build_index")
        yield from distributed_states(config, sae_dir, store, layer, shards)
        return
    for shard in shards:
        yield shard, shard_state(sae, store, layer, shard, config, connection)


@torch.inference_mode()
def shard_state(sae: Sae, store: ActivationStore, layer: int, shard, config: IndexConfig,
                connection: sqlite3.Connection | None = None) -> tuple[FeatureStats, int]:
    """The map step: one shard encoded into its own partial state; returns it with the tokens indexed."""
    stats = FeatureStats(sae.config.d_sae, config, shard.shard)
    index = store.read_index(shard).to_pydict()
    indexed = 0
    for start in range(0, shard.rows, config.batch_size):
        stop = min(start + config.batch_size, shard.rows)
        indexed += _encode_chunk(sae, store, layer, shard, index, start, stop, config, stats, connection)
    stats.top.finish()
    stats.reservoir.finish()
    return stats, indexed


def _encode_chunk(sae: Sae, store: ActivationStore, layer: int, shard, index: dict[str, list], start: int, stop: int,
                  config: IndexConfig, stats: FeatureStats, connection: sqlite3.Connection | None) -> int:
    keep = np.ones(stop - start, dtype=bool)
    if not config.include_special:
        keep &= ~np.asarray(index["special"][start:stop], dtype=bool)
    if not config.include_massive:
        keep &= ~np.asarray(index["massive"][start:stop], dtype=bool)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        return 0
    device = sae.device
    x = store.read_rows(layer, shard, slice(start, stop)).float()[torch.from_numpy(rows)].to(device)
    codes = sae.encode(x, batch_dependent=False)
    active = codes.values > 0
    features, values = codes.features[active].cpu(), codes.values[active].cpu()  # the statistics live on the CPU
    positions = torch.from_numpy(rows + start)[codes.rows[active].cpu()]  # row offsets within the shard
    sequence_ids = torch.as_tensor(index["sequence_id"])[positions]
    token_idx = torch.as_tensor(index["token_idx"], dtype=torch.long)[positions]
    segments = torch.as_tensor(index["segment"], dtype=torch.long)
    stats.segment_tokens += torch.bincount(segments[torch.from_numpy(rows + start)], minlength=len(SEGMENT_NAMES))
    stats.add(features, values, sequence_ids, token_idx, segments[positions])
    if config.store_all:
        connection.executemany(
            "INSERT INTO activations VALUES (?, ?, ?, ?)",
            zip(features.tolist(), sequence_ids.tolist(), token_idx.tolist(), values.tolist(), strict=True),
        )
    return len(rows)


def _insert_tokens(connection: sqlite3.Connection, index: dict[str, list]) -> None:
    connection.executemany(
        "INSERT INTO token_ids VALUES (?, ?, ?, ?)",
        zip(index["sequence_id"], index["token_idx"], index["token_id"], index["segment"], strict=True),
    )


def _insert_vocab(connection: sqlite3.Connection, tokenizer: Any, vocabulary: set[int]) -> None:
    ids = sorted(vocabulary)
    connection.executemany("INSERT INTO vocab VALUES (?, ?)", ((t, tokenizer.decode([t])) for t in ids))
    connection.executemany("INSERT INTO segments VALUES (?, ?)", enumerate(SEGMENT_NAMES))


def _insert_sequences(connection: sqlite3.Connection, traces_dir: Path) -> None:
    columns = ["sequence_id", "prompt_id", "source", "prompt", "reference_answer", "answer", "correct", "n_tokens",
               "prefix_text"]
    table = TraceStore(traces_dir).read(columns).to_pydict()
    connection.executemany(f"INSERT INTO sequences VALUES ({', '.join('?' * len(columns))})",
                           zip(*(table[column] for column in columns), strict=True))


def _insert_features(connection: sqlite3.Connection, sae: Sae, stats: FeatureStats, indexed: int,
                     unembedding: torch.Tensor | None, tokenizer: Any, n_logits: int) -> None:
    d_sae = sae.config.d_sae
    stats.top.finish()  # max_activation reads the state directly
    segment_tokens = stats.segment_tokens.clamp_min(1).double()
    rates = stats.per_segment.double() / segment_tokens
    top_logits, bottom_logits = [None] * d_sae, [None] * d_sae
    if unembedding is not None:
        decoded: dict[int, str] = {}
        for first in range(0, d_sae, 512):
            chunk = sae.W_dec[first : first + 512].detach().to(unembedding.device, unembedding.dtype)
            logits = (chunk @ unembedding.T).float().cpu()  # (chunk, vocab)
            for lens, largest in ((top_logits, True), (bottom_logits, False)):
                best = logits.topk(n_logits, dim=-1, largest=largest)
                for offset, (values, ids) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True)):
                    named = [[decoded.get(t) or decoded.setdefault(t, tokenizer.decode([t])), round(v, 3)]
                             for v, t in zip(values, ids, strict=True)]
                    lens[first + offset] = json.dumps(named, separators=(",", ":"))
    firing = stats.firing.tolist()
    rows = (
        (f, firing[f], firing[f] / max(indexed, 1), float(stats.top.scores[f, 0]) if firing[f] else 0.0,
         stats.total[f].item() / firing[f] if firing[f] else 0.0, *rates[f].tolist(), top_logits[f], bottom_logits[f])
        for f in range(d_sae)
    )
    connection.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    insert_histograms(connection, stats)


def insert_histograms(connection: sqlite3.Connection, stats: FeatureStats) -> None:
    """Each firing feature's histogram over HISTOGRAM_EDGES, trimmed to the bins it uses."""
    histograms = []
    for f in np.flatnonzero(stats.firing.numpy()):
        counts = stats.histogram[f].numpy()
        used = np.flatnonzero(counts)
        lo, hi = used[0], used[-1] + 1
        edges = np.append(HISTOGRAM_EDGES, np.inf)[lo : hi + 1]  # bin i holds values in (edges[i-1], edges[i]]
        histograms.append((int(f), json.dumps([float(e) for e in edges]), json.dumps(counts[lo:hi].tolist())))
    connection.executemany("INSERT INTO histograms VALUES (?, ?, ?)", histograms)


def insert_examples(connection: sqlite3.Connection, stats: FeatureStats, config: IndexConfig) -> None:
    """Each feature's top N, plus `quantile_samples` of its uniformly sampled activations spread from
    the lowest to the highest (so a reader sees weak as well as strong examples)."""
    top, reservoir = stats.top, stats.reservoir
    top.finish()
    reservoir.finish()
    filled = top.sequence_ids >= 0
    features = torch.nonzero(filled)[:, 0]
    parts = [torch.stack([features, top.sequence_ids[filled], top.token_idx[filled]], dim=1)]
    values = [top.values[filled]]
    if config.quantile_samples:
        # Sort each feature's sample by activation (empty slots last), then take evenly spaced ranks.
        counts = (reservoir.sequence_ids >= 0).sum(dim=1)  # (d_sae,)
        keys = torch.where(reservoir.sequence_ids >= 0, reservoir.values, torch.tensor(float("inf")))
        order = keys.argsort(dim=1)
        steps = torch.linspace(0, 1, config.quantile_samples)
        ranks = (steps[None, :] * (counts[:, None] - 1).clamp_min(0)).round().long()  # (d_sae, q)
        picked = order.gather(1, ranks)
        used = counts[:, None].expand_as(ranks) > 0
        rows = torch.arange(len(counts))[:, None].expand_as(ranks)[used]
        slots = picked[used]
        parts.append(torch.stack([rows, reservoir.sequence_ids[rows, slots], reservoir.token_idx[rows, slots]], dim=1))
        values.append(reservoir.values[rows, slots])
    keys = torch.cat(parts).numpy()
    strengths = torch.cat(values).numpy()
    unique, first = np.unique(keys, axis=0, return_index=True)  # sorted by (feature, sequence, token): insert order
    connection.executemany("INSERT INTO activations VALUES (?, ?, ?, ?)",
                           zip(*unique.T.tolist(), strengths[first].tolist(), strict=True))


def _insert_meta(connection: sqlite3.Connection, sae_dir: Path, sae: Sae, layer: int, manifest: ActivationManifest,
                 config: IndexConfig, tokens: int, indexed: int) -> None:
    weights_hash = _sha256(Path(sae_dir) / WEIGHTS_FILE)
    meta = {
        "format_version": DB_FORMAT_VERSION,
        "model": manifest.model,
        "model_fingerprint": manifest.model_fingerprint,
        "layer": layer,  # the layer indexed: the SAE's own, or the one given for an SAE that names none
        "hook_name": f"layers.{layer}.resid_post",
        "chat_format": manifest.chat_format,
        "sae_arch": sae.config.arch,
        "d_sae": sae.config.d_sae,
        "k": sae.config.k,
        "sae_sha256": weights_hash,
        "tokens": tokens,
        "indexed_tokens": indexed,
        "arguments": result_settings(config),
    }
    connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
