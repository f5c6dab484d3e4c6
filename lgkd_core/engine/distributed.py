"""torch.distributed setup for torchrun (NCCL on GPUs, gloo on CPU) and a clean shutdown."""

from __future__ import annotations

import datetime as dt
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group torchrun describes in the environment (or run alone).

    ``device``: ``auto`` (CUDA when available), ``cuda`` or ``cpu``. A group is created whenever
    ``WORLD_SIZE`` > 1; ``timeout_s`` bounds collective waits so a dead rank fails the job instead
    of hanging it.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs = {"device_id": torch_device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank, local_rank, world_size, torch_device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly.

    Releasing every reference to models and optimizers and collecting garbage *before*
    ``destroy_process_group`` avoids gloo's intermittent 'terminate called without an active
    exception' at exit; callers drop their references before calling this.
    """
    gc.collect()
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
