"""Data-parallel training under torchrun: which process this is, and the few collective operations training needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them training runs as a single process and every
function here is a cheap no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T, K, V = TypeVar("T"), TypeVar("K"), TypeVar("V")


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and run files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list[T]) -> list[T]:
        """This process's share of a global batch, or of any list every process holds alike."""
        return items[self.rank::self.world_size]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average gradients of parameters outside the DDP-wrapped module (a fine-tuned encoder)."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world_size

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over all processes."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def merge(self, part: dict[K, V]) -> dict[K, V]:
        """The union of every process's dict (each holding its share of the keys), in every process."""
        if not self.distributed:
            return part
        parts: list[dict[K, V]] = [{}] * self.world_size
        dist.all_gather_object(parts, part)
        merged = {key: value for share in parts for key, value in share.items()}
        # in key order, as one process would hold them: scores averaged over the dict then add up alike
        return {key: merged[key] for key in sorted(merged)}


def collective_device() -> torch.device:
    """Where tensors for the process group's collectives must be: NCCL only takes CUDA tensors (this process's
    GPU), gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def start_processes(device_request: str | None) -> tuple[Processes, torch.device | None]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA) and pick this process's
    device: CUDA device LOCAL_RANK when CUDA is used. Returns (processes, device or None for the default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_request is None or device_request.startswith("cuda"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return Processes(rank, world_size, local_rank), device


def stop_processes() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
