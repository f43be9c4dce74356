"""The lane-per-channel Triton backward kernel of the Mamba-1 selective scan, the counterpart of
:mod:`.scan_lane_kernels`' forward.

A program is one warp, laid out as the forward's: ``BLOCK_D = 32 / 2 ** LOG_PARTS`` channels of one batch element and
one group of B/C, each channel on ``2 ** LOG_PARTS`` lanes (its *parts*) that split its states, ``2 ** LOG_NS`` each
(a lane's *slots*). Splitting the states gives the grid more warps to hide latency with. As in the forward, each part
computes the channel's own per-step values (softplus, gate, the gradients of ``u``, ``delta`` and ``z``) at its own
steps of a block only (:func:`.scan_lane_kernels.own_steps`); every part receives the block's discretised ``delta``,
``delta u`` and gated output gradient by shuffles, and the per-step sums over the states reach the owner by a
butterfly. The program walks the chunks of ``CKPT_L`` steps in reverse, each from the state the forward stored at
its start, in two passes of ``STEPS``-step blocks:

1. forward through the chunk with the lane's states in registers, writing the state entering each block to a scratch
   buffer (``(programs, CKPT_L / STEPS, slots, 32)`` float32, the lanes of a slot side by side);
2. backward through the chunk's blocks. Per state, the block's eight states are recomputed from the scratch and the
   adjoint ``q_t = g_t C_t + exp(delta_{t+1} A) q_{t+1}`` is solved step by step in reverse, carried between blocks
   and chunks in registers, as are the sums of dA. About a dozen float operations a state and step give the
   gradients' per-channel parts; ``u``'s and ``delta``'s are sums over the states, accumulated in the lane and
   then over the channel's parts at the owner's steps.

The gradients of B and C at a step are sums over the channels, over lanes. Their ``2 STEPS`` values per slot a block
are reduced by a butterfly in which every exchange halves what is left: lanes swap half of their values with the
lane ``m`` apart and keep the sum of the other half (:func:`_lanes_paired`), the first exchange pairing a state's dB
with its dC, the next ones pairs of slots as soon as both are solved, so that few values stay live. At the end each
lane holds the eight steps of one (tensor, state) row, added to memory as two vectors (:func:`_reduced_row`): about 4
operations a value, where a reduction of every value across the lanes takes 10, and one atomic add per row and block
rather than one per channel, state and step.

``REVERSE_OUT`` reads ``z`` and the output gradient and writes the gate's gradient at ``L - 1 - t`` (the backward
direction of a bidirectional Mamba), ``ACCUMULATE_DZ`` adds the gate gradient's current value: the two directions
share one gate.
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import triton
import triton.language as tl

from .common import LN2, sigmoid, softplus_hw
from .scan_lane_kernels import (
    STEPS,
    WARP,
    lanes_exchanged,
    mirrored,
    own_outputs,
    own_steps,
    parts_gathered,
    parts_scattered,
    parts_summed,
    program_channels,
    program_segment,
    slot_columns,
    slot_real,
    slot_steps,
    stack_steps,
)


@triton.jit
def _lanes_paired(lo, hi, lane, m: tl.constexpr, FAST_MATH: tl.constexpr):
    """One butterfly exchange: lanes whose bit ``m`` is clear end with ``lo`` summed with the lane ``m`` apart, the
    others with ``hi`` so summed; half of the values of ``lo`` and ``hi (32, S)`` are sent."""
    up = (lane & m) != 0
    return tl.where(up, hi, lo) + lanes_exchanged(tl.where(up, lo, hi), m, FAST_MATH)


@triton.jit
def _lanes_summed(x, LOG_D: tl.constexpr, LOG_NS: tl.constexpr, FAST_MATH: tl.constexpr):
    """``x`` after the butterfly's exchanges over ``1 + LOG_NS`` lane bits (:func:`_lanes_paired`), summed over the
    channel bits below them (where there are fewer slots than the channels can pair)."""
    for i in tl.static_range(LOG_D - 1 - LOG_NS):
        x += lanes_exchanged(x, (1 << (LOG_D - 2 - LOG_NS)) >> i, FAST_MATH)
    return x


@triton.jit
def _reduced_row(lane, N: tl.constexpr, LOG_D: tl.constexpr, LOG_NS: tl.constexpr):
    """Which row a lane holds after the butterfly (:func:`_lanes_paired`): the tensor (0 dB, 1 dC) from channel bit
    ``BLOCK_D / 2``, the slot from the channel bits below it read from the top (slot bit ``i`` from ``BLOCK_D >> (2 +
    i)``), and whether the lane adds it to memory (the lowest of the lanes that hold the same sum, and a state below
    N)."""
    ch = lane % (1 << LOG_D)
    slot = tl.zeros(lane.shape, tl.int32)
    for i in tl.static_range(LOG_NS):
        slot += ((ch >> (LOG_D - 2 - i)) & 1) << i
    state = (lane >> LOG_D) * (1 << LOG_NS) + slot
    writes = ((ch & ((1 << (LOG_D - 1 - LOG_NS)) - 1)) == 0) & (state < N)
    return (ch >> (LOG_D - 1)) & 1, state, writes


@triton.jit
def _block_inputs(u_rows, dt_rows, t, col_mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                  FAST_MATH: tl.constexpr):  # fmt: skip
    """A lane's ``u``, raw ``delta`` (with the bias) and discretised ``delta`` at its own steps ``t`` of a block,
    float32 ``(32, OWN)``."""
    u = tl.load(u_rows + t, mask=col_mask, other=0.0).to(tl.float32)
    dt_raw = tl.load(dt_rows + t, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt_raw += bias
    dt = dt_raw
    if SOFTPLUS:
        dt = softplus_hw(dt_raw, FAST_MATH)
    return u, dt_raw, dt


@triton.jit
def selective_scan_bwd_lane_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, dhT_ptr, ckpt_ptr, carry_ptr, sub_ptr,
    dh0_ptr, du_ptr, ddt_ptr, dz_ptr, dBC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    dim, L, cpg, G, n_chunks, n_segments, segment_chunks,
    su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sz_b, sz_d, sdy_b, sdy_d,
    sdBC_t, sdBC_n,
    N: tl.constexpr, LOG_NS: tl.constexpr, LOG_PARTS: tl.constexpr, CKPT_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, SEGMENTED: tl.constexpr, REVERSE_OUT: tl.constexpr,
    ACCUMULATE_DZ: tl.constexpr, FAST_MATH: tl.constexpr,
):  # fmt: skip
    LOG_D: tl.constexpr = 5 - LOG_PARTS
    BLOCK_D: tl.constexpr = WARP >> LOG_PARTS
    NS: tl.constexpr = 1 << LOG_NS
    b, segment, start, end = program_segment(L, n_segments, segment_chunks, CKPT_L)
    first_chunk = start // CKPT_L
    last_chunk = tl.cdiv(end, CKPT_L) - 1
    g = tl.program_id(1)
    program = (tl.program_id(0) * G + g) * tl.num_programs(2) + tl.program_id(2)
    lane = tl.arange(0, WARP)
    part, d, d_mask, Dv, bias = program_channels(D_ptr, bias_ptr, cpg, LOG_PARTS, HAS_D, HAS_BIAS)
    # dA, dD and the delta bias's gradient are summed per batch element and segment: (batch, segments, dim, ...)
    sum_rows = tl.program_id(0).to(tl.int64) * dim + d
    col = d[:, None]
    col_mask = d_mask[:, None]
    first = part * NS  # the lane's first state; slot i holds state first + i
    state_rows = (b * dim + d) * N + first
    chunk_rows = (b * dim + d) * n_chunks * N + first
    # per slot, w = exp(delta_{t+1} A) q_{t+1}: the gradient of the state before the step being solved; entering a
    # segment, the adjoint its last chunk receives, as the chunk kernels stored it
    if SEGMENTED:
        A2, w = slot_columns(
            A_ptr, carry_ptr, d, d_mask, part, chunk_rows + last_chunk * N, sA_d, sA_n, N, LOG_NS, LOG_PARTS, True
        )
    else:
        A2, w = slot_columns(A_ptr, dhT_ptr, d, d_mask, part, state_rows, sA_d, sA_n, N, LOG_NS, LOG_PARTS, HAS_DHT)
    dA = ()
    for _slot in tl.static_range(NS):
        dA = dA + (tl.zeros((WARP,), tl.float32),)
    steps = tl.arange(0, STEPS)[None, :]
    u_rows = u_ptr + b * su_b + col * su_d
    dt_rows = dt_ptr + b * sdt_b + col * sdt_d
    z_rows = z_ptr + b * sz_b + col * sz_d
    dy_rows = dy_ptr + b * sdy_b + col * sdy_d
    grad_rows = (b * dim + col) * L  # du, ddelta, dz: contiguous (batch, dim, L)
    B_rows = B_ptr + b * sB_b + g * sB_g + first[:, None] * sB_n
    C_rows = C_ptr + b * sC_b + g * sC_g + first[:, None] * sC_n
    ckpt_rows = ckpt_ptr + chunk_rows
    sub_rows = sub_ptr + program * (CKPT_L // STEPS) * NS * WARP + lane
    tensor, state, writes = _reduced_row(lane[:, None], N, LOG_D, LOG_NS)
    dBC_rows = dBC_ptr + tensor * sdBC_t + (b * G + g) * N * sdBC_n + state * sdBC_n
    OWN: tl.constexpr = STEPS >> LOG_PARTS
    own_first = own_steps(part, LOG_PARTS)  # the steps of a block whose per-channel gradients the lane computes
    own = own_first + tl.arange(0, OWN)[None, :]
    dD = tl.zeros(own.shape, tl.float32)
    dbias = tl.zeros(own.shape, tl.float32)
    for r_chunk in range(0, last_chunk + 1 - first_chunk):
        c = last_chunk - r_chunk
        blocks = (tl.minimum(L - c * CKPT_L, CKPT_L)) // STEPS
        # pass 1: the state entering each block of the chunk, into the scratch rows
        h = ()
        for i in tl.static_range(NS):
            real = slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)
            h = h + (tl.load(ckpt_rows + c * N + i, mask=real, other=0.0),)
        for j in range(0, blocks):
            t = c * CKPT_L + j * STEPS
            for i in tl.static_range(NS):
                tl.store(sub_rows + (j * NS + i) * WARP, h[i])
            u, _, dt = _block_inputs(u_rows, dt_rows, t + own, col_mask, bias, HAS_BIAS, SOFTPLUS, FAST_MATH)
            dts = parts_gathered(dt, LOG_PARTS, FAST_MATH)
            dtus = parts_gathered(dt * u, LOG_PARTS, FAST_MATH)
            advanced = ()
            for i in tl.static_range(NS):
                Bs = slot_steps(B_rows + i * sB_n, t, 1, slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)[:, None], L)
                hi = h[i]
                for k in tl.static_range(STEPS):
                    hi = tl.exp2(dts[k] * A2[i]) * hi + dtus[k] * Bs[k]
                advanced = advanced + (hi,)
            h = advanced
        tl.debug_barrier()  # the scratch rows, written and read by the same lanes, complete before pass 2
        # pass 2: the chunk's blocks in reverse
        for r_block in range(0, blocks):
            j = blocks - 1 - r_block
            t = c * CKPT_L + j * STEPS
            t_out = own_outputs(t + own_first, L, OWN, REVERSE_OUT)
            u, dt_raw, dt = _block_inputs(u_rows, dt_rows, t + own, col_mask, bias, HAS_BIAS, SOFTPLUS, FAST_MATH)
            dy = mirrored(tl.load(dy_rows + t_out, mask=col_mask, other=0.0).to(tl.float32), REVERSE_OUT)
            gy = dy
            if HAS_Z:
                zt = mirrored(tl.load(z_rows + t_out, mask=col_mask, other=0.0).to(tl.float32), REVERSE_OUT)
                sig = sigmoid(zt)
                gy = dy * zt * sig
            dts = parts_gathered(dt, LOG_PARTS, FAST_MATH)
            dtus = parts_gathered(dt * u, LOG_PARTS, FAST_MATH)
            gys = parts_gathered(gy, LOG_PARTS, FAST_MATH)
            r = ()  # per step: sum_n q_n B_n
            s = ()  # per step: sum_n q_n exp(delta A_n) h_{n, t-1} A_n log2 e
            ys = ()  # per step: sum_n C_n h_n, the output before D and the gate
            for _step in tl.static_range(STEPS):
                r = r + (tl.zeros((WARP,), tl.float32),)
                s = s + (tl.zeros((WARP,), tl.float32),)
                ys = ys + (tl.zeros((WARP,), tl.float32),)
            w_next = ()
            dA_next = ()
            for i in tl.static_range(NS):
                real = slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)
                Bs = slot_steps(B_rows + i * sB_n, t, 1, real[:, None], L)
                Cs = slot_steps(C_rows + i * sC_n, t, 1, real[:, None], L)
                hs = (tl.load(sub_rows + (j * NS + i) * WARP),)  # the state entering step k at hs[k]
                decays = ()
                ys_next = ()
                for k in tl.static_range(STEPS):
                    decay = tl.exp2(dts[k] * A2[i])
                    hk = decay * hs[k] + dtus[k] * Bs[k]
                    decays = decays + (decay,)
                    hs = hs + (hk,)
                    ys_next = ys_next + (ys[k] + hk * Cs[k],)
                if HAS_Z:
                    ys = ys_next
                wi = w[i]
                dAi = dA[i]
                dBs = ()
                dCs = ()
                r_next = ()
                s_next = ()
                for k in tl.static_range(STEPS - 1, -1, -1):
                    q = gys[k] * Cs[k] + wi
                    dBs = (q * dtus[k],) + dBs
                    dCs = (gys[k] * hs[k + 1],) + dCs
                    r_next = (r[k] + q * Bs[k],) + r_next
                    wi = decays[k] * q
                    qd = wi * hs[k]
                    s_next = (s[k] + qd * A2[i],) + s_next
                    dAi += qd * dts[k]
                r = r_next
                s = s_next
                w_next = w_next + (wi,)
                dA_next = dA_next + (dAi,)
                x = _lanes_paired(stack_steps(dBs), stack_steps(dCs), lane[:, None], BLOCK_D // 2, FAST_MATH)
                # the butterfly over slots: pairs, then pairs of pairs, ... as soon as both are solved
                if i % 2 == 0:
                    level0 = x
                else:
                    x = _lanes_paired(level0, x, lane[:, None], BLOCK_D // 4, FAST_MATH)
                    if i % 4 == 1:
                        level1 = x
                    else:
                        x = _lanes_paired(level1, x, lane[:, None], BLOCK_D // 8, FAST_MATH)
                        if i % 8 == 3:
                            level2 = x
                        else:
                            x = _lanes_paired(level2, x, lane[:, None], BLOCK_D // 16, FAST_MATH)
                            if i % 16 == 7:
                                level3 = x
                            else:
                                x = _lanes_paired(level3, x, lane[:, None], BLOCK_D // 32, FAST_MATH)
            w = w_next
            dA = dA_next
            dBC = _lanes_summed(x, LOG_D, LOG_NS, FAST_MATH)
            tl.atomic_add(dBC_rows + t + steps, dBC, mask=writes, sem="relaxed")
            r = parts_scattered(r, part, LOG_PARTS, FAST_MATH)
            ddt = u * r + parts_scattered(s, part, LOG_PARTS, FAST_MATH) * LN2
            if SOFTPLUS:
                ddt = ddt * sigmoid(dt_raw)
            du = dt * r + Dv * gy
            tl.store(du_ptr + grad_rows + t + own, du.to(du_ptr.dtype.element_ty), mask=col_mask)
            tl.store(ddt_ptr + grad_rows + t + own, ddt.to(ddt_ptr.dtype.element_ty), mask=col_mask)
            dD += gy * u
            dbias += ddt
            if HAS_Z:
                y = parts_scattered(ys, part, LOG_PARTS, FAST_MATH) + Dv * u
                dz = mirrored(dy * y * sig * (1.0 + zt * (1.0 - sig)), REVERSE_OUT)
                if ACCUMULATE_DZ:
                    dz += tl.load(dz_ptr + grad_rows + t_out, mask=col_mask, other=0.0).to(tl.float32)
                tl.store(dz_ptr + grad_rows + t_out, dz.to(dz_ptr.dtype.element_ty), mask=col_mask)
    for i in tl.static_range(NS):
        real = slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)
        tl.store(dA_ptr + sum_rows * N + first + i, dA[i], mask=real)
        if HAS_H0:
            if segment == 0:
                tl.store(dh0_ptr + state_rows + i, w[i], mask=real)
    dD = tl.sum(parts_summed(tl.sum(dD, axis=1)[:, None], LOG_D, FAST_MATH), axis=1)
    dbias = tl.sum(parts_summed(tl.sum(dbias, axis=1)[:, None], LOG_D, FAST_MATH), axis=1)
    tl.store(dD_ptr + sum_rows, dD, mask=d_mask & (part == 0))
    tl.store(dbias_ptr + sum_rows, dbias, mask=d_mask & (part == 0))
