"""Process-group helpers for ``torchrun`` (DDP on CUDA with NCCL, on CPU with Gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddrnet.errors import UsageError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistributedContext:
    """Join the process group ``torchrun`` describes through its environment variables;
    a plain single-process run gets a context with ``world_size == 1``."""
    world_size = _environment_number("WORLD_SIZE", "1")
    if world_size <= 1:
        return DistributedContext()
    if "RANK" not in os.environ:
        raise UsageError(
            f"WORLD_SIZE={world_size} is set but RANK is not: start several processes with "
            "torchrun, which sets both (or unset WORLD_SIZE for one process)"
        )
    rank, local_rank = _environment_number("RANK", ""), _environment_number("LOCAL_RANK", "0")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def _environment_number(name: str, default: str) -> int:
    """The whole number in environment variable ``name`` (torchrun sets them), or a
    ``UsageError`` naming it."""
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r}: not a whole number (torchrun sets it)") from None


def collective_device() -> torch.device:
    """Where a tensor must live for a collective of the current process group: NCCL takes
    only CUDA tensors (a CPU tensor is an error on every multi-GPU run), Gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place) and return it."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, context: DistributedContext) -> bool:
    """True on every process when ``flag`` is true on at least one (keeps decisions such as
    "stop now" identical across processes, which would otherwise deadlock)."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def cleanup_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
