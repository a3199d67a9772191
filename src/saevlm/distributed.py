"""torchrun support: which process am I, and on which device.

Under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised with NCCL on GPUs and gloo
on CPUs; ``--device auto`` / ``cuda`` then mean this process's own GPU (``cuda:LOCAL_RANK``).
Without torchrun everything is a single process (rank 0 of 1) and nothing is initialised.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str):
    """-> (Dist, torch.device)."""
    import torch

    from saevlm.device import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), resolve_device(device_spec)
    import torch.distributed as td

    local = int(os.environ.get("LOCAL_RANK", "0"))
    spec = (device_spec or "auto").lower()
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = resolve_device(spec)
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo",
                              timeout=datetime.timedelta(hours=6))
    return Dist(td.get_rank(), td.get_world_size(), local), device


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as td
        td.barrier()


def shutdown(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as td
        if td.is_initialized():
            td.destroy_process_group()
