"""Channel attention used to fuse the LGS branches: ECA (default) and a squeeze-excitation CAB.

``ECAB`` (Wang et al., ECA-Net): global average pool, a 1-D convolution across channels with no bias
and kernel ``k`` chosen from the channel count (``t = int(|(log2 C + b) / gamma|)``, ``k = t`` if odd
else ``t + 1``; gamma 2, b 1), sigmoid, rescale. ``ChannelAttention``: pool, 1x1 conv down by
``reduction``, ReLU, 1x1 conv up, sigmoid, rescale (the ``--no-use_ecab`` option).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECAB(nn.Module):
    """Efficient channel attention: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        self.kernel_size = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = rearrange(x.mean(dim=(2, 3)), "b c -> b 1 c")
        weights = torch.sigmoid(self.conv(pooled))
        return x * rearrange(weights, "b 1 c -> b c 1 1")


class ChannelAttention(nn.Module):
    """Squeeze-excitation channel attention: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.up(torch.relu(self.down(pooled))))
