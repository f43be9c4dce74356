"""Triton kernels of RMSNorm with a fused residual add and of Mamba-2's gated RMSNorm.

A row of the hidden size is held as ``(GROUPS, GROUP_SIZE)`` (one group for a plain norm), so grouped
statistics are row sums of a tile. The forward gives each program a tile of rows; in the backward one program
walks ``rows_per_program`` rows, keeping its share of the weight and bias gradients in registers and writing
them once. Statistics in float32.

Forward: ``s = x + residual``; with a gate before the norm ``s = s * silu(z)``; ``out = s * rstd *
weight + bias``; with a gate after the norm ``out = out * silu(z)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import sigmoid


@triton.jit
def rms_norm_fwd_kernel(
    x_ptr, res_ptr, z_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr, rstd_ptr,
    n_rows, eps, sx_row, sz_row,
    GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
    ROWS: tl.constexpr, HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, GATE_AFTER: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_RES: tl.constexpr,
):  # fmt: skip
    """A program normalises ``ROWS`` rows, held as a ``(ROWS * BLOCK_G, BLOCK_S)`` tile of their groups. ``x`` and
    ``z`` rows are ``sx_row`` and ``sz_row`` elements apart (strided views of a wider projection are read in
    place); ``residual``, ``out`` and ``res_out`` rows are contiguous."""
    k = tl.arange(0, ROWS * BLOCK_G)
    row = tl.program_id(0).to(tl.int64) * ROWS + k // BLOCK_G
    group = k % BLOCK_G
    within = tl.arange(0, BLOCK_S)
    cols = group[:, None] * GROUP_SIZE + within[None, :]
    group_mask = (row < n_rows) & (group < GROUPS)
    mask = group_mask[:, None] & (within < GROUP_SIZE)[None, :]
    offsets = row[:, None] * (GROUPS * GROUP_SIZE) + cols
    s = tl.load(x_ptr + row[:, None] * sx_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(res_out_ptr + offsets, s.to(res_out_ptr.dtype.element_ty), mask=mask)
    if HAS_Z:
        z = tl.load(z_ptr + row[:, None] * sz_row + cols, mask=mask, other=0.0).to(tl.float32)
        if not GATE_AFTER:
            s = s * z * sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / GROUP_SIZE + eps)
    tl.store(rstd_ptr + row * GROUPS + group, rstd, mask=group_mask)
    out = s * rstd[:, None] * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        out += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        if GATE_AFTER:
            out = out * z * sigmoid(z)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    x_ptr, res_ptr, z_ptr, w_ptr, b_ptr, rstd_ptr, dout_ptr, dres_out_ptr,
    dx_ptr, dres_ptr, dz_ptr, dw_ptr, db_ptr,
    n_rows, rows_per_program,
    GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, GATE_AFTER: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DRES_OUT: tl.constexpr,
):  # fmt: skip
    group = tl.arange(0, BLOCK_G)
    within = tl.arange(0, BLOCK_S)
    cols = group[:, None] * GROUP_SIZE + within[None, :]
    col_mask = (group < GROUPS)[:, None] & (within < GROUP_SIZE)[None, :]
    pid = tl.program_id(0)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_G, BLOCK_S), tl.float32)
    db = tl.zeros((BLOCK_G, BLOCK_S), tl.float32)
    for i in range(0, rows_per_program):
        row = pid * rows_per_program + i
        if row < n_rows:
            offsets = row.to(tl.int64) * (GROUPS * GROUP_SIZE) + cols
            s = tl.load(x_ptr + offsets, mask=col_mask, other=0.0).to(tl.float32)
            if HAS_RES:
                s += tl.load(res_ptr + offsets, mask=col_mask, other=0.0).to(tl.float32)
            summed = s
            if HAS_Z:
                z = tl.load(z_ptr + offsets, mask=col_mask, other=0.0).to(tl.float32)
                sig = sigmoid(z)
                if not GATE_AFTER:
                    s = s * z * sig
            rstd = tl.load(rstd_ptr + row * GROUPS + group, mask=group < GROUPS, other=0.0)[:, None]
            xhat = s * rstd
            dout = tl.load(dout_ptr + offsets, mask=col_mask, other=0.0).to(tl.float32)
            if HAS_Z:
                if GATE_AFTER:
                    out = xhat * w
                    if HAS_BIAS:
                        out += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
                    dz = dout * out * sig * (1.0 + z * (1.0 - sig))
                    dout = dout * z * sig
            dw_row = dout * xhat
            db_row = dout
            dxhat = dout * w
            ds = rstd * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / GROUP_SIZE)[:, None])
            if HAS_Z:
                if not GATE_AFTER:
                    dz = ds * summed * sig * (1.0 + z * (1.0 - sig))
                    ds = ds * z * sig
                tl.store(dz_ptr + offsets, dz.to(dz_ptr.dtype.element_ty), mask=col_mask)
            if HAS_DRES_OUT:
                ds += tl.load(dres_out_ptr + offsets, mask=col_mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + offsets, ds.to(dx_ptr.dtype.element_ty), mask=col_mask)
            if HAS_RES:
                tl.store(dres_ptr + offsets, ds.to(dres_ptr.dtype.element_ty), mask=col_mask)
            dw += dw_row
            db += db_row
    partial = pid * (GROUPS * GROUP_SIZE) + cols
    tl.store(dw_ptr + partial, dw, mask=col_mask)
    tl.store(db_ptr + partial, db, mask=col_mask)
