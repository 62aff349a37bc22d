"""Several training processes as one: the process group, gathering features across it, and
launching it.

A run is distributed when it was started by torchrun (or by `launch`, which does the same from
Python): every process finds RANK, WORLD_SIZE and LOCAL_RANK in its environment, read once where
the process starts (the CLI, or `launched_process`) into `Settings` and passed in here. GPUs
talk over NCCL, CPUs over gloo. A plain `python` process is a group of one and never touches
torch.distributed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from retriever.errors import UsageError
from retriever.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int = 0  # 0 .. world_size - 1; rank 0 alone writes checkpoints, curves and logs
    world_size: int = 1  # processes training together
    device: torch.device = torch.device("cpu")  # where this process computes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched(settings: Settings) -> bool:
    """True inside a process started by torchrun or `launch` (`settings`: this process's)."""
    return settings.world_size > 1


def join(default_device: torch.device, settings: Settings) -> Group:
    """Join the process group torchrun described in this process's environment (`settings`);
    a group of one otherwise.

    Each process of a GPU run takes the GPU numbered by its LOCAL_RANK.
    """
    if not launched(settings):
        return Group(device=default_device)
    local_rank = settings.local_rank
    if default_device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"{settings.world_size} processes on this machine but "
                             f"{torch.cuda.device_count()} GPUs: lower --nproc")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), device)


def leave(group: Group) -> None:
    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- collectives ------------------------------------------------------------------------------


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own rows, summed over
    every process's loss (an all-reduce of the full gradient, then this process's slice).
    Works on gloo, which has no reduce-scatter."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rows: slice) -> torch.Tensor:  # type: ignore[override]
        ctx.rows = rows
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (world_size * n_max, D)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows], None


def gather(x: torch.Tensor, group: Group) -> tuple[torch.Tensor, slice]:
    """Every process's rows of `x` (n_r, D), concatenated in rank order: (sum n_r, D).

    Gradients reach this process's own rows only, returned as the second value. Processes may
    hold different numbers of rows (a batch that lost unreadable images): rows are padded to
    the largest count for the exchange and the padding dropped after.
    """
    if not group.distributed:
        return x, slice(0, len(x))
    counts = all_counts(len(x), group)
    n_max, start = max(counts), sum(counts[:group.rank])
    padded = torch.nn.functional.pad(x, (0, 0, 0, n_max - len(x)))  # (n_max, D)
    mine = slice(group.rank * n_max, (group.rank + 1) * n_max)  # this process's padded block
    everything = _GatherWithGrad.apply(padded, mine)  # (world_size * n_max, D)
    keep = torch.cat([torch.arange(r * n_max, r * n_max + c) for r, c in enumerate(counts)])
    return everything[keep.to(x.device)], slice(start, start + len(x))


def all_counts(n: int, group: Group) -> list[int]:
    """Every process's `n`, in rank order."""
    if not group.distributed:
        return [n]
    counts = [torch.zeros(1, dtype=torch.long, device=group.device)
              for _ in range(group.world_size)]
    dist.all_gather(counts, torch.tensor([n], device=group.device))
    return [int(c.item()) for c in counts]


def all_sum(values: list[float], group: Group) -> list[float]:
    """Element-wise sum of `values` over the processes (unchanged in a group of one)."""
    if not group.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=group.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(group: Group) -> None:
    if group.distributed:
        dist.barrier()


# --- launching --------------------------------------------------------------------------------


def launch(nproc: int, entrypoint: Callable[..., T], *args: Any) -> T:
    """Run `entrypoint(settings, *args)` in `nproc` fresh processes on this machine, as
    torchrun would, each with its own `settings` (its rank: `launched_process`), and return
    rank 0's result. `entrypoint` and `args` must be picklable."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # standalone: any free port
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
    )
    results = elastic_launch(config, launched_process)(entrypoint, *args)
    return results[0]


def launched_process(entrypoint: Callable[..., T], *args: Any) -> T:
    """A process `launch` started: its settings, RANK, WORLD_SIZE and LOCAL_RANK among them,
    read from the environment torch set for it alone (an edge: tests/check_layout.py EDGES),
    then `entrypoint(settings, *args)`."""
    return entrypoint(Settings.from_environ(os.environ), *args)
