"""Process-group setup under ``torchrun`` and the reductions the training loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dra_dali.train.config import TrainError

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "all_reduce_max", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits.

    Attributes:
        rank: global rank (0 without torchrun).
        world: number of processes.
        local_rank: rank on this node (the CUDA device index).
        device: the torch device this process computes on.
        initialized_here: whether :func:`init_distributed` created the process group (and so
            the caller should destroy it).
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on CUDA,
    gloo on CPU; each process uses CUDA device ``LOCAL_RANK``. Without ``torchrun`` returns a
    single-process :class:`DistInfo`.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Returns:
        This process's :class:`DistInfo`.

    Raises:
        RuntimeError: ``device="cuda"`` without a CUDA device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainError("device: cuda was requested but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev,
                    initialized_here=created)


def _reduce(values: list[float], op: dist.ReduceOp, device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all processes (identity without a process group)."""
    return _reduce(values, dist.ReduceOp.SUM, device)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over all processes (identity without a process group)."""
    return _reduce(values, dist.ReduceOp.MAX, device)


def barrier() -> None:
    """Wait for all processes (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
