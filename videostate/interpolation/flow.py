"""Phase-2 flow estimator: IFNet-style coarse-to-fine, timestep-aware bidirectional flow and blend mask.

Three :class:`IFBlock` s run at 1/4, 1/2 and full resolution (``flow_scales``). The first sees
``img0, img1`` and a constant timestep map (7 channels); the next two also see both images warped
by the current flow, the current mask logits, the timestep and the current flow (18 channels) and
add residual corrections. ``flow[:, :2]`` points from the intermediate frame at time ``t`` into
``img0`` and ``flow[:, 2:4]`` into ``img1`` (pixels; backward warping). ``flow_scale < 1`` estimates
the flow at a lower resolution (every block's downscaling divided by ``flow_scale``), for 4K input.

An IFBlock writes its inputs (resized) straight into one channels-last map in the dtype its convolutions
compute in, and runs every layer on channel counts padded with zeros to multiples of 8 (:mod:`.layers`):
the widths 7, 18, 45, 75, 90 and 150 would otherwise each be padded by cuDNN with a copy of the map at
every convolution. The padded channels stay exactly zero, so the results are those of the plain layers.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import flow_ifblock_scale
from .layers import (
    aligned,
    aligned_conv,
    aligned_prelu,
    compute_dtype,
    concat_channels_last,
    conv_prelu,
    resize,
    timestep_map,
)
from .warp import warp


class IFBlock(nn.Module):
    """Maps ``inputs`` (concatenated on channels: ``(B, in_channels, H, W)``, or with ``flow (B, 4, H, W)``
    ``in_channels - 4``) -> flow ``(B, 4, H, W)``, mask logits ``(B, 1, H, W)``, computed at ``1 / scale`` of the
    resolution (H and W multiples of ``4 * scale``)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.conv0 = nn.Sequential(
            conv_prelu(in_channels, channels // 2, 3, 2, 1), conv_prelu(channels // 2, channels, 3, 2, 1)
        )
        self.convblock = nn.Sequential(*(conv_prelu(channels, channels) for _ in range(8)))
        self.lastconv = nn.ConvTranspose2d(channels, 5, 4, 2, 1)

    def forward(self, inputs: list[torch.Tensor], flow: torch.Tensor | None, scale: int):
        pieces = [resize(x, 1.0 / scale) for x in inputs]
        if flow is not None:
            pieces.append(resize(flow, 1.0 / scale) / scale)
        x = concat_channels_last(pieces, aligned(self.in_channels), compute_dtype(pieces[0]))
        x = self._layers(self.conv0, x)
        x = self._layers(self.convblock, x) + x
        out = resize(aligned_conv(self.lastconv, x, pad_output=False), 2.0 * scale)
        return out[:, :4] * (2.0 * scale), out[:, 4:5]

    @staticmethod
    def _layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``layers`` (``conv_prelu`` pairs) on zero-padded channels (see the module docstring)."""
        for conv, prelu in layers:
            x = aligned_prelu(prelu, aligned_conv(conv, x))
        return x


class OpticalFlowEstimator(nn.Module):
    """Bidirectional flow ``(B, 4, H, W)`` and blend-mask logits ``(B, 1, H, W)`` at timestep ``t``."""

    def __init__(self, channels: tuple[int, int, int] = (240, 150, 90), scales: tuple[int, int, int] = (4, 2, 1)):
        super().__init__()
        self.scales = tuple(scales)
        self.blocks = nn.ModuleList([IFBlock(7, channels[0]), IFBlock(18, channels[1]), IFBlock(18, channels[2])])

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor, flow_scale: float = 1.0):
        """``img0, img1 (B, 3, H, W)``, ``timestep (B,)``; H and W multiples of ``4 * scale / flow_scale``."""
        t = timestep_map(timestep, img0)
        flow, mask = None, None
        for block, scale in zip(self.blocks, self.scales, strict=True):
            scale = flow_ifblock_scale(scale, flow_scale)
            if flow is None:
                flow, mask = block([img0, img1, t], None, scale)
                continue
            warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
            d_flow, d_mask = block([img0, img1, warped0, warped1, mask, t], flow, scale)
            flow, mask = flow + d_flow, mask + d_mask
        return flow, mask
