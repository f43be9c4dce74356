"""The step-by-step Triton forward kernel of the Mamba-1 selective scan over ``(batch, dim, L)``.

It walks time one step at a time with the state in registers, which suits sequences shorter than the state
kernels' chunks (:mod:`.scan_state_kernels`) and inputs read token-major (:mod:`.mamba_tokens`).

A program owns ``BLOCK_D`` channels of one batch element and one group of B/C; every tensor is
``(BLOCK_D, SPLIT)``, channel x lane: a channel's N states are spread over SPLIT lanes, lane j holding
``n = i * SPLIT + j`` for ``i < ceil(N / SPLIT)`` as a tuple of tiles. A step reads one value of u, delta
and z per channel and one of B and C per state, updates ``h = exp(delta * A) * h + delta * u * B`` in
float32 and sums ``C h`` over the lanes; ``UNROLL`` steps form one block of straight-line code, so their
loads and decays are issued ahead of the state's multiply-add chain. Nothing of size ``L * N`` ever reaches
memory.

``PACKED`` (one lane per channel, bfloat16 B and C with the states contiguous, as token-major rows have them):
a step's B and C are read four states to a 64-bit word and unpacked in registers, 2 N / 4 loads instead of 2 N
(H100, the depth model's eight L=32 scans of DA2-S at 518x518: 2.16 -> 1.12 ms). ``STORE_HT`` writes the final
state; an offline pass without a carried state has no use for it (``(batch, dim, N)`` float32, twice the output
of a bfloat16 scan over 32 steps).

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
def _state_values(rows, t, s_l, s_n, lane, valid, N: tl.constexpr, SPLIT: tl.constexpr, PACKED: tl.constexpr):
    """A step's B (or C) for the lane's states, a tuple of float32 tiles: ``rows`` points at state 0 of each
    channel's row. ``PACKED`` reads bfloat16 states four to a 64-bit word (``SPLIT`` 1, contiguous states,
    8-byte aligned rows) and widens each by a shift, as bfloat16 is the upper half of a float32."""
    values = ()
    if PACKED:
        words = (rows + t * s_l).to(tl.pointer_type(tl.int64))
        for q in tl.static_range(N // 4):
            word = tl.load(words + q, mask=valid, other=0)
            for half in tl.static_range(2):
                bits = (word >> (32 * half)).to(tl.int32)
                low = (bits << 16).to(tl.float32, bitcast=True)
                high = (bits & -65536).to(tl.float32, bitcast=True)
                values = values + (low, high)
    else:
        for i in tl.static_range((N + SPLIT - 1) // SPLIT):
            n = i * SPLIT + lane
            values = values + (tl.load(rows + n * s_n + t * s_l, mask=(n < N) & valid, other=0.0).to(tl.float32),)
    return values


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
    dim, L, cpg,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, REVERSE_OUT: tl.constexpr, ACCUMULATE: tl.constexpr, PACKED: tl.constexpr,
    STORE_HT: tl.constexpr,
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
            Bs = _state_values(B_rows, t, sB_l, sB_n, lane, in_range, N, SPLIT, PACKED)
            Cs = _state_values(C_rows, t, sC_l, sC_n, lane, in_range, N, SPLIT, PACKED)
            new = ()
            for i in tl.static_range(NI):
                h = tl.exp2(dt * A2[i]) * hs[i] + dtu * Bs[i]
                y_acc += h * Cs[i]
                new = new + (h,)
            hs = new
            y = tl.sum(y_acc, axis=1, keep_dims=True) + Dv * u
            if ACCUMULATE:
                y += tl.load(y_rows + t_out * sy_l, mask=valid, other=0.0).to(tl.float32)
            if HAS_Z:
                y = y * z * sigmoid(z)
            tl.store(y_rows + t_out * sy_l, y.to(y_ptr.dtype.element_ty), mask=first_lane & in_range)
    if STORE_HT:
        for i in tl.static_range(NI):
            n = i * SPLIT + lane
            tl.store(hT_ptr + b * dim * N + d * N + n, hs[i], mask=d_mask & (n < N))
