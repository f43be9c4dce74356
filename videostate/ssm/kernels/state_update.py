"""One recurrence step on the GPU for both state layouts: Mamba-1 ``(batch, dim, N)`` and Mamba-2
``(batch, heads, headdim, N)``.

Channels are indexed as ``(head, p)``; Mamba-1 is ``headdim = 1`` with A per ``(channel, n)`` and
Mamba-2 broadcasts its per-head ``A``, ``dt`` and bias over ``p`` and ``n`` through zero strides, so
one kernel serves both. It is forward-only (decoding); when gradients are needed the reference runs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..selective_scan import selective_state_update_reference
from ..ssd import NO_LIMIT, ssd_state_update_reference
from .common import any_float64, next_power_of_2, sigmoid, softplus


@triton.jit
def state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, next_ptr,
    heads, headdim, heads_per_group, dt_min, dt_max,
    ss_b, ss_h, ss_p, ss_n, sx_b, sx_h, sx_p, sdt_b, sdt_h, sdt_p, sA_h, sA_p, sA_n,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sD_h, sD_p, sz_b, sz_h, sz_p, sbias_h, sbias_p,
    N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < heads * headdim
    h = c // headdim
    p = c % headdim
    g = h // heads_per_group
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    cn_mask = c_mask[:, None] & n_mask[None, :]
    x = tl.load(x_ptr + b * sx_b + h * sx_h + p * sx_p, mask=c_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h + p * sdt_p, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * sbias_h + p * sbias_p, mask=c_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    A = tl.load(A_ptr + h[:, None] * sA_h + p[:, None] * sA_p + n[None, :] * sA_n, mask=cn_mask, other=0.0)
    B = tl.load(B_ptr + b * sB_b + g[:, None] * sB_g + n[None, :] * sB_n, mask=cn_mask, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * sC_b + g[:, None] * sC_g + n[None, :] * sC_n, mask=cn_mask, other=0.0).to(tl.float32)
    state_offsets = b * ss_b + h[:, None] * ss_h + p[:, None] * ss_p + n[None, :] * ss_n
    state = tl.load(state_ptr + state_offsets, mask=cn_mask, other=0.0).to(tl.float32)
    state = state * tl.exp(dt[:, None] * A.to(tl.float32)) + (dt * x)[:, None] * B
    y = tl.sum(state * C, axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h * sD_h + p * sD_p, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * sz_b + h * sz_h + p * sz_p, mask=c_mask, other=0.0).to(tl.float32)
        y = y * z * sigmoid(z)
    tl.store(y_ptr + b * heads * headdim + c, y.to(y_ptr.dtype.element_ty), mask=c_mask)
    next_offsets = (b * heads * headdim + c[:, None]) * N + n[None, :]
    tl.store(next_ptr + next_offsets, state.to(next_ptr.dtype.element_ty), mask=cn_mask)


def _needs_reference(*tensors) -> bool:
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return needs_grad or any_float64(*tensors)


def _launch(state4, x3, dt3, A3, B3, C3, D2, z3, bias2, heads_per_group, dt_softplus, dt_limit):
    """All channel tensors as ``(batch, heads, headdim[, N])`` views; returns ``(y, next_state)`` flat."""
    batch, heads, headdim, n = state4.shape
    y = torch.empty(batch, heads * headdim, device=x3.device, dtype=x3.dtype)
    next_state = torch.empty(batch, heads * headdim, n, device=x3.device, dtype=state4.dtype)
    block_n = next_power_of_2(n)
    block_c = max(1, min(64, 4096 // block_n))
    dt_min, dt_max = (float(v) for v in dt_limit)
    has_limit = tuple(dt_limit) != NO_LIMIT
    zeros = (0, 0)
    state_update_kernel[(batch, triton.cdiv(heads * headdim, block_c))](
        state4, x3, dt3, A3, B3, C3, x3 if D2 is None else D2, x3 if z3 is None else z3,
        x3 if bias2 is None else bias2, y, next_state,
        heads, headdim, heads_per_group, dt_min, dt_max if math.isfinite(dt_max) else 3.0e38,
        *state4.stride(), *x3.stride(), *dt3.stride(), *A3.stride(), *B3.stride(), *C3.stride(),
        *(zeros if D2 is None else D2.stride()), *((0, 0, 0) if z3 is None else z3.stride()),
        *(zeros if bias2 is None else bias2.stride()),
        N=n, BLOCK_N=block_n, BLOCK_C=block_c, HAS_D=D2 is not None, HAS_Z=z3 is not None,
        HAS_BIAS=bias2 is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
    )  # fmt: skip
    return y, next_state


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One Mamba-1 step (see :func:`videostate.ssm.selective_scan.selective_state_update`)."""
    if _needs_reference(state, x, dt, A, B, C, D, z, dt_bias):
        return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    dim = state.shape[1]
    B3 = B if B.dim() == 3 else B[:, None]
    C3 = C if C.dim() == 3 else C[:, None]
    groups = B3.shape[1]
    y, next_state = _launch(
        state[:, :, None], x[:, :, None], dt[:, :, None], A[:, None], B3, C3,
        None if D is None else D[:, None], None if z is None else z[:, :, None],
        None if dt_bias is None else dt_bias[:, None], dim // groups, dt_softplus, NO_LIMIT,
    )  # fmt: skip
    return y, next_state


def ssd_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_LIMIT):
    """One Mamba-2 step (see :func:`videostate.ssm.ssd.ssd_state_update`)."""
    if _needs_reference(state, x, dt, A, B, C, D, z, dt_bias):
        return ssd_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    batch, heads, headdim, n = state.shape
    groups = B.shape[1]
    A3 = A[:, None, None].expand(heads, headdim, n)
    D2 = None if D is None else (D[:, None].expand(heads, headdim) if D.dim() == 1 else D)
    bias2 = None if dt_bias is None else dt_bias[:, None].expand(heads, headdim)
    y, next_state = _launch(
        state, x, dt[:, :, None].expand(batch, heads, headdim), A3, B, C, D2, z, bias2,
        heads // groups, dt_softplus, dt_limit,
    )  # fmt: skip
    return y.view(batch, heads, headdim), next_state.view(batch, heads, headdim, n)
