"""Triton kernels that give the lane kernels time-parallel segments: the state entering every chunk of ``CKPT_L``
steps, and the adjoint carried into every chunk from the right, each from per-chunk sums and one scan over chunks.

A chunk ``c`` maps the state entering it to the state after it by ``h -> P_c h + E_c``, where per state ``n``
``P_c = exp(A_n S_c)`` with ``S_c`` the sum of the chunk's discretised ``delta`` and
``E_c = sum_t exp(A_n S_{>t}) delta_t u_t B_{n, t}`` with ``S_{>t}`` the sum over the chunk's steps after ``t``.
Backward, the adjoint ``x_c`` the chunk receives from the chunk after it (``exp(delta A) q`` at that chunk's first
step, :mod:`.scan_lane_backward_kernels`' ``w``) passes to the chunk before as ``x_{c-1} = P_c x_c + F_c`` with
``F_c = sum_t exp(A_n S_{<=t}) C_{n, t} g_t``, ``g`` the output gradient before the gate and ``S_{<=t}`` the sum up
to and including ``t``. Both are one recurrence over chunks, of the same form.

:func:`selective_scan_chunk_sums_kernel` computes ``S_c`` and ``E_c`` (or ``F_c``) for every chunk whose map the
recurrence uses, all chunks in parallel: per state, one exponential and a sum over the chunk's steps, no scan.
:func:`selective_scan_chunk_states_kernel` then solves the recurrence for each channel by one
``tl.associative_scan`` over its chunks, a block of them at a time, from the initial state (or the final state's
gradient) and writes the state entering every chunk (or the adjoint entering it from the right). The lane kernels
then run every segment of chunks at once, each from its own.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, scan_combine
from .scan_state_kernels import _channel_columns, _chunk_inputs, _gate_gradient, _out_steps, _row_values


@triton.jit
def selective_scan_chunk_sums_kernel(
    u_ptr, dt_ptr, A_ptr, BC_ptr, z_ptr, dy_ptr, bias_ptr, sums_ptr, totals_ptr,
    dim, L, cpg, n_chunks,
    su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sBC_b, sBC_g, sBC_n, sz_b, sz_d, sdy_b, sdy_d,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CKPT_L: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ADJOINT: tl.constexpr,
    REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr,
):  # fmt: skip
    """``S_c`` into ``totals (batch, dim, n_chunks - 1)`` and ``E_c`` (``F_c`` with ``ADJOINT``) into ``sums (batch,
    dim, n_chunks - 1, N)``, float32, at index ``j``: chunk ``j``, or with ``ADJOINT`` chunk ``j + 1`` (the first
    chunk's map is not used backward, nor the last's forward). ``BC`` is B (C with ``ADJOINT``) as ``(batch, G, N,
    L)``; ``z`` and ``dy`` are read only with ``ADJOINT``, at ``L - 1 - t`` with ``REVERSE_OUT``. Grid: ``(batch *
    (n_chunks - 1), G, channel blocks)``."""
    j = tl.program_id(0) % (n_chunks - 1)
    b = (tl.program_id(0) // (n_chunks - 1)).to(tl.int64)
    g = tl.program_id(1)
    c = j + 1 if ADJOINT else j
    d, d_mask, bias = _channel_columns(bias_ptr, cpg, BLOCK_D, HAS_BIAS)
    t = c * CKPT_L + tl.arange(0, CKPT_L)[None, :]
    u, _, dt = _chunk_inputs(
        u_ptr + b * su_b + d * su_d, dt_ptr + b * sdt_b + d * sdt_d, t, d_mask, L, L, 1, 1, bias,
        HAS_BIAS, SOFTPLUS, False,
    )  # fmt: skip
    if ADJOINT:
        t_out = _out_steps(t, c, L, CKPT_L, REVERSE_OUT, FLIP_OUT)
        weights = _gate_gradient(
            dy_ptr + b * sdy_b + d * sdy_d, z_ptr + b * sz_b + d * sz_d, t, t_out, d_mask, L, L, 1, 1,
            HAS_Z, REVERSE_OUT, FLIP_OUT, False,
        )  # fmt: skip
        spans = tl.cumsum(dt, axis=1)  # S_{<=t}
    else:
        weights = dt * u
        spans = tl.cumsum(dt, axis=1, reverse=True) - dt  # S_{>t}
    rows = (b * dim + d) * (n_chunks - 1) + j
    tl.store(totals_ptr + rows, tl.sum(dt, axis=1, keep_dims=True), mask=d_mask)
    BC_row = BC_ptr + b * sBC_b + g * sBC_g
    for n in tl.static_range(N):
        a2 = tl.load(A_ptr + d * sA_d + n * sA_n, mask=d_mask, other=0.0).to(tl.float32) * LOG2E
        values = _row_values(BC_row + n * sBC_n, t, 1, t < L, L, L, False)
        total = tl.sum(tl.exp2(spans * a2) * weights * values, axis=1, keep_dims=True)
        tl.store(sums_ptr + rows * N + n, total, mask=d_mask)


@triton.jit
def selective_scan_chunk_states_kernel(
    sums_ptr, totals_ptr, A_ptr, start_ptr, out_ptr,
    dim, n_chunks, sA_d, sA_n,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_C: tl.constexpr, HAS_START: tl.constexpr, ADJOINT: tl.constexpr,
):  # fmt: skip
    """The recurrence over chunks for one ``(batch, dim)`` row a program, from ``start`` (``(batch, dim, N)``, the
    initial state, or with ``ADJOINT`` the final state's gradient; zero without ``HAS_START``) and the chunks' sums
    (:func:`selective_scan_chunk_sums_kernel`): into ``out (batch, dim, n_chunks, N)`` float32 the state entering
    each chunk, or with ``ADJOINT`` the adjoint each chunk receives from the one after it. The chunks' maps are
    composed in the order the recurrence applies them, ``BLOCK_C`` at a time: ``i``-th the sums at index ``i``
    forward, ``n_chunks - 2 - i`` with ``ADJOINT``; the value after the ``i``-th belongs to the next chunk in that
    order."""
    row = tl.program_id(0).to(tl.int64)
    d = row % dim
    n = tl.arange(0, NP)[None, :]
    n_mask = n < N
    a2 = tl.load(A_ptr + d * sA_d + n * sA_n, mask=n_mask, other=0.0).to(tl.float32) * LOG2E
    x = tl.zeros((1, NP), tl.float32)
    if HAS_START:
        x = tl.load(start_ptr + row * N + n, mask=n_mask, other=0.0)
    first = n_chunks - 1 if ADJOINT else 0
    out_rows = out_ptr + row * n_chunks * N
    tl.store(out_rows + first * N + n, x, mask=n_mask)
    composed = tl.arange(0, BLOCK_C)[:, None]
    for i0 in range(0, n_chunks - 1, BLOCK_C):
        i = i0 + composed
        mask = i < n_chunks - 1
        j = n_chunks - 2 - i if ADJOINT else i
        totals = tl.load(totals_ptr + row * (n_chunks - 1) + j, mask=mask, other=0.0)
        sums = tl.load(sums_ptr + (row * (n_chunks - 1) + j) * N + n, mask=mask & n_mask, other=0.0)
        growth, states = tl.associative_scan((tl.exp2(totals * a2), sums), 0, scan_combine)
        states = states + growth * x
        target = j if ADJOINT else j + 1
        tl.store(out_rows + target * N + n, states, mask=mask & n_mask)
        last = (composed == tl.minimum(BLOCK_C, n_chunks - 1 - i0) - 1) & n_mask
        x = tl.sum(tl.where(last, states, 0.0), axis=0, keep_dims=True)
