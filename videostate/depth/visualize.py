"""Colourised depth for videos and logs: a fixed colour map over a range that follows the video smoothly."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def colorize(depth: np.ndarray | torch.Tensor, low: float, high: float) -> np.ndarray:
    """``depth (H, W)`` -> uint8 RGB ``(H, W, 3)``, inferno colour map over ``[low, high]`` (larger = brighter)."""
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().float().cpu().numpy()
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W); got shape {depth.shape}")
    scaled = (depth - low) / max(high - low, 1e-12)
    gray = (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


class RunningRange:
    """The colour range of a stream: the 2nd and 98th percentiles of each frame, smoothed by an EMA so the
    colours do not flicker (``momentum`` is the weight of the past)."""

    def __init__(self, momentum: float = 0.9, percentiles: tuple[float, float] = (2.0, 98.0)):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        self.momentum = momentum
        self.percentiles = percentiles
        self.low: float | None = None
        self.high: float | None = None

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        low, high = (float(v) for v in np.percentile(depth, self.percentiles))
        if self.low is None:
            self.low, self.high = low, high
        else:
            m = self.momentum
            self.low, self.high = m * self.low + (1 - m) * low, m * self.high + (1 - m) * high
        return self.low, self.high


def depth_images(depths: list[torch.Tensor]) -> torch.Tensor:
    """Colourised maps ``(H, W)`` side by side in one shared range: ``(1, 3, H, W * len(depths))`` in [0, 1]
    (TensorBoard images, e.g. student next to teacher)."""
    stacked = torch.stack([d.detach().float().cpu() for d in depths])
    low, high = np.percentile(stacked.numpy(), (2.0, 98.0))
    row = np.concatenate([colorize(d, float(low), float(high)) for d in stacked], axis=1)
    return torch.from_numpy(row).permute(2, 0, 1)[None].float() / 255
