"""The tail of a pre-norm residual block, for inference: ``s = x + out_proj(y)``, then ``s + MLP(LayerNorm(s))``.

A Mamba block ends with its mixer's output projection, the residual add, the second LayerNorm, and the
feed-forward layers with their own residual add. Unfused these are passes over token maps that the depth model
makes of hundreds of thousands of tokens: the projection reads ``y`` (``d_inner`` channels) and writes its output,
the add and LayerNorm read that and ``x`` and write the sum and its norm, the MLP reads both and writes the block's
output. Here a program takes ``BLOCK_M`` tokens, forms the projection in float32 (``BLOCK_K`` input channels at a
time), rounds it and the sum where the unfused layers round them, normalises the sum in registers and runs the
MLP of :mod:`.mlp` on it: ``y`` and ``x`` are read once and only the output is written. Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2
from .layer_norm import normalize_rows
from .mlp import ACTIVATIONS, mlp_rows

BLOCK_M = 64  # tokens per program, four warps
BLOCK_K = 32  # input channels of the projection per step
# Widths at which the kernel beats the unfused layers (cuBLAS products, the add-and-norm kernel, the MLP kernel up
# to 128 channels). H100, bf16, the depth model's temporal modules at 518x518 (32 frames, d_inner and hidden width
# 2C) replayed from a CUDA graph: DA2-S 4.29 -> 4.13 ms with the kernel on its 48- and 96-channel blocks, DA2-L
# 22.27 -> 21.90 ms on its 256-channel block. Wider than 128 channels it takes powers of two only: at 192 channels,
# padded to 256 columns, it was no faster (4.15 ms); at 384 and 512 the products are (standalone: 0.47 vs 0.25 ms
# at 384 channels, 7.8 vs 1.5 ms at 512).
MAX_CHANNELS = 256


def supports(channels: int) -> bool:
    """Whether the kernel is the faster way to end blocks of ``channels`` channels."""
    return channels <= 128 or (channels <= MAX_CHANNELS and channels == next_power_of_2(channels))


def hidden_step(channels: int) -> int:
    """Hidden columns per step of the MLP: 64 up to 128 channels, 32 above (the fastest of eight tilings at 192 and
    256 channels)."""
    return 64 if channels <= 128 else 32


@triton.jit
def block_tail_kernel(
    y_ptr, wo_ptr, bo_ptr, x_ptr, nw_ptr, nb_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    n_rows, eps,
    C: tl.constexpr, D_INNER: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, HAS_OUT_BIAS: tl.constexpr, SILU: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = row_mask[:, None] & c_mask[None, :]
    projected = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for start in range(0, D_INNER, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        k_mask = k < D_INNER
        y = tl.load(y_ptr + rows[:, None] * D_INNER + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        wo = tl.load(wo_ptr + c[None, :] * D_INNER + k[:, None], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        projected += tl.dot(y, wo, input_precision=PRECISION)
    if HAS_OUT_BIAS:
        projected += tl.load(bo_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    dtype = out_ptr.dtype.element_ty
    offsets = rows[:, None] * C + c[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # rounded as the projection's output and the residual add are rounded unfused
    s = (x + projected.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    h = normalize_rows(s, mask, nw_ptr, nb_ptr, c, c_mask, C, eps, True, True).to(dtype)
    out = mlp_rows(h, w1_ptr, b1_ptr, w2_ptr, c, c_mask, C, HIDDEN, BLOCK_H, SILU, PRECISION)
    out += tl.load(b2_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :] + s
    tl.store(out_ptr + offsets, out.to(dtype), mask=mask)


def block_tail_triton(
    y: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """``s + F.linear(act(F.linear(LayerNorm(s), w1, b1)), w2, b2)`` with ``s = x + F.linear(y, out_weight,
    out_bias)``, in ``x``'s dtype; ``act`` ``F.silu`` or ``F.gelu`` (``activation``).

    Args:
        y: ``(..., d_inner)``, the mixer's output before its projection; x ``(..., C)``, the block's input.
        out_weight: ``(C, d_inner)``; out_bias ``(C,)`` or ``None``.
        norm_weight, norm_bias: ``(C,)``, the LayerNorm's affine parameters, ``eps`` its epsilon.
        w1: ``(hidden, C)``; b1 ``(hidden,)``; w2 ``(C, hidden)``; b2 ``(C,)``.

    Returns:
        ``(..., C)`` in ``x``'s dtype: the products in that dtype with float32 sums, the projection and ``s``
        rounded to it, as the unfused layers give them.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    channels, d_inner, hidden = x.shape[-1], y.shape[-1], w1.shape[0]
    expected = {
        "y": (*x.shape[:-1], d_inner),
        "out_weight": (channels, d_inner),
        "out_bias": (channels,),
        "norm_weight": (channels,),
        "norm_bias": (channels,),
        "w1": (hidden, channels),
        "b1": (hidden,),
        "w2": (channels, hidden),
        "b2": (channels,),
    }
    given = {"y": y, "out_weight": out_weight, "out_bias": out_bias, "norm_weight": norm_weight,
             "norm_bias": norm_bias, "w1": w1, "b1": b1, "w2": w2, "b2": b2}  # fmt: skip
    for name, t in given.items():
        if t is not None and tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for x {tuple(x.shape)}; got {tuple(t.shape)}")
    dtype = x.dtype
    y2 = y.reshape(-1, d_inner).to(dtype).contiguous()
    x2 = x.reshape(-1, channels).contiguous()
    out = torch.empty_like(x2)
    if x2.shape[0]:
        block_tail_kernel[(triton.cdiv(x2.shape[0], BLOCK_M),)](
            y2, out_weight.to(dtype).contiguous(), x2 if out_bias is None else out_bias.contiguous(), x2,
            norm_weight.contiguous(), norm_bias.contiguous(), w1.to(dtype).contiguous(),
            b1.contiguous(), w2.to(dtype).contiguous(), b2.contiguous(), out, x2.shape[0], eps,
            C=channels, D_INNER=d_inner, HIDDEN=hidden, BLOCK_C=max(16, next_power_of_2(channels)),
            BLOCK_K=min(BLOCK_K, max(16, next_power_of_2(d_inner))), BLOCK_M=BLOCK_M,
            BLOCK_H=min(hidden_step(channels), max(16, next_power_of_2(hidden))), HAS_OUT_BIAS=out_bias is not None,
            SILU=activation == "silu", PRECISION="ieee" if dtype == torch.float32 else "tf32", num_warps=4,
        )  # fmt: skip
    return out.view(x.shape)
