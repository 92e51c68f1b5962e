"""Small helpers for data-parallel training under `torchrun` (gloo on CPU, nccl on GPUs).

A run is distributed when `torchrun` set WORLD_SIZE > 1 in the environment. Rank 0 alone logs, writes
metrics and saves; gradients are averaged by `DistributedDataParallel`; counts and sums are all-reduced here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env() -> DistInfo:
    """Join the process group `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(rank, world, local, device)


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group; after a final barrier when `clean` (no rank exits while others still save)."""
    if info.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(value: float | int, info: DistInfo, dtype: torch.dtype = torch.float64) -> float:
    """Sum a number over all ranks (exact for counts; float64 for losses)."""
    if not info.enabled:
        return value
    t = torch.tensor(value, dtype=dtype, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` (JSON-like data), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """`DistributedDataParallel` around the model when distributed (frozen parts, unused layers allowed)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
