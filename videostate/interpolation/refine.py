"""RefineNet: a U-Net decoder from the backbone's three scales (plus warped context in phase 2) to a
residual image and blend-mask logits.

Each step's inputs are written straight into one channels-last map (:func:`concat_channels_last`), the
layout its convolution runs in: ``torch.cat`` of maps in mixed layouts would write a channels-first map
and the convolution copy it to channels-last again (at 1080p the head's 161-channel input is 0.7 GB in
bfloat16). The head's input is padded with zero channels to a multiple of 8 (and its first convolution's
weight with zeros), so cuDNN's tensor-core convolution takes it as it is instead of padding it again.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_prelu, deconv_prelu, timestep_map

CHANNEL_ALIGNMENT = 8  # channels of a half-precision NHWC convolution's input that cuDNN takes unpadded


def concat_channels_last(pieces: list[torch.Tensor], channels: int | None = None) -> torch.Tensor:
    """``torch.cat(pieces, dim=1)`` of ``(B, C_i, H, W)`` maps as one channels-last map, dtype promoted as
    ``torch.cat`` promotes; with ``channels`` above the sum, the extra channels are zero."""
    total = sum(p.shape[1] for p in pieces)
    channels = total if channels is None else channels
    if channels < total:
        raise ValueError(f"channels must be at least the pieces' {total}; got {channels}")
    b, _, h, w = pieces[0].shape
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in pieces))
    out = torch.empty(b, channels, h, w, device=pieces[0].device, dtype=dtype, memory_format=torch.channels_last)
    start = 0
    for piece in pieces:
        out[:, start : start + piece.shape[1]] = piece
        start += piece.shape[1]
    if channels > total:
        out[:, total:] = 0
    return out


class RefineNet(nn.Module):
    """Decode ``feats`` (``[(B, F0, H, W), (B, F1, H/2, W/2), (B, F2, H/4, W/4)]``) into
    ``residual (B, 3, H, W)`` in ``(-1, 1)`` and ``mask_logits (B, 1, H, W)``.

    Args:
        feature_channels: ``(F0, F1, F2)`` of the backbone features.
        c: decoder width.
        context_channels: ``(c0, c1, c2)`` of each frame's warped ContextNet features (phase 2), or
            ``None`` (phase 1). Both frames' context is concatenated at every scale.
    The timestep enters as a constant map at full resolution.
    """

    def __init__(
        self, feature_channels: tuple[int, int, int], c: int = 32, context_channels: tuple[int, int, int] | None = None
    ):
        super().__init__()
        ctx = tuple(2 * ch for ch in context_channels) if context_channels else (0, 0, 0)
        self.uses_context = context_channels is not None
        self.up0 = deconv_prelu(feature_channels[2] + ctx[2], 2 * c)
        self.up1 = deconv_prelu(2 * c + feature_channels[1] + ctx[1], c)
        self.head = nn.Sequential(conv_prelu(c + feature_channels[0] + ctx[0] + 1, c), nn.Conv2d(c, 4, 3, 1, 1))

    def forward(
        self,
        feats: list[torch.Tensor],
        timestep: torch.Tensor,
        ctx0: list[torch.Tensor] | None = None,
        ctx1: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_context != (ctx0 is not None and ctx1 is not None):
            raise ValueError(f"this RefineNet {'needs' if self.uses_context else 'takes no'} context features")

        def level(i: int) -> list[torch.Tensor]:
            return [feats[i], ctx0[i], ctx1[i]] if self.uses_context else [feats[i]]

        x = self.up0(concat_channels_last(level(2)))
        x = self.up1(concat_channels_last([x, *level(1)]))
        (conv, prelu), last = self.head
        channels = -(-conv.in_channels // CHANNEL_ALIGNMENT) * CHANNEL_ALIGNMENT
        x = concat_channels_last([x, *level(0), timestep_map(timestep, feats[0])], channels)
        weight = F.pad(conv.weight, (0, 0, 0, 0, 0, channels - conv.in_channels))  # zeros for the zero channels
        out = last(prelu(F.conv2d(x, weight, conv.bias, conv.stride, conv.padding)))
        return 2 * torch.sigmoid(out[:, :3]) - 1, out[:, 3:4]
