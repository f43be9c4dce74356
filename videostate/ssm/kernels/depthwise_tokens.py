"""A depthwise 2D convolution of frame maps written straight into per-pixel time sequences, for inference.

The depth model's spatial pre-mix convolves each frame's ``(C, H, W)`` map and then lays the result out as one
time sequence per pixel, ``((B*H*W), N, C)``, with a position encoding per frame added: a convolution pass, an
add pass and a layout pass over maps of millions of values. Here one program convolves a tile of ``BLOCK_C``
channels x ``BLOCK_X`` pixels of one image row (the ``K x K`` shifted reads hit the cache) in ``FRAMES``
consecutive frames, adds the bias and each frame's encoding in float32, and writes the tiles in token layout,
rounding once. Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2

# Pixels of a row, and channels x pixels, per program. H100, bf16, 32 frames, 12 tilings tried on each of the depth
# model's eight maps (DA2-S and -L at 518x518): this one was the fastest on DA2-L's two largest maps (2.31 -> 0.92
# ms and 1.33 -> 0.55 ms against 32 x 64 channels); with 32 x 64 the eight maps took 5.6 ms in all, PyTorch's
# convolution and a layout pass 6.8 ms.
BLOCK_X = 32
TILE = 4096
# Maps of at most NARROW_CHANNELS channels: 16 channels and FRAMES frames per program, one warp, so that a program
# writes 8 consecutive frames of each token. H100, bf16, DA2-S's finest map (48 channels, 148x148, 32 frames): 0.49
# -> 0.24 ms; on wider maps the frame-per-program tiling above stayed faster (12 tilings on the eight maps).
NARROW_CHANNELS = 64
NARROW_BLOCK_C, FRAMES = 16, 8


@triton.jit
def _frame_tokens(n, channel_rows, token_rows, w_ptr, pe_rows, bias, c, c_mask, x, y, H, W, C, sf_n, sf_h, sf_w,
                  spe_n, K: tl.constexpr):  # fmt: skip
    """Convolve frame ``n`` of the program's tile, add the bias and the frame's encoding, write it in token layout."""
    acc = bias + tl.load(pe_rows + n * spe_n, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    for ky in tl.static_range(K):
        yy = y + ky - K // 2 + 0 * x
        for kx in tl.static_range(K):
            xx = x + kx - K // 2
            inside = c_mask[:, None] & ((xx >= 0) & (xx < W) & (yy >= 0) & (yy < H))[None, :]
            value = tl.load(channel_rows + n * sf_n + yy[None, :] * sf_h + xx[None, :] * sf_w, mask=inside, other=0.0)
            weight = tl.load(w_ptr + c * (K * K) + ky * K + kx, mask=c_mask, other=0.0)
            acc += weight.to(tl.float32)[:, None] * value.to(tl.float32)
    tl.store(token_rows + n * C, acc.to(token_rows.dtype.element_ty), mask=c_mask[:, None] & (x < W)[None, :])


@triton.jit
def depthwise_tokens_kernel(
    f_ptr, w_ptr, bias_ptr, pe_ptr, out_ptr,
    C, H, W, N,
    sf_b, sf_n, sf_c, sf_h, sf_w, spe_b, spe_n, spe_c,
    K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_X: tl.constexpr, FRAMES: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # (b, frame group, y), y fastest
    groups = tl.cdiv(N, FRAMES)
    y = row % H
    n0 = (row // H) % groups * FRAMES
    b = row // (H * groups)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    x = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    c_mask = c < C
    bias = tl.zeros((BLOCK_C, BLOCK_X), tl.float32)
    if HAS_BIAS:
        bias += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    channel_rows = f_ptr + b * sf_b + c[:, None].to(tl.int64) * sf_c
    # token (b, y, x) holds its N frames of C channels contiguously
    token_rows = out_ptr + ((b * H + y) * W + x)[None, :] * (N * C) + c[:, None]
    pe_rows = pe_ptr + b * spe_b + c * spe_c
    if FRAMES == 1:  # straight-line code: a loop of one frame was twice as slow
        _frame_tokens(n0, channel_rows, token_rows, w_ptr, pe_rows, bias, c, c_mask, x, y, H, W, C, sf_n, sf_h, sf_w,
                      spe_n, K)  # fmt: skip
    else:
        for n in range(n0, tl.minimum(n0 + FRAMES, N)):
            _frame_tokens(n, channel_rows, token_rows, w_ptr, pe_rows, bias, c, c_mask, x, y, H, W, C, sf_n, sf_h,
                          sf_w, spe_n, K)  # fmt: skip


def depthwise_tokens(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pe: torch.Tensor
) -> torch.Tensor:
    """``temporal_tokenize(conv2d(feat, weight, bias, groups=C, padding=K // 2) + pe[..., None, None])``.

    Args:
        feat: ``(B, N, C, H, W)`` frame maps (any strides).
        weight: ``(C, 1, K, K)`` with ``K`` odd (``nn.Conv2d(C, C, K, groups=C)``); bias ``(C,)`` or ``None``.
        pe: ``(B or 1, N, C)``, added to every pixel of frame ``n``.

    Returns:
        ``((B*H*W), N, C)`` contiguous tokens in ``feat``'s dtype.
    """
    if feat.dim() != 5:
        raise ValueError(f"feat must have shape (B, N, C, H, W); got {tuple(feat.shape)}")
    batch, frames, channels, height, width = feat.shape
    k = weight.shape[-1]
    if weight.shape != (channels, 1, k, k) or k % 2 != 1:
        raise ValueError(f"weight must have shape ({channels}, 1, K, K) with K odd; got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},); got {tuple(bias.shape)}")
    if pe.dim() != 3 or pe.shape[0] not in (1, batch) or pe.shape[1:] != (frames, channels):
        raise ValueError(f"pe must have shape ({batch} or 1, {frames}, {channels}); got {tuple(pe.shape)}")
    out = torch.empty(batch * height * width, frames, channels, device=feat.device, dtype=feat.dtype)
    if out.numel() == 0:
        return out
    block_x = min(BLOCK_X, next_power_of_2(width))
    if channels <= NARROW_CHANNELS:
        block_c, frames_per_program, warps = NARROW_BLOCK_C, FRAMES, 1
    else:
        block_c, frames_per_program, warps = min(next_power_of_2(channels), TILE // block_x), 1, 4
    pe_strides = (0 if pe.shape[0] == 1 else pe.stride(0), pe.stride(1), pe.stride(2))
    rows = batch * triton.cdiv(frames, frames_per_program) * height
    grid = (rows, triton.cdiv(width, block_x), triton.cdiv(channels, block_c))
    depthwise_tokens_kernel[grid](
        feat, weight.contiguous(), feat if bias is None else bias, pe, out,
        channels, height, width, frames, *feat.stride(), *pe_strides,
        K=k, BLOCK_C=block_c, BLOCK_X=block_x, FRAMES=frames_per_program, HAS_BIAS=bias is not None,
        num_warps=warps,
    )  # fmt: skip
    return out
