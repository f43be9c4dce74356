"""LayerNorm over the last dimension for inference, with an optional residual add before it: one pass.

``layer_norm_triton(x, weight, bias, eps, out_dtype)`` is ``F.layer_norm(x, (C,), weight, bias, eps)``
written in ``out_dtype``; ``add_layer_norm_triton(x, residual, ...)`` also returns ``s = x + residual``
(in their promoted dtype, rounded as PyTorch's add rounds it) and normalises ``s``. Forward only: there is
no backward, so callers keep ``nn.LayerNorm`` where gradients are needed.

A program normalises a ``(ROWS, BLOCK_C)`` tile of ``ROWS`` consecutive rows (``ROWS * BLOCK_C`` about
4096 elements), so maps of millions of rows of 32 to 128 channels are read and written once, in wide
coalesced accesses. Statistics in float32 from the centred values (two passes over registers, no
``E[x^2] - E[x]^2`` cancellation). Row offsets in int64: maps of more than 2**31 elements are fine.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_power_of_2

TILE_ELEMENTS = 4096  # elements per program (ROWS * BLOCK_C)


@triton.jit
def normalize_rows(x, mask, w_ptr, b_ptr, cols, col_mask, C: tl.constexpr, eps, HAS_WEIGHT: tl.constexpr,
                   HAS_BIAS: tl.constexpr):  # fmt: skip
    """LayerNorm of the float32 rows ``x (ROWS, BLOCK_C)`` over their ``C`` real columns (``mask``), with the weight
    and bias of ``cols`` (``col_mask``)."""
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    out = centred * rstd[:, None]
    if HAS_WEIGHT:
        out = out * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        out = out + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return out


@triton.jit
def layer_norm_fwd_kernel(
    x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, sum_ptr,
    n_rows, eps,
    C: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    offsets = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if HAS_RES:
        s = (x.to(tl.float32) + tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)).to(
            sum_ptr.dtype.element_ty
        )
        tl.store(sum_ptr + offsets, s, mask=mask)
        x = s
    out = normalize_rows(x.to(tl.float32), mask, w_ptr, b_ptr, cols, col_mask, C, eps, HAS_WEIGHT, HAS_BIAS)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch_shape(n_rows: int, channels: int) -> dict:
    """Grid and tile of :func:`layer_norm_fwd_kernel` for ``n_rows`` rows of ``channels``: a 1-D grid (axis 0
    takes up to ``2**31 - 1`` programs)."""
    block_c = next_power_of_2(channels)
    rows = max(1, TILE_ELEMENTS // block_c)
    return {
        "grid": (triton.cdiv(n_rows, rows),),
        "meta": {"C": channels, "BLOCK_C": block_c, "ROWS": rows},
        "num_warps": 4 if rows * block_c <= 4096 else 8,
    }


def _rows(t: torch.Tensor, channels: int) -> torch.Tensor:
    return t.reshape(-1, channels).contiguous()


def _check(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> int:
    channels = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) for x of shape {tuple(x.shape)}; got {tuple(p.shape)}"
            )
    return channels


def _launch(x2, res2, weight, bias, out, summed, eps):
    n_rows, channels = x2.shape
    if n_rows == 0:
        return
    launch = launch_shape(n_rows, channels)
    layer_norm_fwd_kernel[launch["grid"]](
        x2, x2 if res2 is None else res2, x2 if weight is None else weight, x2 if bias is None else bias,
        out, out if summed is None else summed, n_rows, eps,
        **launch["meta"], HAS_RES=res2 is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        num_warps=launch["num_warps"],
    )  # fmt: skip


def layer_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)`` over the last dimension, in ``out_dtype`` (default x's);
    forward only."""
    channels = _check(x, weight, bias)
    x2 = _rows(x, channels)
    out = torch.empty(x2.shape, device=x.device, dtype=out_dtype or x.dtype)
    _launch(x2, None, weight, bias, out, None, eps)
    return out.view(x.shape)


def add_layer_norm_triton(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x + residual`` and ``F.layer_norm(s, (C,), weight, bias, eps)`` in ``out_dtype`` (default s's),
    in one pass; forward only. ``s`` has the promoted dtype of x and residual."""
    if x.shape != residual.shape:
        raise ValueError(f"x and residual must have the same shape; got {tuple(x.shape)} and {tuple(residual.shape)}")
    channels = _check(x, weight, bias)
    x2, res2 = _rows(x, channels), _rows(residual, channels)
    summed = torch.empty(x2.shape, device=x.device, dtype=torch.promote_types(x.dtype, residual.dtype))
    out = torch.empty(x2.shape, device=x.device, dtype=out_dtype or summed.dtype)
    _launch(x2, res2, weight, bias, out, summed, eps)
    return summed.view(x.shape), out.view(x.shape)
