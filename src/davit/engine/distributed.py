"""Multi-process helpers for runs started by ``torchrun``: process group, ranks, gathering, sharding."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import DeviceError, InvalidArgumentError


def env_world_size() -> int:
    """The process count torchrun set (``WORLD_SIZE``), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``), 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def select_device(requested: str | None) -> torch.device:
    """This process's device: ``requested`` or cuda when available, under torchrun the local GPU."""
    try:
        device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise InvalidArgumentError(f"--device {requested}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA is not available on this machine; use --device cpu")
        if env_world_size() > 1:
            if device.index is not None:
                raise InvalidArgumentError("under torchrun pass --device cuda: each process uses "
                                           "the GPU numbered by its LOCAL_RANK")
            device = torch.device("cuda", env_local_rank())
    return device


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes: NCCL for CUDA devices, gloo otherwise.

    Does nothing for a single process. For CUDA, ``device`` must already be this process's GPU.
    """
    if env_world_size() == 1 or dist.is_initialized():
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DeviceError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start several "
                           "processes with torchrun --nproc_per_node N")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def get_rank() -> int:
    """This process's rank in the group, 0 without one."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes in the group, 1 without one."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 before the other ranks (a download, say, that the others reuse)."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``range(length)``, in order and unpadded, so that
    over all ranks each index is visited exactly once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
