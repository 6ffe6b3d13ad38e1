"""Where ``gla extract`` runs: one process, or one rank of a torchrun job."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from glacli.base.devices import resolve_device


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run on its own)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (a collective: all ranks must call it)."""
        return self._reduce(int(flag), "min") == 1

    def any_true(self, flag: bool) -> bool:
        return self._reduce(int(flag), "max") == 1

    def _reduce(self, value: int, op: str) -> int:
        if self.world_size == 1:
            return value
        import torch.distributed as dist
        tensor = torch.tensor([value], device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
        return int(tensor.item())

    def close(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    Each rank uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is wanted and present, else the CPU
    with gloo. Without torchrun this only resolves ``device``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=resolve_device(device))
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not use_cuda:
        resolve_device(device)  # raises the one-line "no CUDA device" error
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"), backend=backend)
