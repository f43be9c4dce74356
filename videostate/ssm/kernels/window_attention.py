"""Gated (shifted) window self-attention for inference, straight from a token map's merged projection.

``window_attention_triton(qkvg, ...)`` takes the ``(B, H, W, R)`` output of the merged ``qkv``/gate
projection of a token map (rows ``q, k, v`` of ``C`` channels each, heads ``(h d)``, then the gate's
``heads`` or ``C`` logits) and returns ``(B, H, W, C)``: each window's softmax attention per head, times
``sigmoid(gate)``, written at the tokens' own map positions. One program attends one window, all its heads.

The shifted windows are those of the map rolled by ``-shift`` on both axes (Swin): a program reads its tokens
at ``((y + shift) mod H, (x + shift) mod W)`` and writes them back there, so neither the roll nor the window
partition is ever materialised. With a shift, two tokens attend to each other only when they come from the
same region of the rolled map (bands ``[0, H - window)``, ``[H - window, H - shift)``, ``[H - shift, H)`` on
each axis; Swin's mask). Scores, softmax and the output's sums in float32; the probabilities enter the
second product in the input's dtype (as flash attention does). Forward only.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import next_power_of_2, sigmoid


@triton.jit
def _band(rolled, size, window, shift):
    """Swin's region band (0, 1, 2) of a rolled-map coordinate along an axis of ``size``."""
    return (rolled >= size - window).to(tl.int32) + (rolled >= size - shift).to(tl.int32)


@triton.jit
def window_attention_fwd_kernel(
    qkvg_ptr, out_ptr,
    height, width, windows_x, windows_per_image, shift, scale,
    s_b, s_y, s_x, so_b, so_y, so_x,
    DIM: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    WINDOW: tl.constexpr, BLOCK_T: tl.constexpr, SHIFTED: tl.constexpr, HEADWISE_GATE: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = (pid // windows_per_image).to(tl.int64)
    w = pid % windows_per_image
    token = tl.arange(0, BLOCK_T)
    t_mask = token < WINDOW * WINDOW
    rolled_y = w // windows_x * WINDOW + token // WINDOW
    rolled_x = w % windows_x * WINDOW + token % WINDOW
    y = (rolled_y + shift) % height
    x = (rolled_x + shift) % width
    rows = qkvg_ptr + b * s_b + y.to(tl.int64) * s_y + x.to(tl.int64) * s_x
    out_rows = out_ptr + b * so_b + y.to(tl.int64) * so_y + x.to(tl.int64) * so_x
    allowed = t_mask[None, :]
    if SHIFTED:  # (padding rows, never stored, keep every key: no row is all -inf)
        region = _band(rolled_y, height, WINDOW, shift) * 3 + _band(rolled_x, width, WINDOW, shift)
        allowed = allowed & ((region[:, None] == region[None, :]) | ~t_mask[:, None])
    d = tl.arange(0, BLOCK_D)
    td_mask = t_mask[:, None] & (d < HEAD_DIM)[None, :]
    for h in tl.static_range(HEADS):
        cols = h * HEAD_DIM + d
        q = tl.load(rows[:, None] + cols[None, :], mask=td_mask, other=0.0)
        k = tl.load(rows[:, None] + (DIM + cols)[None, :], mask=td_mask, other=0.0)
        v = tl.load(rows[:, None] + (2 * DIM + cols)[None, :], mask=td_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        scores = tl.where(allowed, scores, -float("inf"))
        p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
        out = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / tl.sum(p, axis=1)[:, None]
        if HEADWISE_GATE:
            gate = tl.load(rows + 3 * DIM + h, mask=t_mask, other=0.0).to(tl.float32)[:, None]
        else:
            gate = tl.load(rows[:, None] + (3 * DIM + cols)[None, :], mask=td_mask, other=0.0).to(tl.float32)
        tl.store(out_rows[:, None] + cols[None, :], (out * sigmoid(gate)).to(out_ptr.dtype.element_ty), mask=td_mask)


def window_attention_triton(
    qkvg: torch.Tensor, dim: int, num_heads: int, window: int, shift: int, headwise_gate: bool
) -> torch.Tensor:
    """``qkvg (B, H, W, R)`` (channels contiguous; columns ``q, k, v`` of ``dim`` each, then the gate's
    ``num_heads`` (headwise) or ``dim`` logits, then anything) -> ``(B, H, W, dim)`` in qkvg's dtype.

    H and W must be multiples of ``window``; ``shift`` in ``[0, window)``.
    """
    if qkvg.dim() != 4 or qkvg.stride(-1) != 1:
        raise ValueError(f"qkvg must be a (B, H, W, R) map with contiguous channels; got shape {tuple(qkvg.shape)}")
    batch, height, width, columns = qkvg.shape
    gates = num_heads if headwise_gate else dim
    if dim % num_heads or columns < 3 * dim + gates:
        raise ValueError(
            f"qkvg needs 3 * dim + gates = {3 * dim + gates} columns for dim={dim}, num_heads={num_heads}; "
            f"got {columns}"
        )
    if height % window or width % window or not 0 <= shift < window:
        raise ValueError(
            f"the map {height}x{width} must tile into windows of {window} and the shift lie in [0, {window}); "
            f"got shift {shift}"
        )
    head_dim = dim // num_heads
    out = torch.empty(batch, height, width, dim, device=qkvg.device, dtype=qkvg.dtype)
    windows_x = width // window
    windows_per_image = height // window * windows_x
    if out.numel() == 0:
        return out
    window_attention_fwd_kernel[(batch * windows_per_image,)](
        qkvg, out, height, width, windows_x, windows_per_image, shift, 1.0 / math.sqrt(head_dim),
        *qkvg.stride()[:3], *out.stride()[:3],
        DIM=dim, HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)),
        WINDOW=window, BLOCK_T=max(16, next_power_of_2(window * window)), SHIFTED=shift > 0,
        HEADWISE_GATE=headwise_gate, PRECISION="ieee" if qkvg.dtype == torch.float32 else "tf32",
        num_warps=4,
    )  # fmt: skip
    return out
