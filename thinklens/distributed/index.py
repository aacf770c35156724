"""Index on Ray: the map step (a shard encoded into its partial per-feature state) on N actors, one SAE
each; the reduce (merging the partial states in shard order, then the database) stays in the driver, so
the database is the one a single process writes, whatever the number of workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thinklens.activations.store import ActivationStore, ShardInfo


class IndexWorker:
    """One Ray actor: the SAE, and the shards it is given, each returned as its partial state."""

    def __init__(self, sae_dir: str, store_dir: str, layer: int, config: Any, threads: int) -> None:
        import torch

        from thinklens.models.loader import resolve_device
        from thinklens.sae.formats import load_sae

        torch.set_num_threads(threads)
        self.sae = load_sae(Path(sae_dir)).to(resolve_device(config.device))
        self.store, self.layer, self.config = ActivationStore(Path(store_dir)), layer, config

    def run(self, shard: ShardInfo):
        from thinklens.features.build import shard_state

        return shard_state(self.sae, self.store, self.layer, shard, self.config)


def build_index(config: Any, sae_dir: Path, activations_dir: Path, traces_dir: Path, db_path: Path,
                show_progress: bool = True):
    """`features.build.build_index`, with the shards encoded on Ray when `config.workers` > 1 or an address
    is given (the same database, byte for byte)."""
    from thinklens.features import build

    return build.build_index(config, sae_dir, activations_dir, traces_dir, db_path, show_progress,
                             distributed_states=shard_states_on_ray)


def shard_states_on_ray(config: Any, sae_dir: Path, store: ActivationStore, layer: int,
                        shards: list[ShardInfo]) -> Iterator[tuple[ShardInfo, Any]]:
    """(shard, (partial state, tokens indexed)) for `shards` in order, computed by `config.workers` actors."""
    from thinklens.distributed.ray import actor_class, ray_session, result_of

    with ray_session(config) as ray:
        count = max(1, min(config.workers, len(shards)))
        actor, threads = actor_class(ray, IndexWorker, count)
        workers = [actor.remote(str(sae_dir), str(store.directory), layer, config, threads) for _ in range(count)]
        per = -(-len(shards) // count) if shards else 0
        pending = [workers[i // per].run.remote(shard) for i, shard in enumerate(shards)] if per else []
        for shard, future in zip(shards, pending, strict=True):  # in order: the merge must see shard 0 first
            yield shard, result_of(ray, future, "index", "run index again")
