"""Harvest on Ray: the shards of the one-process plan, computed by N actors that each hold one model.

The plan (which sequences go into which shard) is fixed before any worker starts, so the store is the
same byte for byte whatever the number of workers. Each actor takes a contiguous run of the shards
left to do, computes them exactly as `harvest` does, writes their files straight into the run
directory (activations never travel through Ray's object store) and then a marker per shard. The
driver only counts progress and, once every shard is marked, writes the manifest that lists them all
and removes the markers. A worker that dies leaves its finished shards marked: the next harvest, with
any number of workers, redoes only the unmarked ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from thinklens.activations.harvest import (
    HarvestConfig,
    HarvestResult,
    ModelFacts,
    _check_space,
    _compute_shard,
    _manifest,
)
from thinklens.activations.store import ActivationStore, ShardInfo
from thinklens.distributed.ray import actor_class, ray_session, result_of
from thinklens.models.loader import ModelConfig
from thinklens.progress import progress_bar

EXIT_AFTER_ENV = "THINKLENS_HARVEST_WORKER_EXIT_AFTER"  # tests: a worker process dies after this many shards
RETRY = "run harvest again; the shards it finished are kept and only the rest are redone"


class ShardWorker:
    """One Ray actor: a model, and the shards it is given, written into the store with a marker each."""

    def __init__(self, model_config: ModelConfig, config: HarvestConfig, traces_dir: str, store_dir: str,
                 threads: int) -> None:
        import torch

        from thinklens.models.loader import load_model

        torch.set_num_threads(threads)
        self.loaded = load_model(model_config)
        self.config, self.traces_dir, self.store = config, Path(traces_dir), ActivationStore(Path(store_dir))
        self.facts = ModelFacts.of(self.loaded, config)
        self.special_ids = set(self.loaded.tokenizer.all_special_ids)
        self.finished = 0

    def describe(self) -> ModelFacts:
        return self.facts

    def run(self, shard: ShardInfo, dtype: str) -> int:
        arrays, index = _compute_shard(shard, self.traces_dir, self.loaded, self.facts.layers, self.config, dtype,
                                       self.special_ids)
        self.store.write_shard_files(shard.shard, arrays, index)
        self.store.mark_finished(shard)
        self.finished += 1
        if os.environ.get(EXIT_AFTER_ENV) and self.finished >= int(os.environ[EXIT_AFTER_ENV]):
            os._exit(1)  # a real death, as a killed node: no exception, no clean-up
        return shard.rows


def harvest(config: HarvestConfig, traces_dir: Path, activations_dir: Path, show_progress: bool = True
            ) -> HarvestResult:
    """`activations.harvest.harvest`, with its shards computed on Ray when `config.workers` > 1 or an
    address is given (the same store, byte for byte)."""
    from thinklens.activations import harvest as single

    return single.harvest(config, traces_dir, activations_dir, show_progress, distributed_runner=harvest_on_ray)


def harvest_on_ray(config: HarvestConfig, model_config: ModelConfig, traces_dir: Path, store: ActivationStore,
                   identity: dict[str, Any], chat_format: str, plan: list[ShardInfo], done: list[ShardInfo],
                   show_progress: bool) -> tuple[int, int]:
    """Harvest the plan's shards after `done` on Ray; returns (rows written, shards written)."""
    marked = {s.shard: s for s in store.marked_shards().values() if s in plan}
    with ray_session(config) as ray:
        workers = _start_workers(ray, config, model_config, traces_dir, store, plan, done, marked)
        facts: ModelFacts = result_of(ray, workers[0].describe.remote(), "harvest", RETRY)
        manifest = _manifest(store, identity, facts, config, chat_format, done)
        left = [s for s in plan[len(done):]
                if not (s.shard in marked and store.shard_intact(s, facts.layers, facts.d_model, manifest.dtype))]
        _check_space(store.directory, sum(s.rows for s in left), facts.d_model, len(facts.layers), manifest.dtype)
        written = _run_shards(ray, workers, left, manifest.dtype, sum(s.rows for s in plan) - sum(s.rows for s in left),
                              sum(s.rows for s in plan), show_progress)
    for shard in plan[len(done):]:  # in plan order: the manifest lists them as one process would have
        manifest.add_shard(shard)
    manifest.complete = True
    store.write_manifest(manifest)
    store.clear_markers()
    return written, len(left)


def _start_workers(ray, config: HarvestConfig, model_config: ModelConfig, traces_dir: Path, store: ActivationStore,
                   plan: list[ShardInfo], done: list[ShardInfo], marked: dict[int, ShardInfo]) -> list[Any]:
    """As many actors as there are shards to give (at most `workers`), each with its share of the CPUs."""
    left = max(1, len(plan) - len(done) - len(marked))
    count = max(1, min(config.workers, left))
    actor, threads = actor_class(ray, ShardWorker, count)
    env = {EXIT_AFTER_ENV: os.environ[EXIT_AFTER_ENV]} if EXIT_AFTER_ENV in os.environ else {}
    options = {"runtime_env": {"env_vars": env}} if env else {}
    return [actor.options(**options).remote(model_config, config, str(traces_dir), str(store.directory), threads)
            for _ in range(count)]


def _run_shards(ray, workers: list[Any], shards: list[ShardInfo], dtype: str, already: int, total: int,
                show_progress: bool) -> int:
    """Contiguous runs of `shards`, one per worker, each run in order by its actor; progress as they finish."""
    per = -(-len(shards) // len(workers)) if shards else 0
    pending = [workers[i // per].run.remote(shard, dtype) for i, shard in enumerate(shards)] if per else []
    written = 0
    with progress_bar("harvest", total=total, enabled=show_progress) as bar:
        bar.advance(already)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows = result_of(ray, ready[0], "harvest", RETRY)
            written += rows
            bar.advance(rows, tokens=rows)
    return written
