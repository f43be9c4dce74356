"""Small convolution helpers shared by the flow, context and refine networks (RIFE's ``conv``/``deconv``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_prelu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.PReLU(out_channels))


def deconv_prelu(in_channels: int, out_channels: int):
    """Transposed 4x4 stride-2 convolution (doubles H and W) and PReLU."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1), nn.PReLU(out_channels))


def resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (``align_corners=False``); identity for factor 1."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def timestep_map(timestep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``timestep (B,)`` -> ``(B, 1, H, W)`` constant maps of ``like``'s size, dtype and device."""
    b, _, h, w = like.shape
    return timestep.to(like.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
