"""A two-layer MLP over the channels of a token map, for inference: ``fc2(act(fc1(x))) (+ residual)`` in one pass,
with ``act`` exact GELU or SiLU.

A program takes ``BLOCK_M`` tokens and walks the hidden width ``BLOCK_H`` columns at a time: ``h = x W1^T + b1``
(float32 sums), the activation (GELU with ``erf``, as ``nn.GELU()``; or ``nn.SiLU()``), rounded to the compute
dtype, then ``acc += h W2^T``.
The hidden activations never leave the chip, so a map of millions of 32- to 128-channel tokens with a 4x
hidden width is read once and written once, instead of writing and re-reading the hidden map twice (the
first linear layer's output, then the GELU's). Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2, sigmoid

BLOCK_M = 64  # tokens per program
BLOCK_H = 64  # hidden columns per step
ACTIVATIONS = ("gelu", "silu")
# Widest tokens for which the kernel beats the unfused layers (two cuBLAS products, the activation and the add).
# H100, bf16, SiLU, hidden width 2C, with a residual: 48 channels 0.14 vs 0.38 ms (700k tokens), 96 0.135 vs
# 0.18 ms (175k); at 192 (44k tokens) 0.117 vs 0.097 ms and 256 (700k) 1.84 vs 1.61 ms the products are faster.
MAX_CHANNELS = 128


def supports(channels: int) -> bool:
    """Whether the kernel is the faster way to run tokens of ``channels`` channels (wider: two matrix products)."""
    return channels <= MAX_CHANNELS


@triton.jit
def mlp_rows(x, w1_ptr, b1_ptr, w2_ptr, c, c_mask, C: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_H: tl.constexpr,
             SILU: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """``act(x W1^T + b1) W2^T`` for a tile of rows ``x (BLOCK_M, BLOCK_C)`` in the products' dtype, columns ``c``
    (``c_mask``: the ``C`` real ones); float32 ``(BLOCK_M, BLOCK_C)``, without ``b2``."""
    acc = tl.zeros(x.shape, tl.float32)
    for start in range(0, HIDDEN, BLOCK_H):
        j = start + tl.arange(0, BLOCK_H)
        j_mask = j < HIDDEN
        w1 = tl.load(w1_ptr + j[None, :] * C + c[:, None], mask=c_mask[:, None] & j_mask[None, :], other=0.0)
        h = (
            tl.dot(x, w1, input_precision=PRECISION)
            + tl.load(b1_ptr + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
        )
        if SILU:
            h = h * sigmoid(h)
        else:
            h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
        w2 = tl.load(w2_ptr + c[None, :] * HIDDEN + j[:, None], mask=j_mask[:, None] & c_mask[None, :], other=0.0)
        acc += tl.dot(h.to(w2.dtype), w2, input_precision=PRECISION)
    return acc


@triton.jit
def mlp_fwd_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, res_ptr, out_ptr,
    n_rows,
    C: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_RES: tl.constexpr, SILU: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (rows < n_rows)[:, None] & c_mask[None, :]
    offsets = rows[:, None] * C + c[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    acc = mlp_rows(x, w1_ptr, b1_ptr, w2_ptr, c, c_mask, C, HIDDEN, BLOCK_H, SILU, PRECISION)
    acc += tl.load(b2_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def mlp_triton(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    residual: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    activation: str = "gelu",
) -> torch.Tensor:
    """``F.linear(act(F.linear(x, w1, b1)), w2, b2)`` (+ ``residual``) over the last dimension of ``x (..., C)``,
    ``act`` ``F.gelu`` or ``F.silu`` (``activation="gelu"`` or ``"silu"``).

    ``w1 (hidden, C)``, ``b1 (hidden,)``, ``w2 (C, hidden)``, ``b2 (C,)``. The products run in ``dtype``
    (default x's; pass the autocast dtype under autocast), sums in float32. Returns ``(..., C)`` in ``dtype``,
    or with a residual in the promoted dtype of the two, the residual added before the one rounding.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    channels = x.shape[-1]
    hidden = w1.shape[0]
    expected = {"w1": (hidden, channels), "b1": (hidden,), "w2": (channels, hidden), "b2": (channels,)}
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for x (..., {channels}); got {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    dtype = dtype or x.dtype
    x2 = x.reshape(-1, channels).to(dtype).contiguous()
    res2 = None if residual is None else residual.reshape(-1, channels).contiguous()
    out_dtype = dtype if residual is None else torch.promote_types(dtype, residual.dtype)
    out = torch.empty(x2.shape, device=x.device, dtype=out_dtype)
    if x2.shape[0]:
        mlp_fwd_kernel[(triton.cdiv(x2.shape[0], BLOCK_M),)](
            x2, w1.to(dtype).contiguous(), b1.contiguous(), w2.to(dtype).contiguous(),
            b2.contiguous(), x2 if res2 is None else res2, out, x2.shape[0],
            C=channels, HIDDEN=hidden, BLOCK_C=max(16, next_power_of_2(channels)), BLOCK_M=BLOCK_M,
            BLOCK_H=min(BLOCK_H, max(16, next_power_of_2(hidden))), HAS_RES=res2 is not None,
            SILU=activation == "silu", PRECISION="ieee" if dtype == torch.float32 else "tf32",
            num_warps=4 if channels <= 64 else 8,
        )  # fmt: skip
    return out.view(x.shape)
