"""A linear read-out of per-pixel time sequences written straight into frame maps, for inference.

The depth model reads each scale's temporal stream ``((B*H*W), N, C)`` out with a linear layer into a residual of
the teacher's maps ``(B, N, C, H, W)`` and adds it to them. In PyTorch that is a batched matrix product over the
frames whose output first holds the broadcast bias (a pass to write it), then the add (a pass over both maps);
and where ``H*W`` is odd cuBLAS falls back to kernels for unaligned rows. Here one program takes ``BLOCK_P``
pixels of one frame and ``BLOCK_CO`` output channels: it reads the pixels' token rows ``BLOCK_K`` channels at a
time into ``tl.dot``, adds the bias and the map it is added to in float32, and writes the tile in frame layout,
rounding once. Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2

# Pixels, output channels and input channels per step of a program, warps. H100, bf16, 32 frames, the depth model's
# eight read-outs (DA2-S and -L at 518x518), with the teacher's map added: DA2-S's four 0.32 -> 0.24 ms and DA2-L's
# 2.00 -> 1.56 ms against 32 input channels a step and four warps (PyTorch's product, bias and add: 0.69 and
# 3.51 ms); the best single tiling of 102 on both.
BLOCK_P, BLOCK_CO, BLOCK_K, NUM_WARPS = 64, 128, 64, 8


@triton.jit
def token_readout_kernel(
    y_ptr, w_ptr, bias_ptr, base_ptr, out_ptr,
    C, P, N, sy_t, sy_n, sy_c,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BASE: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    frame = tl.program_id(0).to(tl.int64)  # (b, n)
    n = frame % N
    b = frame // N
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    co = tl.program_id(2) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    p_mask = p < P
    co_mask = co < C
    token_rows = y_ptr + (b * P + p)[:, None] * sy_t + n * sy_n
    acc = tl.zeros((BLOCK_P, BLOCK_CO), tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < C
        tokens = tl.load(token_rows + k[None, :] * sy_c, mask=p_mask[:, None] & k_mask[None, :], other=0.0)
        weight_t = tl.load(w_ptr + co[None, :] * C + k[:, None], mask=k_mask[:, None] & co_mask[None, :], other=0.0)
        acc = tl.dot(tokens, weight_t, acc, input_precision=PRECISION)
    acc += tl.load(bias_ptr + co, mask=co_mask, other=0.0).to(tl.float32)[None, :]
    offsets = (frame * C + co[None, :]) * P + p[:, None]  # (b, n, co, pixel) of the contiguous maps
    mask = p_mask[:, None] & co_mask[None, :]
    if HAS_BASE:
        acc += tl.load(base_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def token_readout(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    batch: int,
    height: int,
    width: int,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[base +] temporal_detokenize(F.linear(y, weight, bias), height, width, batch)``.

    Args:
        y: ``((batch*height*width), N, C)`` token rows (any strides), float32, bfloat16 or float16.
        weight: ``(C, C)``; bias ``(C,)``; both cast to ``y``'s dtype as ``F.linear`` would need them.
        base: ``(batch, N, C, height, width)`` maps to add, or ``None``.

    Returns:
        ``(batch, N, C, height, width)`` contiguous in ``y``'s dtype.
    """
    tokens, frames, channels = y.shape
    if tokens != batch * height * width:
        raise ValueError(f"y must have batch*height*width = {batch * height * width} rows; got {tokens}")
    if weight.shape != (channels, channels) or bias.shape != (channels,):
        raise ValueError(
            f"weight must have shape ({channels}, {channels}) and bias ({channels},); "
            f"got {tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    shape = (batch, frames, channels, height, width)
    if base is not None and base.shape != shape:
        raise ValueError(f"base must have shape {shape}; got {tuple(base.shape)}")
    out = torch.empty(shape, device=y.device, dtype=y.dtype)
    if out.numel() == 0:
        return out
    pixels = height * width
    block_co, block_k = (min(block, max(16, next_power_of_2(channels))) for block in (BLOCK_CO, BLOCK_K))
    grid = (batch * frames, triton.cdiv(pixels, BLOCK_P), triton.cdiv(channels, block_co))
    token_readout_kernel[grid](
        y, weight.to(y.dtype).contiguous(), bias.to(y.dtype), out if base is None else base.contiguous(), out,
        channels, pixels, frames, *y.stride(),
        BLOCK_P=BLOCK_P, BLOCK_CO=block_co, BLOCK_K=block_k, HAS_BASE=base is not None,
        PRECISION="ieee" if y.dtype == torch.float32 else "tf32", num_warps=NUM_WARPS,
    )  # fmt: skip
    return out
