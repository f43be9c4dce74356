"""Triton kernels of the Mamba-1 selective scan that solve one state at a time over ``(channels, time)`` tiles.

A program owns ``BLOCK_D`` channels of one batch element and one group of B/C and walks the sequence in
chunks of ``BLOCK_L`` steps. Every tensor of a chunk is a ``(BLOCK_D, BLOCK_L)`` tile, or a ``(1, BLOCK_L)``
row of B or C, or a ``(BLOCK_D, 1)`` column of states, all in the tile's one layout. For each state ``n`` in
turn the chunk's recurrence ``h_t = exp(delta_t A_n) h_{t-1} + delta_t u_t B_{n,t}`` is one
``tl.associative_scan`` along time; its result, started from the state carried in from the previous chunk,
is multiplied by ``C_n`` and added to the output tile, so nothing of size ``L * N`` ever reaches memory and
no value changes layout (a thread holds consecutive steps, loaded as one vector).

With ``STATE_LOOP`` the forward walks the states in a loop that is not unrolled, carrying them in the final state's
buffer (``(batch, dim, N)``, one load and one store per state and chunk) instead of holding all ``N`` in registers:
fewer registers, so more programs per SM, which pays when the grid has many (see the launcher's rule).

The forward can store the state entering each chunk (``STORE_CKPT``: ``(batch, dim, n_chunks, N)``, float32,
``1 / BLOCK_L`` of the states). The backward kernel then walks the chunks once, in reverse; without them
(``HAS_CKPT`` off) a first pass walks the chunks forward with one sum per state and chunk and writes them.
The reverse pass recomputes, per state, the chunk's states from its checkpoint by a scan and solves the
adjoint ``q_t = g_t C_t + exp(delta_{t+1} A) q_{t+1}`` by a reverse scan (:func:`.common.adjoint_combine`,
with each step's own decay), carrying ``exp(delta_t A) q_t`` of the chunk's first step into the previous
chunk. The gradients of ``u`` and ``delta`` accumulate over the states in tiles; those of
B and C are summed over the program's channels and added atomically in float32; those of A, D and the
delta bias are written per batch element and summed by the caller.

``REVERSE_OUT`` reads ``z`` and the output gradient and writes the output at ``L - 1 - t`` (the backward
direction of a bidirectional Mamba), ``ACCUMULATE`` adds the output's current value before the gate and
``ACCUMULATE_DZ`` the gate gradient's: the two directions share one gate, and no flipped copies are made.
With ``FLIP_OUT`` (a length that is a multiple of 16) those tensors are read and written a chunk at a time in
order, so vectorised, and combined in that order; only the tiles passed between them and the scan are flipped in
registers (``tl.flip``: the output once in the forward, the gated output gradient and the output before the gate
in the backward). Element by element, reversed addresses are not vectorised.
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, adjoint_combine, scan_combine, sigmoid, softplus


@triton.jit
def _channel_columns(bias_ptr, cpg, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A program's ``BLOCK_D`` channels, block ``program_id(2)`` of group ``program_id(1)``, as ``(BLOCK_D, 1)``
    columns: their indices, mask and delta bias (zero without one)."""
    dl = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    d_mask = dl < cpg
    d = tl.program_id(1) * cpg + dl
    bias = tl.zeros((BLOCK_D, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    return d, d_mask, bias


@triton.jit
def _program_rows(D_ptr, bias_ptr, dim, cpg, N: tl.constexpr, BLOCK_D: tl.constexpr,
                  HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """What a program reads once for its ``BLOCK_D`` channels of group ``g`` of batch element ``b``, as
    ``(BLOCK_D, 1)`` columns: the channel indices and mask, ``D`` and the delta bias (:func:`_channel_columns`);
    also the flat offset of state 0 of each channel in ``(batch, dim, N)`` tensors."""
    b = tl.program_id(0).to(tl.int64)
    d, d_mask, bias = _channel_columns(bias_ptr, cpg, BLOCK_D, HAS_BIAS)
    Dv = tl.zeros((BLOCK_D, 1), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    return b, tl.program_id(1), d, d_mask, Dv, bias, b * dim * N + d * N


@triton.jit
def _state_columns(A_ptr, h0_ptr, d, d_mask, state_rows, sA_d, sA_n,
                   N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_H0: tl.constexpr):  # fmt: skip
    """Per state (tuples of ``N`` columns ``(BLOCK_D, 1)``): ``A`` scaled to base 2 and the initial state."""
    A2 = ()
    h = ()
    for n in tl.static_range(N):
        A2 = A2 + (tl.load(A_ptr + d * sA_d + n * sA_n, mask=d_mask, other=0.0).to(tl.float32) * LOG2E,)
        hn = tl.zeros((BLOCK_D, 1), tl.float32)
        if HAS_H0:
            hn = tl.load(h0_ptr + state_rows + n, mask=d_mask, other=0.0)
        h = h + (hn,)
    return A2, h


@triton.jit
def _row_values(rows, t, stride, mask, L, L_rows, PADDED: tl.constexpr):
    """Float32 values of ``rows`` at steps ``t``, zero where ``mask`` is off and from step ``L`` on. ``PADDED``: the
    load reads up to ``L_rows`` (``L`` rounded up to 16; the rows are padded that far) and the values past ``L`` are
    then zeroed: Triton vectorises a load only under a mask it knows to be constant over aligned runs of steps,
    which ``t < L`` is not for an odd ``L``."""
    if PADDED:
        x = tl.load(rows + t * stride, mask=mask & (t < L_rows), other=0.0).to(tl.float32)
        x = tl.where(mask & (t < L), x, 0.0)
    else:
        x = tl.load(rows + t * stride, mask=mask & (t < L), other=0.0).to(tl.float32)
    return x


@triton.jit
def _out_steps(t, c, L, BLOCK_L: tl.constexpr, REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr):
    """Where the output of chunk ``c``'s steps ``t`` is: at ``t``, or reversed in time at ``L - 1 - t``; with
    ``FLIP_OUT`` the ascending steps whose reversal that is, ``L - (c + 1) BLOCK_L + k``, so that a chunk's output
    is read and written in order (vectorised) and flipped in registers."""
    if REVERSE_OUT:
        if FLIP_OUT:
            t_out = L - (c + 1) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
        else:
            t_out = L - 1 - t
    else:
        t_out = t
    return t_out


@triton.jit
def _out_frame(x, REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr):
    """A chunk's tile ``x`` between the order of its steps and the order in which tensors laid out like the output
    are read and written (:func:`_out_steps`): flipped with ``FLIP_OUT``, else as it is (its own inverse)."""
    if REVERSE_OUT and FLIP_OUT:
        x = tl.flip(x, 1)
    return x


@triton.jit
def _out_values(rows, t, t_out, stride, d_mask, L, L_rows,
                REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr, PADDED: tl.constexpr):  # fmt: skip
    """Float32 values of a tensor laid out like the output (``z``, the output gradient) at the output's steps
    ``t_out`` of steps ``t`` (:func:`_out_steps`), in the output's order (:func:`_out_frame`), zero past the
    sequence."""
    if REVERSE_OUT:
        if FLIP_OUT:
            x = tl.load(rows + t_out * stride, mask=d_mask & (t_out >= 0), other=0.0).to(tl.float32)
        else:
            x = tl.load(rows + t_out * stride, mask=d_mask & (t < L), other=0.0).to(tl.float32)
    else:
        x = _row_values(rows, t, stride, d_mask, L, L_rows, PADDED)
    return x


@triton.jit
def _store_out(rows, t, t_out, stride, x, d_mask, L, REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr):
    """Store ``x`` (a chunk's tile in the output's order, :func:`_out_frame`) at the output's steps ``t_out`` of
    steps ``t`` (:func:`_out_steps`), up to the sequence's end."""
    if REVERSE_OUT and FLIP_OUT:
        tl.store(rows + t_out * stride, x, mask=d_mask & (t_out >= 0))
    else:
        tl.store(rows + t_out * stride, x, mask=d_mask & (t < L))


@triton.jit
def _chunk_inputs(u_rows, dt_rows, t, d_mask, L, L_rows, su_l, sdt_l, bias,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PADDED: tl.constexpr):  # fmt: skip
    """``u``, ``dt_raw`` (with the bias) and ``dt`` (discretised, zero past the sequence: steps past the end are
    the identity map) at steps ``t`` of the program's channels, in float32."""
    u = _row_values(u_rows, t, su_l, d_mask, L, L_rows, PADDED)
    dt_raw = _row_values(dt_rows, t, sdt_l, d_mask, L, L_rows, PADDED)
    if HAS_BIAS:
        dt_raw = dt_raw + bias
    dt = dt_raw
    if SOFTPLUS:
        dt = softplus(dt_raw)
    return u, dt_raw, tl.where(d_mask & (t < L), dt, 0.0)


@triton.jit
def _gate_gradient(dy_rows, z_rows, t, t_out, d_mask, L, L_rows, sdy_l, sz_l,
                   HAS_Z: tl.constexpr, REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr,
                   PADDED: tl.constexpr):  # fmt: skip
    """The output gradient before the gate ``y * silu(z)``: ``dy * silu(z)`` (``dy`` without a gate), float32, in
    the order of the steps ``t``."""
    dy = _out_values(dy_rows, t, t_out, sdy_l, d_mask, L, L_rows, REVERSE_OUT, FLIP_OUT, PADDED)
    if HAS_Z:
        zt = _out_values(z_rows, t, t_out, sz_l, d_mask, L, L_rows, REVERSE_OUT, FLIP_OUT, PADDED)
        dy = dy * zt * sigmoid(zt)
    return _out_frame(dy, REVERSE_OUT, FLIP_OUT)


@triton.jit
def _column(tile, at):
    """The column of ``tile (R, L)`` where the ``(1, L)`` mask ``at`` is on, as ``(R, 1)``."""
    return tl.sum(tl.where(at, tile, 0.0), axis=1, keep_dims=True)


@triton.jit
def selective_scan_fwd_state_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, ckpt_ptr,
    dim, L, cpg,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, REVERSE_OUT: tl.constexpr, FLIP_OUT: tl.constexpr,
    ACCUMULATE: tl.constexpr, STATE_LOOP: tl.constexpr,
):  # fmt: skip
    b, g, d, d_mask, Dv, bias, state_rows = _program_rows(D_ptr, bias_ptr, dim, cpg, N, BLOCK_D, HAS_D, HAS_BIAS)
    A2, h = _state_columns(A_ptr, h0_ptr, d, d_mask, state_rows, sA_d, sA_n, N, BLOCK_D, HAS_H0)
    if STATE_LOOP:  # the carried states live in the final state's buffer; see the module's notes
        for n in tl.static_range(N):
            tl.store(hT_ptr + state_rows + n, h[n], mask=d_mask)
        tl.debug_barrier()
    steps = tl.arange(0, BLOCK_L)[None, :]
    u_rows = u_ptr + b * su_b + d * su_d
    dt_rows = dt_ptr + b * sdt_b + d * sdt_d
    z_rows = z_ptr + b * sz_b + d * sz_d
    y_rows = y_ptr + b * sy_b + d * sy_d
    B_row = B_ptr + b * sB_b + g * sB_g
    C_row = C_ptr + b * sC_b + g * sC_g
    is_last = steps == BLOCK_L - 1
    n_chunks = tl.cdiv(L, BLOCK_L)
    ckpt_rows = ckpt_ptr + (b * dim + d) * n_chunks * N
    for c in range(0, n_chunks):
        t = c * BLOCK_L + steps
        u, _, dt = _chunk_inputs(u_rows, dt_rows, t, d_mask, L, L, su_l, sdt_l, bias, HAS_BIAS, SOFTPLUS, False)
        dtu = dt * u
        y = Dv * u
        if STATE_LOOP:
            for k in range(0, N):  # k, not n: a loop variable keeps one type in a kernel
                a2 = tl.load(A_ptr + d * sA_d + k * sA_n, mask=d_mask, other=0.0).to(tl.float32) * LOG2E
                hk = tl.load(hT_ptr + state_rows + k, mask=d_mask, other=0.0)
                if STORE_CKPT:
                    tl.store(ckpt_rows + c * N + k, hk, mask=d_mask)
                Bk = _row_values(B_row + k * sB_n, t, sB_l, t < L, L, L, False)
                growth, states = tl.associative_scan((tl.exp2(dt * a2), dtu * Bk), 1, scan_combine)
                states = states + growth * hk
                Ck = _row_values(C_row + k * sC_n, t, sC_l, t < L, L, L, False)
                y += states * Ck
                tl.store(hT_ptr + state_rows + k, _column(states, is_last), mask=d_mask)
            tl.debug_barrier()
        else:
            carried = ()
            for n in tl.static_range(N):
                if STORE_CKPT:
                    tl.store(ckpt_rows + c * N + n, h[n], mask=d_mask)
                Bn = _row_values(B_row + n * sB_n, t, sB_l, t < L, L, L, False)
                growth, states = tl.associative_scan((tl.exp2(dt * A2[n]), dtu * Bn), 1, scan_combine)
                states = states + growth * h[n]
                Cn = _row_values(C_row + n * sC_n, t, sC_l, t < L, L, L, False)
                y += states * Cn
                carried = carried + (_column(states, is_last),)  # steps past L left the state unchanged
            h = carried
        t_out = _out_steps(t, c, L, BLOCK_L, REVERSE_OUT, FLIP_OUT)
        y = _out_frame(y, REVERSE_OUT, FLIP_OUT)
        if ACCUMULATE:
            y += _out_values(y_rows, t, t_out, sy_l, d_mask, L, L, REVERSE_OUT, FLIP_OUT, False)
        if HAS_Z:
            zt = _out_values(z_rows, t, t_out, sz_l, d_mask, L, L, REVERSE_OUT, FLIP_OUT, False)
            y = y * zt * sigmoid(zt)
        _store_out(y_rows, t, t_out, sy_l, y.to(y_ptr.dtype.element_ty), d_mask, L, REVERSE_OUT, FLIP_OUT)
    if not STATE_LOOP:
        for n in tl.static_range(N):
            tl.store(hT_ptr + state_rows + n, h[n], mask=d_mask)


@triton.jit
def selective_scan_bwd_state_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, dy_ptr, dhT_ptr, ckpt_ptr, w_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    dim, L, L_rows, cpg, G, n_chunks,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sz_b, sz_d, sz_l, sdy_b, sdy_d, sdy_l, sdBC_n,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, HAS_CKPT: tl.constexpr, REVERSE_OUT: tl.constexpr,
    FLIP_OUT: tl.constexpr, ACCUMULATE_DZ: tl.constexpr, ROWS_PADDED: tl.constexpr,
):  # fmt: skip
    b, g, d, d_mask, Dv, bias, state_rows = _program_rows(D_ptr, bias_ptr, dim, cpg, N, BLOCK_D, HAS_D, HAS_BIAS)
    steps = tl.arange(0, BLOCK_L)[None, :]
    u_rows = u_ptr + b * su_b + d * su_d
    dt_rows = dt_ptr + b * sdt_b + d * sdt_d
    z_rows = z_ptr + b * sz_b + d * sz_d
    dy_rows = dy_ptr + b * sdy_b + d * sdy_d
    B_row = B_ptr + b * sB_b + g * sB_g
    C_row = C_ptr + b * sC_b + g * sC_g
    A_rows = A_ptr + d * sA_d
    grad_rows = b * dim * L + d * L  # du, ddt, dz are contiguous (batch, dim, L)
    dBC_row = (b * G + g) * N * sdBC_n  # dB, dC are (batch, G, N, L) with rows padded to sdBC_n
    ckpt_rows = ckpt_ptr + (b * dim + d) * n_chunks * N

    if not HAS_CKPT:
        # Pass 1 (unless the forward stored them): the state entering every chunk. A chunk maps h to
        # exp(A S) h + sum_t exp(A S_t) dt_t u_t B_t, with S the sum of its dt and S_t that of the steps after t:
        # sums, so one plain reduction per state (tl.reduce would not do for the maps' composition, which is not
        # commutative).
        A2, h = _state_columns(A_ptr, h0_ptr, d, d_mask, state_rows, sA_d, sA_n, N, BLOCK_D, HAS_H0)
        for c in range(0, n_chunks - 1):
            t = c * BLOCK_L + steps
            u, _, dt = _chunk_inputs(
                u_rows, dt_rows, t, d_mask, L, L_rows, su_l, sdt_l, bias, HAS_BIAS, SOFTPLUS, ROWS_PADDED
            )
            dtu = dt * u
            later = tl.cumsum(dt, axis=1, reverse=True) - dt
            total = tl.sum(dt, axis=1, keep_dims=True)
            carried = ()
            for n in tl.static_range(N):
                tl.store(ckpt_rows + c * N + n, h[n], mask=d_mask)
                Bn = _row_values(B_row + n * sB_n, t, sB_l, t < L_rows, L, L_rows, ROWS_PADDED)
                inputs = tl.sum(tl.exp2(later * A2[n]) * dtu * Bn, axis=1, keep_dims=True)
                carried = carried + (tl.exp2(total * A2[n]) * h[n] + inputs,)
            h = carried
        for n in tl.static_range(N):
            tl.store(ckpt_rows + (n_chunks - 1) * N + n, h[n], mask=d_mask)

    # Pass 2: chunks in reverse, a loop (not unrolled) over the states in each. What each state carries into the
    # chunk before, w = exp(dt_t A) q_t at the chunk's first step (the gradient of the state entering the chunk),
    # is kept in w_ptr and dA summed in place, so that no tuple of N columns stays in registers. After the first
    # chunk w_ptr holds the initial state's gradient. A program's threads write these (and the checkpoints) and
    # other threads of it read them: global memory written by one thread is visible to another of its block only
    # after a barrier.
    w_rows = w_ptr + state_rows
    for n in tl.static_range(N):
        wn = tl.zeros((BLOCK_D, 1), tl.float32)
        if HAS_DHT:
            wn = tl.load(dhT_ptr + state_rows + n, mask=d_mask, other=0.0)
        tl.store(w_rows + n, wn, mask=d_mask)
        tl.store(dA_ptr + state_rows + n, tl.zeros((BLOCK_D, 1), tl.float32), mask=d_mask)
    tl.debug_barrier()
    dD = tl.zeros((BLOCK_D, 1), tl.float32)
    dbias = tl.zeros((BLOCK_D, 1), tl.float32)
    is_first = steps == 0
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        t = c * BLOCK_L + steps
        dl_mask = d_mask & (t < L)
        row_mask = t < L_rows  # dB and dC have rows of L_rows: their atomic adds too are vectorised
        u, _, dt = _chunk_inputs(
            u_rows, dt_rows, t, d_mask, L, L_rows, su_l, sdt_l, bias, HAS_BIAS, SOFTPLUS, ROWS_PADDED
        )
        dtu = dt * u
        t_out = _out_steps(t, c, L, BLOCK_L, REVERSE_OUT, FLIP_OUT)
        gy = _gate_gradient(
            dy_rows, z_rows, t, t_out, d_mask, L, L_rows, sdy_l, sz_l, HAS_Z, REVERSE_OUT, FLIP_OUT, ROWS_PADDED
        )
        y_states = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # sum_n C_n h_n
        r = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # sum_n q_n B_n
        s = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # sum_n q_n exp(dt A_n) h_{n, t-1} A_n
        for k in range(0, N):  # k, not n: a loop variable keeps one type in a kernel
            a = tl.load(A_rows + k * sA_n, mask=d_mask, other=0.0).to(tl.float32)
            Bn = _row_values(B_row + k * sB_n, t, sB_l, row_mask, L, L_rows, ROWS_PADDED)
            Cn = _row_values(C_row + k * sC_n, t, sC_l, row_mask, L, L_rows, ROWS_PADDED)
            h_in = tl.load(ckpt_rows + c * N + k, mask=d_mask, other=0.0)
            inputs = dtu * Bn
            decay = tl.exp2(dt * (a * LOG2E))
            growth, states = tl.associative_scan((decay, inputs), 1, scan_combine)
            states = states + growth * h_in
            if HAS_Z:
                y_states += states * Cn
            dC = tl.sum(gy * states, axis=0, keep_dims=True)
            tl.atomic_add(dC_ptr + dBC_row + k * sdBC_n + t, dC, mask=row_mask, sem="relaxed")
            decayed = states - inputs  # exp(dt_t A) h_{t-1}
            _, after, adj = tl.associative_scan(
                (decay, tl.full(decay.shape, 1.0, tl.float32), gy * Cn), 1, adjoint_combine, reverse=True
            )
            adj = adj + after * tl.load(w_rows + k, mask=d_mask, other=0.0)
            tl.store(w_rows + k, _column(decay * adj, is_first), mask=d_mask)
            dB = tl.sum(adj * dtu, axis=0, keep_dims=True)
            tl.atomic_add(dB_ptr + dBC_row + k * sdBC_n + t, dB, mask=row_mask, sem="relaxed")
            r += adj * Bn
            s += adj * decayed * a
            dA_n = tl.load(dA_ptr + state_rows + k, mask=d_mask, other=0.0)
            tl.store(dA_ptr + state_rows + k, dA_n + tl.sum(adj * decayed * dt, axis=1, keep_dims=True), mask=d_mask)
        tl.debug_barrier()
        # u, dt_raw, dy and z are read again rather than kept live across the states' loop.
        u, dt_raw, _ = _chunk_inputs(
            u_rows, dt_rows, t, d_mask, L, L_rows, su_l, sdt_l, bias, HAS_BIAS, SOFTPLUS, ROWS_PADDED
        )
        if HAS_Z:
            dy = _out_values(dy_rows, t, t_out, sdy_l, d_mask, L, L_rows, REVERSE_OUT, FLIP_OUT, ROWS_PADDED)
            zt = _out_values(z_rows, t, t_out, sz_l, d_mask, L, L_rows, REVERSE_OUT, FLIP_OUT, ROWS_PADDED)
            sig = sigmoid(zt)
            dz = dy * _out_frame(y_states + Dv * u, REVERSE_OUT, FLIP_OUT) * sig * (1.0 + zt * (1.0 - sig))
            if ACCUMULATE_DZ:
                dz += _out_values(dz_ptr + grad_rows, t, t_out, 1, d_mask, L, L, REVERSE_OUT, FLIP_OUT, False)
            dz = dz.to(dz_ptr.dtype.element_ty)
            _store_out(dz_ptr + grad_rows, t, t_out, 1, dz, d_mask, L, REVERSE_OUT, FLIP_OUT)
        dD += tl.sum(gy * u, axis=1, keep_dims=True)
        ddt = u * r + s
        if SOFTPLUS:
            ddt = ddt * sigmoid(dt_raw)
        ddt = tl.where(dl_mask, ddt, 0.0)
        dbias += tl.sum(ddt, axis=1, keep_dims=True)
        du = dt * r + Dv * gy
        tl.store(du_ptr + grad_rows + t, du.to(du_ptr.dtype.element_ty), mask=dl_mask)
        tl.store(ddt_ptr + grad_rows + t, ddt.to(ddt_ptr.dtype.element_ty), mask=dl_mask)

    tl.store(dD_ptr + b * dim + d, dD, mask=d_mask)
    tl.store(dbias_ptr + b * dim + d, dbias, mask=d_mask)
