"""Data-parallel SAE training: the ranks of a `torch.distributed` group, as the trainer needs them.

Every rank reads the same global batch from the (deterministic) reader and keeps its own contiguous
slice; gradients, losses and counters are summed across ranks, and BatchTopK's cut is taken over the
global batch (`sae.batch_topk_entries` with `ranks`), so N ranks follow the single-process run up to
float rounding. One process is `Ranks()` (rank 0 of 1): every reduction is then the identity and no
collective is called.

`torchrun` (or any launcher that sets `WORLD_SIZE`, `RANK`, `LOCAL_RANK` and the rendezvous address)
starts the ranks; `joined_from_environment` joins its group: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from thinklens.errors import ThinklensError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training ranks (rank 0 of 1: a single process)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Rank 0 writes the log, the checkpoints and the SAE; the others only compute."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's rows of a global batch of `n` (n is a multiple of the world size)."""
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (returned for chaining)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def min_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`'s element-wise minimum over the ranks, in place (reduced in float32: gloo has no bf16)."""
        if self.distributed:
            wide = tensor.float()
            dist.all_reduce(wide, op=dist.ReduceOp.MIN)
            tensor.copy_(wide)
        return tensor

    def mean_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Every parameter's gradient averaged over the ranks (in one flat message, as DDP's buckets do)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """The 1-D `values` of every rank, concatenated in rank order (ranks may hold different lengths)."""
        if not self.distributed:
            return values
        dtype, values = values.dtype, values.float()  # gloo has no bf16; float32 holds bf16 exactly
        length = torch.tensor([len(values)], dtype=torch.long, device=values.device)
        lengths = [torch.zeros_like(length) for _ in range(self.world)]
        dist.all_gather(lengths, length)
        longest = int(max(lengths).item())
        padded = values.new_zeros(longest)
        padded[:len(values)] = values
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:int(n.item())] for part, n in zip(parts, lengths, strict=True)]).to(dtype)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` on every rank, in place."""
        if self.distributed:
            dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a multi-process launch (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def joined_from_environment(device: torch.device) -> Iterator[Ranks]:
    """The ranks torchrun started, with the process group joined for the block (and left after it);
    `Ranks()` when this process was not launched as one of several."""
    if not launched_by_torchrun():
        yield Ranks()
        return
    if dist.is_initialized():  # a caller that set the group up itself keeps it
        yield Ranks(dist.get_rank(), dist.get_world_size())
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise ThinklensError(f"cannot join the torchrun group ({backend}): {exc}; launch with `thinklens train "
                             "--nproc N` or `torchrun --nproc-per-node N -m thinklens train RUN`") from None
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """A CUDA rank trains on its own GPU (LOCAL_RANK) unless a device index was asked."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
