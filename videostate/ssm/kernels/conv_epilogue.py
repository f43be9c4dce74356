"""What follows a convolution in the depth model's DPT decoder, in one pass over channels-last maps, for inference.

The decoder's convolutions (3x3 and 1x1, 32 to 256 channels) run on cuDNN. In PyTorch each adds its bias in a
second pass, a broadcast PyTorch cannot vectorise, and the ReLU and residual adds that follow take one pass each;
in NCHW layout cuDNN also transposes every input to NHWC and every output back. H100, bf16, 32 frames of DA2-S at
518x518: of the decoder's 13.1 ms of kernels, the bias adds took 2.7 ms, the layout changes 3.0, ReLUs 0.7 and
adds 0.35, against 2.5 ms of convolution.

Here the decoder runs channels-last, its convolutions without bias, and :func:`conv_epilogue` reads each output
once as rows of ``C`` channels: it adds the bias and up to two residual maps in float32, applies a ReLU, and writes
the result (and on request the result's ReLU, the next residual unit's input, as a second output), rounding once;
or, with ``project``, the dot of each row with a ``(C,)`` vector plus a scalar bias: the head's last 1x1
convolution to one channel, so its ``C``-channel input never reaches memory.

:func:`resize_bilinear` is the decoder's bilinear resize (``align_corners=True``) of channels-last maps, with a
bias added: PyTorch's channels-last resize took 4.8 of the 8.8 ms left of the decoder above. A program blends
``BLOCK_P`` output pixels' four source rows of ``BLOCK_C`` channels in float32, with PyTorch's source positions and
weights. The resize is linear with weights that sum to one, so a 1x1 convolution and its bias commute with it: the
decoder projects before resizing (a quarter of the pixels) and adds the projection's bias here. Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2

ROW_ELEMENTS = 4096  # rows x channels a program reads: 64 rows of 64 channels
RESIZE_BLOCK_C = 128  # the resize's channels per program


@triton.jit
def conv_epilogue_kernel(
    y_ptr, bias_ptr, res1_ptr, res2_ptr, out_ptr, relu_out_ptr, proj_ptr, proj_bias_ptr,
    rows, C,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, RESIDUALS: tl.constexpr, RELU: tl.constexpr,
    RELU_COPY: tl.constexpr, PROJECT: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (r < rows)[:, None] & c_mask[None, :]
    offsets = r[:, None] * C + c[None, :]
    value = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    value += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    if RESIDUALS >= 1:
        value += tl.load(res1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RESIDUALS >= 2:
        value += tl.load(res2_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        value = tl.maximum(value, 0.0)
    if PROJECT:
        weight = tl.load(proj_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
        projected = tl.sum(value * weight[None, :], axis=1) + tl.load(proj_bias_ptr).to(tl.float32)
        tl.store(out_ptr + r, projected.to(out_ptr.dtype.element_ty), mask=r < rows)
    else:
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)
        if RELU_COPY:
            tl.store(relu_out_ptr + offsets, tl.maximum(value, 0.0).to(relu_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def resize_bilinear_kernel(
    x_ptr, bias_ptr, out_ptr,
    pixels, C, H, W, H_out, W_out, scale_h, scale_w,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (p < pixels)[:, None] & c_mask[None, :]
    ox = p % W_out
    oy = (p // W_out) % H_out
    n = p // (W_out * H_out)
    sy = scale_h * oy.to(tl.float32)  # PyTorch's source position for align_corners=True
    sx = scale_w * ox.to(tl.float32)
    y0 = sy.to(tl.int64)
    x0 = sx.to(tl.int64)
    dy = sy - y0.to(tl.float32)
    dx = sx - x0.to(tl.float32)
    y1 = tl.where(y0 < H - 1, y0 + 1, y0)
    x1 = tl.where(x0 < W - 1, x0 + 1, x0)
    image = n * H
    cols = c[None, :]
    x00 = tl.load(x_ptr + ((image + y0) * W + x0)[:, None] * C + cols, mask=mask, other=0.0).to(tl.float32)
    x01 = tl.load(x_ptr + ((image + y0) * W + x1)[:, None] * C + cols, mask=mask, other=0.0).to(tl.float32)
    x10 = tl.load(x_ptr + ((image + y1) * W + x0)[:, None] * C + cols, mask=mask, other=0.0).to(tl.float32)
    x11 = tl.load(x_ptr + ((image + y1) * W + x1)[:, None] * C + cols, mask=mask, other=0.0).to(tl.float32)
    wx = dx[:, None]
    wy = dy[:, None]
    value = (1.0 - wy) * ((1.0 - wx) * x00 + wx * x01) + wy * ((1.0 - wx) * x10 + wx * x11)
    value += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + p[:, None] * C + cols, value.to(out_ptr.dtype.element_ty), mask=mask)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x (batch, C, H, W)`` laid out channels-last (a copy only when it is not already)."""
    return x.contiguous(memory_format=torch.channels_last)


