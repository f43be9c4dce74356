"""One training loop for every system: AMP, gradient accumulation and clipping, DDP, checkpoints.

The loop knows nothing about the task. A task supplies ``train_step(model, batch, backward)``: it
runs the model on a batch, calls ``backward(loss)`` once (or once per chunk, for truncated BPTT
with :func:`~videostate.training.bptt.truncated_bptt`) and returns what to log: 0-d tensors or floats
(averaged over the accumulated micro-batches and the processes) and image batches ``(N, 3, H, W)``
(the last micro-batch's, shown in TensorBoard).

One optimizer step consumes ``grad_accum`` micro-batches of ``batch_size`` samples on each of the
``world_size`` processes; ``backward`` divides each loss by ``grad_accum`` and DDP averages over the
processes, so the gradient is the mean over the global batch. DDP synchronises gradients only on
the last micro-batch (``no_sync`` before it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import all_reduce_mean, init_distributed, seed_everything
from .logging import TrainLogger
from .optim import OptimConfig, build_optimizer, build_scheduler, param_groups

TrainStep = Callable[[nn.Module, Any, Callable[[torch.Tensor], None]], dict]


@dataclasses.dataclass
class TrainerConfig:
    """The loop's settings.

    Attributes:
        max_steps: optimizer steps to train for.
        batch_size: samples per process per micro-batch.
        grad_accum: micro-batches per optimizer step.
        clip_grad_norm: max global gradient norm (``None``: no clipping).
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"`` (CUDA,
            with a gradient scaler) or ``"fp32"``.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` if available, else CPU) or a torch device string.
        seed: base seed; process ``r`` uses ``seed + r``; the data order uses ``seed`` and the epoch.
        num_workers: DataLoader worker processes.
        output_dir: folder for ``checkpoints/`` and TensorBoard ``tb/`` (``None``: neither).
        log_every: optimizer steps between logged scalars.
        save_every: optimizer steps between checkpoints (``None``: only at the end).
        keep_last: checkpoints kept (``None``: all).
        resume: continue from the newest checkpoint in ``output_dir`` when there is one.
        progress: show a tqdm progress bar (main process only).
    """

    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    output_dir: str | None = None
    log_every: int = 10
    save_every: int | None = None
    keep_last: int | None = 3
    resume: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"save_every must be >= 1 or None; got {self.save_every}")


class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` that can start an epoch part-way (``start_index`` samples in),
    so a resumed run sees exactly the samples the uninterrupted run would have."""

    start_index = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def move_to(batch, device: torch.device):
    """Tensors anywhere in nested tuples / lists / dicts moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` on ``dataset`` with ``train_step`` (see the module docstring).

    Args:
        model: the model (moved to the device, wrapped in DDP under ``torchrun``).
        train_step: ``train_step(model, batch, backward) -> logs``.
        dataset: a map-style dataset; batches are drawn by a per-epoch shuffled sampler shared out
            across processes. A dataset with ``set_epoch(epoch)`` is told each new epoch.
        config: the loop's :class:`TrainerConfig`.
        optim: AdamW and schedule settings (used unless ``optimizer`` is given).
        collate_fn: the DataLoader's collate function.
        optimizer, scheduler: use these instead of AdamW and the ``optim`` schedule; a given
            optimizer without a scheduler still follows the ``optim`` schedule.
        groups: parameter groups for AdamW (default :func:`~videostate.training.optim.param_groups`
            with ``optim.weight_decay`` and ``optim.layer_decay``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_step: TrainStep,
        dataset: Dataset,
        config: TrainerConfig,
        optim: OptimConfig | None = None,
        *,
        collate_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler=None,
        groups: list[dict] | None = None,
    ):
        self.config, self.optim = config, optim or OptimConfig()
        self.dist, self.device = init_distributed(config.device)
        seed_everything(config.seed + self.dist.rank)
        self.precision = self._resolve_precision(config.precision)
        model = model.to(self.device)
        self.raw_model = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        if optimizer is None:
            groups = groups or param_groups(self.raw_model, self.optim.weight_decay, self.optim.layer_decay)
            optimizer = build_optimizer(self.optim, groups)
        self.optimizer = optimizer
        self.scheduler = scheduler or build_scheduler(optimizer, self.optim, config.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.train_step, self.dataset, self.collate_fn = train_step, dataset, collate_fn
        self.sampler = ResumableSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=config.seed,
            drop_last=True,
        )
        if len(self.sampler) < config.batch_size:
            raise ValueError(
                f"each of the {self.dist.world_size} process(es) gets {len(self.sampler)} samples per epoch "
                f"(dataset of {len(dataset)}), fewer than batch_size={config.batch_size}"
            )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        out = Path(config.output_dir) if config.output_dir else None
        self.checkpoint_dir = out / "checkpoints" if out else None
        self.log_dir = out / "tb" if out else None
        if config.resume and self.checkpoint_dir is not None:
            latest = latest_checkpoint(self.checkpoint_dir)
            if latest is not None:
                self.resume_from(latest)

    def _resolve_precision(self, precision: str) -> str:
        if precision == "auto":
            return "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision 'fp16' needs a CUDA device; this process uses {self.device}")
        return precision

    def autocast(self):
        """The forward-pass autocast context of this run's precision (disabled for fp32)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # -- checkpoints ---------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "model": self.raw_model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "data": {"epoch": self.epoch, "batch": self.batch_in_epoch},
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main process; the others wait for it)."""
        if self.checkpoint_dir is None:
            return None
        path = None
        state = self.state()
        if self.dist.distributed:  # every rank's random streams, so each resumes exactly
            state["rng_per_rank"] = _gather_rng_states(self.dist.world_size)
        if self.dist.is_main:
            path = save_checkpoint(self.checkpoint_dir, self.step, self.config.keep_last, **state)
        if self.dist.distributed:
            torch.distributed.barrier()
        return path

    def resume_from(self, path) -> None:
        """Restore model, optimizer, scheduler, scaler, data position, RNG states and step from ``path``.

        Under DDP each rank restores its own saved random streams; resuming with a different number
        of processes reseeds rank ``r`` with ``seed + r + step`` instead.
        """
        payload = load_checkpoint(
            path,
            model=self.raw_model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            map_location=self.device,
        )
        self.step = payload["step"]
        self.epoch, self.batch_in_epoch = payload["data"]["epoch"], payload["data"]["batch"]
        per_rank = payload.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        elif self.dist.distributed:
            seed_everything(self.config.seed + self.dist.rank + self.step)

    # -- the loop ------------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start_index = self.batch_in_epoch * self.config.batch_size
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=self.config.num_workers,
            drop_last=True,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def _batches(self):
        """Micro-batches forever, across epochs, keeping the data position up to date."""
        while True:
            for batch in self._loader():
                self.batch_in_epoch += 1
                yield move_to(batch, self.device)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _backward(self, loss: torch.Tensor) -> None:
        if loss.dim() != 0:
            raise ValueError(f"backward needs a scalar loss; got shape {tuple(loss.shape)}")
        self._backward_calls += 1
        with torch.autocast(self.device.type, enabled=False):
            self.scaler.scale(loss.float() / self.config.grad_accum).backward()

    def fit(self, steps: int | None = None) -> nn.Module:
        """Train until ``max_steps``, or for at most ``steps`` more optimizer steps (a job with a time
        limit: the schedule still spans ``max_steps``, and a checkpoint is written where it stops);
        returns the (unwrapped) model."""
        cfg = self.config
        stop = cfg.max_steps if steps is None else min(cfg.max_steps, self.step + steps)
        logger = TrainLogger(self.log_dir, cfg.max_steps, self.step, enabled=self.dist.is_main, progress=cfg.progress)
        batches = self._batches()
        sums: dict[str, list] = {}  # name -> [sum, count] since the last log
        images: dict[str, torch.Tensor] = {}
        self.model.train()
        try:
            while self.step < stop:
                for micro in range(cfg.grad_accum):
                    batch = next(batches)
                    sync = not self.dist.distributed or micro == cfg.grad_accum - 1
                    self._backward_calls = 0
                    with contextlib.nullcontext() if sync else self.model.no_sync(), self.autocast():
                        logs = self.train_step(self.model, batch, self._backward)
                    if self._backward_calls == 0:
                        raise RuntimeError("train_step must call backward(loss) at least once")
                    self._collect(logs, sums, images)
                self._optimizer_step(sums)
                self.step += 1
                logger.advance()
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    scalars = {k: all_reduce_mean(total / count) for k, (total, count) in sorted(sums.items())}
                    scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
                    logger.scalars(self.step, {k: float(v) for k, v in scalars.items()})
                    for name, value in images.items():
                        logger.images(self.step, name, value)
                    sums.clear()
                    images.clear()
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < stop:
                    self.save()
            self.save()
        finally:
            logger.close()
        return self.raw_model

    def _collect(self, logs: dict, sums: dict, images: dict) -> None:
        if not isinstance(logs, dict):
            raise TypeError(f"train_step must return a dict of logs; got {type(logs).__name__}")
        for name, value in logs.items():
            key = name if "/" in name else f"train/{name}"
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                images[key] = value.detach()
            elif isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                value = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().reshape(())
                _accumulate(sums, key, value)
            else:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"log {name!r} must be a number or an image batch (N, 3, H, W); got {shape}")

    def _optimizer_step(self, sums: dict) -> None:
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.config.clip_grad_norm)
            _accumulate(sums, "train/grad_norm", norm.detach().double())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def _accumulate(sums: dict[str, list], key: str, value: torch.Tensor) -> None:
    entry = sums.setdefault(key, [0.0, 0])
    entry[0] = entry[0] + value
    entry[1] += 1


def _gather_rng_states(world_size: int) -> list[dict]:
    """Every rank's :func:`rng_state`, on every rank (sent as ``torch.save`` bytes)."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    blobs = [None] * world_size
    torch.distributed.all_gather_object(blobs, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]
