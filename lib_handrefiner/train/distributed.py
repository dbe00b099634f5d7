"""Many processes: the same `train` command under `torchrun --nproc_per_node N` (or `python -m
torch.distributed.run`) trains with DistributedDataParallel: NCCL between GPUs (one per process, by LOCAL_RANK),
gloo between CPU processes. Without torchrun's environment it is one process and nothing here is used.

Only rank 0 writes (checkpoints, metrics, validation grids, the final ControlNet) and shows progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: Optional[str]) -> Processes:
    """Joins torchrun's process group when there is one. `device`: "cuda", "cpu" or None (CUDA when available);
    under torchrun each process takes the GPU of its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this process; use --device cpu or check "
                         "CUDA_VISIBLE_DEVICES")
    if kind.startswith("cuda"):
        the_device = torch.device("cuda", local_rank) if world_size > 1 or kind == "cuda" else torch.device(kind)
        torch.cuda.set_device(the_device)
    else:
        the_device = torch.device(kind)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if the_device.type == "cuda" else "gloo")
    return Processes(rank, world_size, local_rank, the_device)


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    if processes.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


def agree(processes: Processes, ok: bool) -> bool:
    """True when `ok` on every process (so that all stop together when one cannot go on)."""
    if not processes.distributed:
        return ok
    flag = torch.tensor([0 if ok else 1], device=processes.device if processes.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0


def from_main(processes: Processes, value: int) -> int:
    """Rank 0's integer, on every process (e.g. the step rank 0 resumes from)."""
    if not processes.distributed:
        return value
    shared = torch.tensor([value], dtype=torch.int64,
                          device=processes.device if processes.device.type == "cuda" else "cpu")
    dist.broadcast(shared, src=0)
    return int(shared.item())