def conv_epilogue(
    y: torch.Tensor,
    bias: torch.Tensor,
    residuals: tuple[torch.Tensor, ...] = (),
    *,
    relu: bool = False,
    relu_copy: bool = False,
    project: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """``act(y + bias + sum(residuals))`` of channels-last maps ``y (batch, C, H, W)``, ``bias (C,)`` and up to two
    ``residuals`` of ``y``'s shape, with ``act`` a ReLU when ``relu``.

    Returns the channels-last result in ``y``'s dtype; with ``relu_copy`` also its ReLU, ``(out, relu(out))``; with
    ``project = (weight (C,), bias (1,))`` instead the one-channel map ``(batch, 1, H, W)`` of ``act(...) @ weight +
    bias``.
    """
    if y.dim() != 4 or not y.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"y must be a channels-last (batch, C, H, W) map; got shape {tuple(y.shape)}, {y.stride()}")
    batch, channels, height, width = y.shape
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},); got {tuple(bias.shape)}")
    if len(residuals) > 2 or any(r.shape != y.shape for r in residuals):
        raise ValueError(f"up to two residuals of shape {tuple(y.shape)}; got {[tuple(r.shape) for r in residuals]}")
    if relu_copy and project is not None:
        raise ValueError("relu_copy writes the C-channel result, which project replaces")
    residuals = tuple(channels_last(r) for r in residuals)
    rows = batch * height * width
    block_c = next_power_of_2(channels)
    block_r = max(1, ROW_ELEMENTS // block_c)
    if project is None:
        out = torch.empty_like(y, memory_format=torch.channels_last)
        relu_out = torch.empty_like(out) if relu_copy else out
        proj_weight, proj_bias = bias, bias
    else:
        proj_weight, proj_bias = project
        if tuple(proj_weight.shape) != (channels,) or proj_bias.numel() != 1:
            raise ValueError(
                f"project must be (weight ({channels},), bias (1,)); got {tuple(proj_weight.shape)}, "
                f"{tuple(proj_bias.shape)}"
            )
        out = y.new_empty(batch, 1, height, width)
        relu_out = out
    res1, res2 = (*residuals, y, y)[:2]
    conv_epilogue_kernel[(triton.cdiv(rows, block_r),)](
        y, bias, res1, res2, out, relu_out, proj_weight, proj_bias,
        rows, channels,
        BLOCK_R=block_r, BLOCK_C=block_c, RESIDUALS=len(residuals), RELU=relu, RELU_COPY=relu_copy,
        PROJECT=project is not None,
    )  # fmt: skip
    return (out, relu_out) if relu_copy else out


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], bias: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True) + bias`` of a channels-last map ``x (batch, C,
    H, W)`` and ``bias (C,)``: the channels-last ``(batch, C, *size)`` map in ``x``'s dtype."""
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"x must be a channels-last (batch, C, H, W) map; got shape {tuple(x.shape)}, {x.stride()}")
    batch, channels, height, width = x.shape
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},); got {tuple(bias.shape)}")
    h_out, w_out = size
    if h_out < 1 or w_out < 1:
        raise ValueError(f"size must be positive; got {tuple(size)}")
    out = torch.empty(batch, channels, h_out, w_out, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    scale_h = (height - 1) / (h_out - 1) if h_out > 1 else 0.0
    scale_w = (width - 1) / (w_out - 1) if w_out > 1 else 0.0
    block_c = min(RESIZE_BLOCK_C, next_power_of_2(channels))
    block_p = ROW_ELEMENTS // block_c
    pixels = batch * h_out * w_out
    resize_bilinear_kernel[(triton.cdiv(pixels, block_p), triton.cdiv(channels, block_c))](
        x, bias, out, pixels, channels, height, width, h_out, w_out, scale_h, scale_w,
        BLOCK_P=block_p, BLOCK_C=block_c,
    )  # fmt: skip
    return out
