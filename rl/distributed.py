"""Several processes through ``torch.distributed``, as ``torchrun`` launches them (NCCL on GPUs, gloo on CPUs).

``torchrun --nproc_per_node=N -m rl.train agent=kimi ...`` sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous)
for every process; :func:`init` joins the group once. A plain ``python -m rl.train`` is a group of one, and every
helper here is then a no-op, so the same code serves both. This module adds no distribution layer of its own:
gradients go through DDP or FSDP2 (``torch.distributed.fsdp.fully_shard``), the rest through the collectives below.
See docs/distributed.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rl.config import ConfigError


@dataclass(frozen=True)
class Group:
    """This process's place in the group: ``rank`` of ``world`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs, samples and checkpoints."""
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place over the group (``sum`` or ``max``); returns ``tensor``."""
        if self.world > 1:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Group()


def launched() -> bool:
    """True inside a process that torchrun (or another launcher setting WORLD_SIZE > 1) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> Group:
    """Join the process group torchrun describes (once), or return the group of one. NCCL when this process
    trains on a GPU (``device`` auto or cuda and CUDA present), else gloo; each rank takes GPU ``LOCAL_RANK``."""
    if not launched():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            if local >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local} but this host has {torch.cuda.device_count()} GPU(s): "
                                  "start at most one process per GPU (torchrun --nproc_per_node)")
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return Group(rank, world, local)


def device_for(group: Group, device: str) -> str:
    """The device string this rank trains on: ``cuda:<local_rank>`` for a CUDA run of several processes."""
    if group.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{group.local_rank}"
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Group:
    """The group this process belongs to (the group of one when torch.distributed is not initialized)."""
    if not dist.is_initialized():
        return SINGLE
    rank = dist.get_rank()
    return Group(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
