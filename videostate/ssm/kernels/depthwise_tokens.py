"""A depthwise 3x3 convolution of frame maps written straight into per-pixel time sequences, for inference.

The depth model's spatial pre-mix convolves each frame's ``(C, H, W)`` map and then lays the result out as one
time sequence per pixel, ``((B*H*W), N, C)``, with a position encoding per frame added: a convolution pass, an
add pass and a layout pass over maps of millions of values. Here one program owns ``BLOCK_C`` channels x
``BLOCK_X`` pixels of a strip of ``ROWS`` image rows in one frame and walks down the strip: each input row is
read once (its three horizontal taps), completes the output row above it, adds to its own and starts the one
below, so a row costs three loads and nine multiply-adds a value. The bias and the frame's encoding are added in
float32 and the rows written in token layout, rounding once. Forward only.

Programs are numbered channel block fastest, then frame, then pixel block and strip, so the programs running
together write whole token rows (``N`` frames x ``C`` channels of one pixel) and the cache merges their writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KERNEL_SIZE = 3
# Rows of a strip, channels and pixels of a program, warps. H100, bf16, 32 frames, 51 tilings, then three program
# orders on 24 of them, tried on the eight maps of DA2-S and DA2-L at 518x518: DA2-S's four maps 0.49 -> 0.27 ms
# against the earlier kernel (nine shifted loads a value), DA2-L's 1.90 -> 1.36 ms.
ROWS, BLOCK_C, BLOCK_X, NUM_WARPS = 16, 16, 32, 2


@triton.jit
def _row_taps(row_ptrs, r, H, sf_h, sf_w, left, centre, right):
    """Input row ``r`` at pixels ``x - 1``, ``x`` and ``x + 1`` in float32, zero outside the map."""
    rows = r + 0 * tl.arange(0, 1)[None, :]
    inside = (rows >= 0) & (rows < H)
    p = row_ptrs + r * sf_h
    v0 = tl.load(p - sf_w, mask=left & inside, other=0.0).to(tl.float32)
    v1 = tl.load(p, mask=centre & inside, other=0.0).to(tl.float32)
    v2 = tl.load(p + sf_w, mask=right & inside, other=0.0).to(tl.float32)
    return v0, v1, v2


@triton.jit
def depthwise_tokens_kernel(
    f_ptr, w_ptr, bias_ptr, pe_ptr, out_ptr,
    C, H, W, N,
    sf_b, sf_n, sf_c, sf_h, sf_w, spe_b, spe_n, spe_c,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_X: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)  # (b, strip, pixel block, frame, channel block), channel block fastest
    channel_blocks = tl.cdiv(C, BLOCK_C)
    pixel_blocks = tl.cdiv(W, BLOCK_X)
    c = (pid % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    rest = pid // channel_blocks
    n = rest % N
    rest = rest // N
    x = (rest % pixel_blocks) * BLOCK_X + tl.arange(0, BLOCK_X)
    rest = rest // pixel_blocks
    strips = tl.cdiv(H, ROWS)
    y0 = (rest % strips) * ROWS
    b = rest // strips
    c_mask = c < C
    left = c_mask[:, None] & ((x >= 1) & (x <= W))[None, :]
    centre = c_mask[:, None] & (x < W)[None, :]
    right = c_mask[:, None] & (x + 1 < W)[None, :]
    w_rows = w_ptr + c * 9
    w00 = tl.load(w_rows + 0, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w01 = tl.load(w_rows + 1, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w02 = tl.load(w_rows + 2, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w10 = tl.load(w_rows + 3, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w11 = tl.load(w_rows + 4, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w12 = tl.load(w_rows + 5, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w20 = tl.load(w_rows + 6, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w21 = tl.load(w_rows + 7, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    w22 = tl.load(w_rows + 8, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    start = tl.load(pe_ptr + b * spe_b + n * spe_n + c * spe_c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        start += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    start = start[:, None] + tl.zeros((BLOCK_C, BLOCK_X), tl.float32)
    row_ptrs = f_ptr + b * sf_b + n * sf_n + c[:, None].to(tl.int64) * sf_c + x[None, :] * sf_w
    # token (b, y, x) holds its N frames of C channels contiguously
    token_rows = out_ptr + (b * H * W + x[None, :]) * (N * C) + n * C + c[:, None]
    # out[y] = sum_ky w[ky] . in[y + ky - 1]: input row r completes out[r - 1], adds to out[r], starts out[r + 1]
    above = start
    current = start
    for r in range(y0 - 1, y0 + ROWS + 1):
        v0, v1, v2 = _row_taps(row_ptrs, r, H, sf_h, sf_w, left, centre, right)
        done = above + w20 * v0 + w21 * v1 + w22 * v2
        y = r - 1 + 0 * tl.arange(0, 1)[None, :]
        tl.store(token_rows + y * W * (N * C), done.to(out_ptr.dtype.element_ty), mask=centre & (y >= y0) & (y < H))
        above = current + w10 * v0 + w11 * v1 + w12 * v2
        current = start + w00 * v0 + w01 * v1 + w02 * v2


def depthwise_tokens(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pe: torch.Tensor
) -> torch.Tensor:
    """``temporal_tokenize(conv2d(feat, weight, bias, groups=C, padding=1) + pe[..., None, None])``.

    Args:
        feat: ``(B, N, C, H, W)`` frame maps (any strides).
        weight: ``(C, 1, 3, 3)`` (``nn.Conv2d(C, C, 3, groups=C)``); bias ``(C,)`` or ``None``.
        pe: ``(B or 1, N, C)``, added to every pixel of frame ``n``.

    Returns:
        ``((B*H*W), N, C)`` contiguous tokens in ``feat``'s dtype.
    """
    if feat.dim() != 5:
        raise ValueError(f"feat must have shape (B, N, C, H, W); got {tuple(feat.shape)}")
    batch, frames, channels, height, width = feat.shape
    if weight.shape != (channels, 1, KERNEL_SIZE, KERNEL_SIZE):
        raise ValueError(f"weight must have shape ({channels}, 1, 3, 3); got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},); got {tuple(bias.shape)}")
    if pe.dim() != 3 or pe.shape[0] not in (1, batch) or pe.shape[1:] != (frames, channels):
        raise ValueError(f"pe must have shape ({batch} or 1, {frames}, {channels}); got {tuple(pe.shape)}")
    out = torch.empty(batch * height * width, frames, channels, device=feat.device, dtype=feat.dtype)
    if out.numel() == 0:
        return out
    pe_strides = (0 if pe.shape[0] == 1 else pe.stride(0), pe.stride(1), pe.stride(2))
    programs = batch * triton.cdiv(height, ROWS) * triton.cdiv(width, BLOCK_X) * frames * triton.cdiv(channels, BLOCK_C)
    depthwise_tokens_kernel[(programs,)](
        feat, weight.contiguous(), feat if bias is None else bias, pe, out,
        channels, height, width, frames, *feat.stride(), *pe_strides,
        ROWS=ROWS, BLOCK_C=BLOCK_C, BLOCK_X=BLOCK_X, HAS_BIAS=bias is not None, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out
