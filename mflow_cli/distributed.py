"""Data-parallel training under ``torchrun``: DistributedDataParallel, gloo on CPU and nccl on GPU.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`from_env` joins the process group when ``WORLD_SIZE > 1`` and returns ``None`` otherwise, so a
plain ``mflow train`` never touches this module.

Every optimizer step uses the same global batch as a single process (``train.batch_size`` rows, same
shuffle); rank r computes the loss on rows r, r+W, r+2W, ... of it and DDP averages the gradients. So
each rank holds a disjoint 1/W shard of every epoch, all ranks hold identical parameters, and the
recipe means the same thing on one process or many. Decisions that change control flow (skip a
non-finite step, stop on a signal) are agreed on by all ranks, so no rank waits in a collective alone.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError


class _PhaseLoss(nn.Module):
    """``forward(x, phase) = model.loss(x, phase)``: DDP syncs gradients only of what runs in forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, phase: str):
        return self.model.loss(x, phase)


@dataclass
class Distributed:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process (``cuda:LOCAL_RANK``); CPU stays CPU."""
        if device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def wrap(self, model: nn.Module, device: torch.device) -> Callable:
        """A DDP module computing ``model.loss``; building it broadcasts rank 0's parameters.

        ``find_unused_parameters``: a phase may leave some parameters out of its loss (M-flow's manifold
        phase never touches the inner flow), and other model families may too.
        """
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(_PhaseLoss(model), device_ids=ids, find_unused_parameters=True)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (the whole batch if it has fewer rows than ranks)."""
        return batch[self.rank :: self.world_size] if len(batch) >= self.world_size else batch

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        t = torch.tensor([float(flag)], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Average of per-step logs over all ranks' steps (for the epoch record)."""
        keys = sorted(sums)
        t = torch.tensor([float(count)] + [sums[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        n = max(t[0].item(), 1.0)
        return {k: t[i + 1].item() / n for i, k in enumerate(keys)}

    def reseed(self, seed: int, step: int) -> None:
        """Give ranks > 0 their own noise stream (dequantization, noise inflation) after a resume."""
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + self.rank * 10_007 + step)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Wait for every rank (rank 0 has written the run), then leave the process group."""
        dist.barrier()
        dist.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_env(device: torch.device) -> Distributed | None:
    """Join the torchrun process group (once per process); ``None`` when not under torchrun.

    nccl when training on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE > 1 but RANK is not set: launch multi-process training with torchrun") from None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank)


def rank() -> int:
    """This process's rank under torchrun (0 otherwise), without joining the group."""
    return int(os.environ.get("RANK", "0"))
