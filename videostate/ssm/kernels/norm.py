"""RMSNorm with fused residual add, and gated RMSNorm, on the GPU: launchers and the autograd function.

Same call signatures as :func:`videostate.ssm.norm.rms_norm_reference` and
``rms_norm_gated_reference``.
"""

from __future__ import annotations

import torch
import triton

from ..norm import rms_norm_gated_reference, rms_norm_reference
from .common import any_float64, next_power_of_2
from .norm_kernels import rms_norm_bwd_kernel, rms_norm_fwd_kernel

PROGRAMS = 1024  # backward programs per launch at most; each walks its share of the rows
TILE_ELEMENTS = 4096  # elements per forward program (rows * padded hidden size)


def _launch_shape(n_rows: int, groups: int, group_size: int) -> dict:
    block_g, block_s = next_power_of_2(groups), next_power_of_2(group_size)
    rows_per_program = triton.cdiv(n_rows, PROGRAMS)
    return {
        "grid": (triton.cdiv(n_rows, rows_per_program),),
        "rows_per_program": rows_per_program,
        "meta": {"GROUPS": groups, "GROUP_SIZE": group_size, "BLOCK_G": block_g, "BLOCK_S": block_s},
        "num_warps": min(8, max(1, block_g * block_s // 256)),
    }


def _rows(t: torch.Tensor | None, hidden: int) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, hidden).contiguous()


def _row_view(t: torch.Tensor | None, hidden: int) -> torch.Tensor | None:
    """``t`` as ``(rows, hidden)`` with contiguous channels, a view where its strides allow (the kernels take a
    row stride), else a copy."""
    if t is None:
        return None
    rows = t.reshape(-1, hidden)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm_forward(x2, res2, z2, weight, bias, eps, group_size, gate_after, res_dtype):
    """The forward kernel on ``(rows, hidden)`` inputs (``x2``, ``z2`` with any row stride): ``(out, res_out,
    rstd)``, ``res_out`` ``None`` without ``res_dtype``."""
    n_rows, hidden = x2.shape
    groups = hidden // group_size
    out = torch.empty(n_rows, hidden, device=x2.device, dtype=x2.dtype)
    res_out = None if res_dtype is None else torch.empty(n_rows, hidden, device=x2.device, dtype=res_dtype)
    rstd = torch.empty(n_rows, groups, device=x2.device, dtype=torch.float32)
    block_g, block_s = next_power_of_2(groups), next_power_of_2(group_size)
    rows = max(1, TILE_ELEMENTS // (block_g * block_s))
    if n_rows:
        rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
            x2, x2 if res2 is None else res2, x2 if z2 is None else z2, weight, weight if bias is None else bias,
            out, out if res_out is None else res_out, rstd, n_rows, eps, x2.stride(0),
            0 if z2 is None else z2.stride(0),
            GROUPS=groups, GROUP_SIZE=group_size, BLOCK_G=block_g, BLOCK_S=block_s, ROWS=rows,
            HAS_RES=res2 is not None, HAS_Z=z2 is not None, GATE_AFTER=gate_after, HAS_BIAS=bias is not None,
            STORE_RES=res_out is not None, num_warps=4 if rows * block_g * block_s <= TILE_ELEMENTS else 8,
        )  # fmt: skip
    return out, res_out, rstd


class RMSNormFunction(torch.autograd.Function):
    """Returns ``out`` and, when ``res_dtype`` is given, the pre-norm sum in that dtype."""

    @staticmethod
    def forward(ctx, x, residual, z, weight, bias, eps, group_size, gate_after, res_dtype):
        shape, hidden = x.shape, x.shape[-1]
        x2, res2, z2 = _rows(x, hidden), _rows(residual, hidden), _rows(z, hidden)
        out, res_out, rstd = rms_norm_forward(x2, res2, z2, weight, bias, eps, group_size, gate_after, res_dtype)
        ctx.save_for_backward(x2, res2, z2, weight, bias, rstd)
        ctx.meta = (shape, group_size, gate_after)
        out = out.reshape(shape)
        return out if res_out is None else (out, res_out.reshape(shape))

    @staticmethod
    def backward(ctx, dout, dres_out=None):
        x2, res2, z2, weight, bias, rstd = ctx.saved_tensors
        shape, group_size, gate_after = ctx.meta
        hidden = shape[-1]
        n_rows = x2.shape[0]
        dout2 = _rows(dout, hidden)
        dres_out2 = _rows(dres_out, hidden)
        launch = _launch_shape(n_rows, hidden // group_size, group_size)
        n_programs = launch["grid"][0]
        dx = torch.empty_like(x2)
        dres = None if res2 is None else torch.empty_like(res2)
        dz = None if z2 is None else torch.empty_like(z2)
        dw = torch.empty(n_programs, hidden, device=x2.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        rms_norm_bwd_kernel[launch["grid"]](
            x2, x2 if res2 is None else res2, x2 if z2 is None else z2, weight, weight if bias is None else bias,
            rstd, dout2, dout2 if dres_out2 is None else dres_out2,
            dx, dx if dres is None else dres, dx if dz is None else dz, dw, db, n_rows, launch["rows_per_program"],
            **launch["meta"], HAS_RES=res2 is not None, HAS_Z=z2 is not None, GATE_AFTER=gate_after,
            HAS_BIAS=bias is not None, HAS_DRES_OUT=dres_out2 is not None, num_warps=launch["num_warps"],
        )  # fmt: skip
        return (
            dx.reshape(shape),
            None if dres is None else dres.reshape(shape),
            None if dz is None else dz.reshape(shape),
            dw.sum(0).to(weight.dtype),
            None if bias is None else db.sum(0).to(bias.dtype),
            None, None, None, None,
        )  # fmt: skip


def rms_norm_triton(x, weight, bias, residual, eps, prenorm, residual_in_fp32):
    """Triton (add +) RMSNorm (see :func:`videostate.ssm.norm.rms_norm`)."""
    if any_float64(x, weight, bias, residual):
        return rms_norm_reference(x, weight, bias, residual, eps, prenorm, residual_in_fp32)
    res_dtype = None
    if prenorm:
        res_dtype = (residual if residual is not None else x).dtype
        if residual_in_fp32:
            res_dtype = torch.promote_types(res_dtype, torch.float32)
    return RMSNormFunction.apply(x, residual, None, weight, bias, eps, x.shape[-1], False, res_dtype)


def rms_norm_gated_triton(x, weight, z, eps, group_size, norm_before_gate, bias):
    """Triton gated RMSNorm (see :func:`videostate.ssm.norm.rms_norm_gated`)."""
    if any_float64(x, weight, z, bias):
        return rms_norm_gated_reference(x, weight, z, eps, group_size, norm_before_gate, bias)
    group_size = group_size or x.shape[-1]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, z, bias)):
        return RMSNormFunction.apply(x, None, z, weight, bias, eps, group_size, bool(norm_before_gate), None)
    # Inference: x and z (often strided views of one projection) are read in place.
    hidden = x.shape[-1]
    out, _, _ = rms_norm_forward(
        _row_view(x, hidden), None, _row_view(z, hidden), weight, bias, eps, group_size, bool(norm_before_gate), None
    )
    return out.view(x.shape)
