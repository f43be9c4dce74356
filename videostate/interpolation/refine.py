"""RefineNet: a U-Net decoder from the backbone's three scales (plus warped context in phase 2) to a
residual image and blend-mask logits.

Each step's inputs are written straight into one channels-last map (:func:`~.layers.concat_channels_last`), the
layout its convolution runs in: ``torch.cat`` of maps in mixed layouts would write a channels-first map
and the convolution copy it to channels-last again (at 1080p the head's 161-channel input is 0.7 GB in
bfloat16). The head's input is padded with zero channels to a multiple of 8 (and its first convolution's
weight with zeros), so cuDNN's tensor-core convolution takes it as it is instead of padding it again.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import aligned, aligned_conv, concat_channels_last, conv_prelu, deconv_prelu, timestep_map

__all__ = ["RefineNet", "concat_channels_last"]


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
        x = concat_channels_last([x, *level(0), timestep_map(timestep, feats[0])], aligned(conv.in_channels))
        out = last(prelu(aligned_conv(conv, x, pad_output=False)))
        return 2 * torch.sigmoid(out[:, :3]) - 1, out[:, 3:4]
