"""The process group of a ``torchrun`` launch and the collectives the trainer uses outside DDP."""
from __future__ import annotations

import os
from typing import Any, Iterable, List, Tuple

import torch
import torch.distributed as dist


def init_distributed() -> Tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on GPU); returns
    ``(rank, world_size)``, ``(0, 1)`` outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> None:
    if world()[1] > 1:
        dist.all_reduce(tensor)


def all_reduce_max(tensor: torch.Tensor) -> None:
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """DDP-style gradient averaging for modules that are not wrapped (the discriminators)."""
    size = world()[1]
    if size > 1:
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= size


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values."""
    if world()[1] > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, 0)


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable, tensors on the CPU), in rank order, on every rank."""
    size = world()[1]
    if size == 1:
        return [obj]
    gathered: List[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
