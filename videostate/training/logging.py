"""Training output: TensorBoard scalars and images and a tqdm progress bar, on the main process only."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm


class TrainLogger:
    """Log scalars and images to TensorBoard under ``log_dir`` and show progress.

    Every method is a no-op when ``enabled`` is False (non-main ranks), so callers need no rank checks.
    ``log_dir=None`` keeps the progress bar without TensorBoard.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(log_dir)))
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not (enabled and progress), dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, float(value), step)
        self.bar.set_postfix({k.rsplit("/", 1)[-1]: f"{float(v):.4g}" for k, v in values.items()}, refresh=False)

    def images(self, step: int, name: str, images: torch.Tensor) -> None:
        """``images (N, 3, H, W)`` floats in ``[0, 1]``, shown as one grid per step."""
        if not self.enabled or self.writer is None:
            return
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, 3, H, W) or (N, 1, H, W); got {tuple(images.shape)}")
        self.writer.add_images(name, images.detach().float().clamp(0, 1).cpu(), step)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
