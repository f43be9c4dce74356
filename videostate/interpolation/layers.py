"""Small convolution helpers shared by the flow, context and refine networks (RIFE's ``conv``/``deconv``).

cuDNN's half-precision NHWC (tensor-core) convolutions take channel counts that are multiples of
:data:`CHANNEL_ALIGNMENT`; any other count it pads with a copy of the map (and of the weight) at every call.
:func:`concat_channels_last` writes a layer's inputs into one channels-last map padded with zero channels, and
:func:`aligned_conv` / :func:`aligned_prelu` run a layer on such maps with its weights padded with zeros, so
the extra channels stay exactly zero and the real ones are unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

CHANNEL_ALIGNMENT = 8  # channels of a half-precision NHWC convolution's input that cuDNN takes unpadded


def aligned(channels: int) -> int:
    """``channels`` rounded up to a multiple of :data:`CHANNEL_ALIGNMENT`."""
    return -(-channels // CHANNEL_ALIGNMENT) * CHANNEL_ALIGNMENT


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution computes ``x`` in: the autocast dtype under autocast, else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def concat_channels_last(
    pieces: list[torch.Tensor], channels: int | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``torch.cat(pieces, dim=1)`` of ``(B, C_i, H, W)`` maps as one channels-last map, dtype promoted as
    ``torch.cat`` promotes (or ``dtype``); with ``channels`` above the sum, the extra channels are zero."""
    total = sum(p.shape[1] for p in pieces)
    channels = total if channels is None else channels
    if channels < total:
        raise ValueError(f"channels must be at least the pieces' {total}; got {channels}")
    b, _, h, w = pieces[0].shape
    dtype = dtype or functools.reduce(torch.promote_types, (p.dtype for p in pieces))
    out = torch.empty(b, channels, h, w, device=pieces[0].device, dtype=dtype, memory_format=torch.channels_last)
    start = 0
    for piece in pieces:
        out[:, start : start + piece.shape[1]] = piece
        start += piece.shape[1]
    if channels > total:
        out[:, total:] = 0
    return out


def aligned_conv(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, pad_output: bool = True) -> torch.Tensor:
    """``conv`` on ``x (B, C_in + zeros, H, W)``: its input channels followed by zero channels. Returns the output
    with zero channels appended up to :func:`aligned` ``(C_out)`` (weight and bias padded with zeros), or
    without them if not ``pad_output``."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError(f"aligned_conv takes ungrouped, undilated, zero-padded convolutions; got {conv}")
    pad_in = x.shape[1] - conv.in_channels
    pad_out = aligned(conv.out_channels) - conv.out_channels if pad_output else 0
    if pad_in < 0:
        raise ValueError(f"x must have at least conv.in_channels={conv.in_channels} channels; got {x.shape[1]}")
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    bias = F.pad(bias, (0, pad_out))
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
        weight = F.pad(conv.weight, (0, 0, 0, 0, 0, pad_out, 0, pad_in)).contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding)
    weight = F.pad(conv.weight, (0, 0, 0, 0, 0, pad_in, 0, pad_out)).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding)


def aligned_prelu(prelu: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    """``prelu`` on ``x`` whose channels beyond ``prelu``'s are zeros (which it leaves zero)."""
    if prelu.num_parameters == 1:
        return prelu(x)
    return F.prelu(x, F.pad(prelu.weight, (0, x.shape[1] - prelu.num_parameters)))


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
