"""Triton kernels of the Mamba-1 selective scan: forward and backward over ``(batch, dim, L)``.

Both kernels walk time one step at a time with the state in registers. A program owns ``BLOCK_D``
channels of one batch element and one group of B/C; every tensor is ``(BLOCK_D, SPLIT)``, channel x
lane: a channel's N states are spread over SPLIT lanes, lane j holding ``n = i * SPLIT + j`` for
``i < ceil(N / SPLIT)`` as a tuple of tiles. A step reads one value of u, delta and z per channel and
one of B and C per state, updates ``h = exp(delta * A) * h + delta * u * B`` in float32 and sums
``C h`` over the lanes. Nothing of size ``L * N`` ever reaches memory.

The backward kernel runs two passes in one program: a forward pass that writes the state entering
each chunk of ``CHUNK`` steps (``(batch, dim, L / CHUNK, N)``, float32), then a reverse pass over the
chunks that recomputes a chunk's states into registers and walks it backwards, carrying the adjoint
``q_t = g_t C_t + exp(delta_{t+1} A) q_{t+1}``. The per-step terms of dB and dC are summed over the
program's channels in one reduction per chunk and added to float32 buffers atomically; those of A, D
and the delta bias are written per batch element and summed by the caller.

``REVERSE_OUT`` reads ``z`` and the output gradient and writes the output at ``L - 1 - t``: the
backward direction of a bidirectional Mamba runs over time-reversed inputs but reads the gate and
writes its result in the natural order, so no flipped copies are made. ``ACCUMULATE`` adds the value
already in the output before gating (the two directions share one gate).
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, sigmoid, softplus


@triton.jit
def _discretize(dt_raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    dt = dt_raw
    if HAS_BIAS:
        dt = dt + bias[:, None]
    if SOFTPLUS:
        dt = softplus(dt)
    return dt


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
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, REVERSE_OUT: tl.constexpr, ACCUMULATE: tl.constexpr,
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
    if STORE_HT:
        for i in tl.static_range(NI):
            n = i * SPLIT + lane
            tl.store(hT_ptr + b * dim * N + d * N + n, hs[i], mask=d_mask & (n < N))


@triton.jit
def _join_all(xs, LEVELS: tl.constexpr):
    """Stack ``2**LEVELS`` equal-shaped tensors along new trailing size-2 axes (held in-thread)."""
    for level in tl.static_range(LEVELS):
        pairs = ()
        for j in tl.static_range(2 ** (LEVELS - level - 1)):
            pairs = pairs + (tl.join(xs[2 * j], xs[2 * j + 1]),)
        xs = pairs
    return xs[0]


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, dy_ptr, dhT_ptr, ckpt_ptr,
    du_ptr, ddt_ptr, dz_ptr, dBC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, L, cpg, G, n_chunks, dC_offset,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l, sdy_b, sdy_d, sdy_l,
    N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, JOIN_LEVELS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, REVERSE_OUT: tl.constexpr, ACCUMULATE_DZ: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    lane_1d = tl.arange(0, SPLIT)
    lane = lane_1d[None, :]
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
    state_offsets = b * dim * N + d * N
    A = ()
    hs = ()
    for i in tl.static_range(NI):
        n = i * SPLIT + lane
        mask = d_mask & (n < N)
        A = A + (tl.load(A_ptr + d * sA_d + n * sA_n, mask=mask, other=0.0).to(tl.float32),)
        h = tl.zeros((BLOCK_D, SPLIT), tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + state_offsets + n, mask=mask, other=0.0)
        hs = hs + (h,)

    u_rows = u_ptr + b * su_b + d * su_d
    dt_rows = dt_ptr + b * sdt_b + d * sdt_d
    z_rows = z_ptr + b * sz_b + d * sz_d
    dy_rows = dy_ptr + b * sdy_b + d * sdy_d
    B_rows = B_ptr + b * sB_b + g * sB_g + 0 * dl
    C_rows = C_ptr + b * sC_b + g * sC_g + 0 * dl
    grad_rows = b * dim * L + d * L  # du, ddt, dz are contiguous (batch, dim, L)
    ckpt_rows = ckpt_ptr + (b * dim + d) * n_chunks * N
    first_lane = d_mask & (lane == 0)

    # Pass 1: the state entering every chunk of CHUNK steps.
    for c in range(0, n_chunks):
        for i in tl.static_range(NI):
            n = i * SPLIT + lane
            tl.store(ckpt_rows + c * N + n, hs[i], mask=d_mask & (n < N))
        for k in tl.static_range(CHUNK):
            t = c * CHUNK + k
            in_range = (t + 0 * dl) < L
            valid = d_mask & in_range
            u, dt, _ = _step_inputs(u_rows, dt_rows, z_rows, t, t, su_l, sdt_l, sz_l, valid, bias,
                                    False, HAS_BIAS, SOFTPLUS)  # fmt: skip
            dt = tl.where(valid, dt, 0.0)
            new = ()
            for i in tl.static_range(NI):
                n = i * SPLIT + lane
                Bn = tl.load(B_rows + n * sB_n + t * sB_l, mask=(n < N) & in_range, other=0.0).to(tl.float32)
                new = new + (tl.exp2(dt * A[i] * LOG2E) * hs[i] + dt * u * Bn,)
            hs = new

    # Pass 2: chunks in reverse. Recompute the chunk's states in registers, then walk it backwards
    # carrying the adjoint q_t = g_t C_t + exp(dt_{t+1} A) q_{t+1} (``carry`` = the second term).
    carry = ()
    dA_acc = ()
    for i in tl.static_range(NI):
        n = i * SPLIT + lane
        q = tl.zeros((BLOCK_D, SPLIT), tl.float32)
        if HAS_DHT:
            q = tl.load(dhT_ptr + state_offsets + n, mask=d_mask & (n < N), other=0.0)
        carry = carry + (q,)
        dA_acc = dA_acc + (tl.zeros((BLOCK_D, SPLIT), tl.float32),)
    dD_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
    for c_rev in range(0, n_chunks):
        c = n_chunks - 1 - c_rev
        h_in = ()
        for i in tl.static_range(NI):
            n = i * SPLIT + lane
            h_in = h_in + (tl.load(ckpt_rows + c * N + n, mask=d_mask & (n < N), other=0.0),)
        states = ()  # states[k][i]: h after step k of the chunk
        decays = ()
        steps = ()  # steps[k]: (u, dt, sigmoid of the raw dt, output before the gate)
        running = h_in
        for k in tl.static_range(CHUNK):
            t = c * CHUNK + k
            in_range = (t + 0 * dl) < L
            valid = d_mask & in_range
            u, dt, _ = _step_inputs(u_rows, dt_rows, z_rows, t, t, su_l, sdt_l, sz_l, valid, bias,
                                    False, HAS_BIAS, SOFTPLUS)  # fmt: skip
            dt_raw = tl.load(dt_rows + t * sdt_l, mask=valid, other=0.0).to(tl.float32) + bias
            dt = tl.where(valid, dt, 0.0)
            y_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
            new = ()
            a_k = ()
            for i in tl.static_range(NI):
                n = i * SPLIT + lane
                Bn = tl.load(B_rows + n * sB_n + t * sB_l, mask=(n < N) & in_range, other=0.0).to(tl.float32)
                Cn = tl.load(C_rows + n * sC_n + t * sC_l, mask=(n < N) & in_range, other=0.0).to(tl.float32)
                a = tl.exp2(dt * A[i] * LOG2E)
                hn = a * running[i] + dt * u * Bn
                y_acc += hn * Cn
                new = new + (hn,)
                a_k = a_k + (a,)
            running = new
            states = states + (running,)
            decays = decays + (a_k,)
            steps = steps + ((u, dt, sigmoid(dt_raw), tl.sum(y_acc, axis=1, keep_dims=True) + Dv * u),)

        grads = ()  # per-channel terms of dB and dC of the chunk, summed over channels below
        offsets = ()
        for j in tl.static_range(CHUNK - 1, -1, -1):
            t = c * CHUNK + j
            in_range = (t + 0 * dl) < L
            valid = d_mask & in_range
            if REVERSE_OUT:
                t_out = L - 1 - t
            else:
                t_out = t
            u, dt, dt_sig, y_pre = steps[j]
            dy = tl.load(dy_rows + t_out * sdy_l, mask=valid, other=0.0).to(tl.float32)
            if HAS_Z:
                zt = tl.load(z_rows + t_out * sz_l, mask=valid, other=0.0).to(tl.float32)
                sig = sigmoid(zt)
                dz = dy * y_pre * sig * (1.0 + zt * (1.0 - sig))
                if ACCUMULATE_DZ:
                    dz += tl.load(dz_ptr + grad_rows + t_out, mask=valid, other=0.0).to(tl.float32)
                tl.store(dz_ptr + grad_rows + t_out, dz.to(dz_ptr.dtype.element_ty), mask=valid & (lane == 0))
                gy = dy * zt * sig
            else:
                gy = dy
            dD_acc += gy * u
            ddt_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
            du_acc = tl.zeros((BLOCK_D, SPLIT), tl.float32)
            new_carry = ()
            new_dA = ()
            for i in tl.static_range(NI):
                n = i * SPLIT + lane
                n_ok = (n < N) & in_range
                Bn = tl.load(B_rows + n * sB_n + t * sB_l, mask=n_ok, other=0.0).to(tl.float32)
                Cn = tl.load(C_rows + n * sC_n + t * sC_l, mask=n_ok, other=0.0).to(tl.float32)
                q = gy * Cn + carry[i]
                if j == 0:
                    h_prev = h_in[i]
                else:
                    h_prev = states[j - 1][i]
                a = decays[j][i]
                through_decay = q * a * h_prev  # q_t * exp(dt_t A) h_{t-1}
                ddt_acc += through_decay * A[i] + q * Bn * u
                du_acc += q * Bn
                new_dA = new_dA + (dA_acc[i] + through_decay * dt,)
                new_carry = new_carry + (a * q,)
                n_1d = i * SPLIT + lane_1d
                offset = tl.where((n_1d < N) & (t < L), ((b * G + g) * N + n_1d) * L + t, -1)
                grads = grads + (q * dt * u, gy * states[j][i])
                offsets = offsets + (offset, tl.where(offset >= 0, offset + dC_offset, -1))
            carry = new_carry
            dA_acc = new_dA
            ddt = tl.sum(ddt_acc, axis=1, keep_dims=True)
            if SOFTPLUS:
                ddt = ddt * dt_sig
            ddt = tl.where(valid, ddt, 0.0)
            dbias_acc += ddt
            du = dt * tl.sum(du_acc, axis=1, keep_dims=True) + Dv * gy
            tl.store(du_ptr + grad_rows + t, du.to(du_ptr.dtype.element_ty), mask=valid & (lane == 0))
            tl.store(ddt_ptr + grad_rows + t, ddt.to(ddt_ptr.dtype.element_ty), mask=valid & (lane == 0))
        for _ in tl.static_range(2**JOIN_LEVELS - 2 * NI * CHUNK):
            grads = grads + (tl.zeros((BLOCK_D, SPLIT), tl.float32),)
            offsets = offsets + (tl.full((SPLIT,), -1, offsets[0].dtype),)
        dBC = tl.sum(_join_all(grads, JOIN_LEVELS), axis=0)
        dBC_offsets = _join_all(offsets, JOIN_LEVELS)
        tl.atomic_add(dBC_ptr + dBC_offsets, dBC, mask=dBC_offsets >= 0)

    for i in tl.static_range(NI):
        n = i * SPLIT + lane
        mask = d_mask & (n < N)
        tl.store(dA_ptr + state_offsets + n, dA_acc[i], mask=mask)
        if HAS_H0:
            tl.store(dh0_ptr + state_offsets + n, carry[i], mask=mask)
    tl.store(dD_ptr + b * dim + d, dD_acc, mask=first_lane)
    tl.store(dbias_ptr + b * dim + d, dbias_acc, mask=first_lane)
