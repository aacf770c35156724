"""Ray for the stages that run on it: the session, and actors sized to the cluster."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from thinklens.errors import ThinklensError
from thinklens.placement import RayPlacement


@contextmanager
def ray_session(placement: RayPlacement):
    """Ray, joined at `ray_address` or started locally with `workers` CPUs (and shut down after)."""
    try:
        import ray
    except ImportError:
        raise ThinklensError("--workers and --ray-address need Ray: pip install 'thinklens[ray]'") from None
    started = False
    if not ray.is_initialized():
        if placement.ray_address is not None:
            ray.init(address=placement.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=placement.workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def actor_class(ray: Any, cls: type, count: int) -> tuple[Any, int]:
    """`cls` as a Ray actor class sized for `count` actors (a GPU each when the cluster has that many; the
    CPUs split between them), and the torch threads each should use."""
    cpus = ray.available_resources().get("CPU", count)
    threads = max(1, int(cpus // count))
    gpus = 1 if ray.available_resources().get("GPU", 0) >= count else 0
    return ray.remote(num_cpus=min(threads, cpus / count), num_gpus=gpus)(cls), threads


def worker_failure(exc: Exception, stage: str, retry: str) -> ThinklensError:
    """A Ray actor's failure as one line: its own ThinklensError when it raised one while starting (a
    model that does not load names its fix there), else that it died and how to go on (`retry`)."""
    text, marker = str(exc), "ThinklensError: "
    if getattr(exc, "actor_init_failed", False) and marker in text:
        return ThinklensError(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return ThinklensError(f"a {stage} worker died ({type(exc).__name__}): {retry}")


def result_of(ray: Any, future: Any, stage: str, retry: str) -> Any:
    """`ray.get(future)`, with a worker's failure as one line (`worker_failure`)."""
    try:
        return ray.get(future)
    except ray.exceptions.RayActorError as exc:
        raise worker_failure(exc, stage, retry) from None
