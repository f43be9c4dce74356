"""The step-by-step Triton forward kernel of the Mamba-1 selective scan over ``(batch, dim, L)``.

It walks time one step at a time with the state in registers, which suits sequences shorter than the state
kernels' chunks (:mod:`.scan_state_kernels`).

A program owns ``BLOCK_D`` channels of one batch element and one group of B/C; every tensor is
``(BLOCK_D, SPLIT)``, channel x lane: a channel's N states are spread over SPLIT lanes, lane j holding
``n = i * SPLIT + j`` for ``i < ceil(N / SPLIT)`` as a tuple of tiles. A step reads one value of u, delta
and z per channel and one of B and C per state, updates ``h = exp(delta * A) * h + delta * u * B`` in
float32 and sums ``C h`` over the lanes; ``UNROLL`` steps form one block of straight-line code, so their
loads and decays are issued ahead of the state's multiply-add chain. Nothing of size ``L * N`` ever reaches
memory.

``REVERSE_OUT`` reads ``z`` and writes the output at ``L - 1 - t``: the backward direction of a
bidirectional Mamba runs over time-reversed inputs but reads the gate and writes its result in the natural
order, so no flipped copies are made. ``ACCUMULATE`` adds the value already in the output before gating
(the two directions share one gate).
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, sigmoid, softplus


@triton.jit
def _step_inputs(u_rows, dt_rows, z_rows, t, t_out, su_l, sdt_l, sz_l, mask, bias,
                 HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):  # fmt: skip
    """One step's per-channel values ``(u, dt, z)`` in float32 (``dt`` discretised), read by every lane."""
    u = tl.load(u_rows + t * su_l, mask=mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_rows + t * sdt_l, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt = softplus(dt)
    z = u
    if HAS_Z:
        z = tl.load(z_rows + t_out * sz_l, mask=mask, other=0.0).to(tl.float32)
    return u, dt, z


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
    dim, L, cpg,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, REVERSE_OUT: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    # Every tensor is (BLOCK_D, SPLIT): channel x lane. Per-channel values are read by all SPLIT lanes
    # of a channel; lane j holds the states n = i * SPLIT + j, i < NI.
    lane = tl.arange(0, SPLIT)[None, :]
    dl = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None] + 0 * lane
    d_mask = dl < cpg
    d = g * cpg + dl
    NI: tl.constexpr = (N + SPLIT - 1) // SPLIT
    Dv = tl.zeros((BLOCK_D, SPLIT), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D, SPLIT), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    A2 = ()
    hs = ()
    for i in tl.static_range(NI):
        n = i * SPLIT + lane
        mask = d_mask & (n < N)
        A2 = A2 + (tl.load(A_ptr + d * sA_d + n * sA_n, mask=mask, other=0.0) * LOG2E,)
        h = tl.zeros((BLOCK_D, SPLIT), tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + b * dim * N + d * N + n, mask=mask, other=0.0)
        hs = hs + (h,)

    u_rows = u_ptr + b * su_b + d * su_d
    dt_rows = dt_ptr + b * sdt_b + d * sdt_d
    z_rows = z_ptr + b * sz_b + d * sz_d
    y_rows = y_ptr + b * sy_b + d * sy_d
    B_rows = B_ptr + b * sB_b + g * sB_g + 0 * dl
    C_rows = C_ptr + b * sC_b + g * sC_g + 0 * dl
    first_lane = d_mask & (lane == 0)
    for t0 in range(0, L, UNROLL):
        # UNROLL steps in one block: their loads and decays do not wait on the state chain.
        for k in tl.static_range(UNROLL):
            t = t0 + k
            in_range = (t + 0 * dl) < L
            valid = d_mask & in_range
            if REVERSE_OUT:
                t_out = L - 1 - t
            else:
                t_out = t
            u, dt, z = _step_inputs(u_rows, dt_rows, z_rows, t, t_out, su_l, sdt_l, sz_l, valid, bias,
                                    HAS_Z, HAS_BIAS, SOFTPLUS)  # fmt: skip
            dt = tl.where(valid, dt, 0.0)  # steps past the end leave the state unchanged
            dtu = dt * u
            y_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
            new = ()
            for i in tl.static_range(NI):
                n = i * SPLIT + lane
                Bn = tl.load(B_rows + n * sB_n + t * sB_l, mask=(n < N) & in_range, other=0.0).to(tl.float32)
                Cn = tl.load(C_rows + n * sC_n + t * sC_l, mask=(n < N) & in_range, other=0.0).to(tl.float32)
                h = tl.exp2(dt * A2[i]) * hs[i] + dtu * Bn
                y_acc += h * Cn
                new = new + (h,)
            hs = new
            y = tl.sum(y_acc, axis=1, keep_dims=True) + Dv * u
            if ACCUMULATE:
                y += tl.load(y_rows + t_out * sy_l, mask=valid, other=0.0).to(tl.float32)
            if HAS_Z:
                y = y * z * sigmoid(z)
            tl.store(y_rows + t_out * sy_l, y.to(y_ptr.dtype.element_ty), mask=first_lane & in_range)
    for i in tl.static_range(NI):
        n = i * SPLIT + lane
        tl.store(hT_ptr + b * dim * N + d * N + n, hs[i], mask=d_mask & (n < N))
