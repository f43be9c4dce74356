"""Backward warping by optical flow (``grid_sample``) with a base-grid cache that ignores the batch.

``warp(image, flow)[b, :, y, x] = image[b, :, y + flow[b, 1, y, x], x + flow[b, 0, y, x]]``, sampled
bilinearly, coordinates outside the image clamped to the border (RIFE's ``warplayer``:
``padding_mode="border"``, ``align_corners=True``, flow normalised by ``(W - 1) / 2`` and
``(H - 1) / 2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

# (device, dtype, height, width) -> base grid (1, height, width, 2) in [-1, 1]; shared by every batch size.
_BASE_GRIDS: dict[tuple, torch.Tensor] = {}


def base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Identity sampling grid ``(1, height, width, 2)`` (x, y) in ``[-1, 1]``, cached per device, dtype and size."""
    key = (torch.device(device), dtype, height, width)
    grid = _BASE_GRIDS.get(key)
    if grid is None:
        ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]
        _BASE_GRIDS[key] = grid
    return grid


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image (B, C, H, W)`` by ``flow (B, 2, H, W)`` (pixels, channel 0 = x, 1 = y).

    Returns ``(B, C, H, W)`` in ``image``'s dtype.
    """
    if image.dim() != 4:
        raise ValueError(f"image must have shape (B, C, H, W); got {tuple(image.shape)}")
    b, _, h, w = image.shape
    if flow.dim() != 4 or flow.shape[0] != b or flow.shape[1] != 2 or flow.shape[2:] != image.shape[2:]:
        raise ValueError(f"flow must have shape (B, 2, H, W)=({b}, 2, {h}, {w}); got {tuple(flow.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"warp needs images of at least 2x2 pixels; got {h}x{w}")
    scale = flow.new_tensor([2.0 / (w - 1), 2.0 / (h - 1)])
    offset = rearrange(flow, "b two h w -> b h w two") * scale
    grid = base_grid(h, w, flow.device, flow.dtype) + offset
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
