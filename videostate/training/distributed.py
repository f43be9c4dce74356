"""Distributed training on PyTorch's own engine: ``torchrun`` + DDP.

``torchrun --nproc_per_node=N ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo
on CPU). Without them it returns a single-process :class:`DistInfo` and nothing else changes.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` process group when its environment is set; pick this process's device.

    ``device="auto"`` is ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``"cuda"`` without an
    index is ``cuda:LOCAL_RANK``.
    """
    env = os.environ
    info = DistInfo()
    if "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={env['WORLD_SIZE']} but {missing} are not set; launch with torchrun")
        info = DistInfo(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))
    if device == "auto":
        device = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return info, dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Give each rank ``seed + rank`` so augmentation
    differs across ranks; DDP broadcasts rank 0's initial weights, so models still start equal."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global stream user code draws from
    torch.manual_seed(seed)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over the processes (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()
