"""ContextNet: per-frame features at three scales, backward-warped by that frame's flow (RIFE/VFIMamba)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_prelu, resize
from .warp import warp


class ContextNet(nn.Module):
    """``img (B, 3, H, W)``, ``flow (B, 2, H, W)`` -> ``[(B, c, H, W), (B, 2c, H/2, W/2), (B, 4c, H/4, W/4)]``,
    each warped by the flow resized (and rescaled) to its resolution."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.channels = (c, 2 * c, 4 * c)
        self.conv0 = nn.Sequential(conv_prelu(3, c), conv_prelu(c, c))
        self.conv1 = nn.Sequential(conv_prelu(c, 2 * c, 3, 2, 1), conv_prelu(2 * c, 2 * c))
        self.conv2 = nn.Sequential(conv_prelu(2 * c, 4 * c, 3, 2, 1), conv_prelu(4 * c, 4 * c))

    def forward(self, img: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        feat0 = self.conv0(img)
        feat1 = self.conv1(feat0)
        feat2 = self.conv2(feat1)
        return [
            warp(feat, resize(flow, factor) * factor) for feat, factor in ((feat0, 1.0), (feat1, 0.5), (feat2, 0.25))
        ]
