"""Triton kernels of the Mamba-2 SSD chunked scan: forward and backward over ``(batch, L, heads, headdim)``.

The sequence is cut into chunks of ``CHUNK`` steps. Per chunk ``c`` of head ``h`` (``s`` is the cumulative
log decay ``cumsum(dt * A)`` within the chunk, ``x~_j = dt_j x_j``, ``H_c`` the state entering the chunk)::

    S_c     = sum_j exp(s_last - s_j) x~_j B_j^T                       chunk_state_kernel
    H_{c+1} = exp(s_last) H_c + S_c                                    state_passing_fwd_kernel
    y_i     = sum_{j <= i} (C_i . B_j) exp(s_i - s_j) x~_j + exp(s_i) H_c C_i    chunk_scan_fwd_kernel

then ``y += D x`` and ``y *= silu(z)``. Decays inside a chunk are ``exp`` of differences masked to ``-inf``
above the diagonal, so no exponential of a positive sum is formed. Steps past ``L`` load ``dt = 0``: they
neither decay the state nor add to it. Every matmul is a ``tl.dot`` with float32 accumulation (full-precision
products for float32 inputs, tensor cores for half types); states and sums are float32.

Backward, with ``g = dy * silu(z)`` the gradient of the SSD output before ``D`` and the gate, and ``G_c`` the
gradient of the state entering chunk ``c``::

    R_c = sum_i exp(s_i) g_i C_i^T                  chunk_state_kernel (FORWARD=False)
    G_c = R_c + exp(s_last) G_{c+1}                 state_passing_bwd_kernel
    dx~ = (CB * decay)^T g + exp(s_last - s) B G_{c+1}^T                      chunk_scan_bwd_dx_kernel
    ds_i = g_i . y_i - x~_i . dx~_i  (+ <G_{c+1}, H_{c+1}> at the chunk's last step)
    dC = ((g x~^T) * decay) B + exp(s) g H_c,  dB = ((g x~^T) * decay)^T C + exp(s_last - s) x~ G_{c+1}
                                                                              chunk_scan_bwd_dbc_kernel
and ``d(dt A)_k = sum_{i >= k} ds_i`` within the chunk. The states are recomputed in the backward pass; no
tensor of size ``L * headdim * N`` is formed (per-chunk states are ``L / CHUNK`` of that).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import scan_combine, sigmoid


@triton.jit
def _chunk_decay(s, CHUNK: tl.constexpr):
    """``exp(s_i - s_j)`` for ``j <= i``, zero above the diagonal: ``(CHUNK, CHUNK)``."""
    i = tl.arange(0, CHUNK)
    diff = tl.where(i[:, None] >= i[None, :], s[:, None] - s[None, :], -float("inf"))
    return tl.exp(diff)


@triton.jit
def _gate_grad(dy, z_ptrs, mask, HAS_Z: tl.constexpr):
    """``dy * silu(z)`` (float32), or ``dy`` without a gate."""
    if HAS_Z:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        dy = dy * z * sigmoid(z)
    return dy


@triton.jit
def chunk_state_kernel(
    X_ptr, Y_ptr, z_ptr, dt_ptr, s_ptr, out_ptr,
    L, H, heads_per_group, n_chunks,
    sx_b, sx_l, sx_h, sx_p, sy_b, sy_l, sy_g, sy_n, sz_b, sz_l, sz_h, sz_p, sdt_b, sdt_l, sdt_h,
    P: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, FORWARD: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """``out[b, c, h] = sum_t X_t^T w_t Y_t`` over the chunk, ``(P, N)`` float32.

    Forward: ``X = x``, ``Y = B``, ``w_t = dt_t exp(s_last - s_t)`` (the chunk's own state contribution).
    Backward: ``X = dy`` (times ``silu(z)``), ``Y = C``, ``w_t = exp(s_t)`` (the gradient the chunk's output
    sends to the state entering it).
    """
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // heads_per_group
    i = tl.arange(0, CHUNK)
    t = c * CHUNK + i
    t_mask = t < L
    p = tl.arange(0, BLOCK_P)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_mask = p < P
    n_mask = n < N
    s_row = s_ptr + (bh.to(tl.int64) * n_chunks + c) * CHUNK
    s = tl.load(s_row + i)
    xt_mask = p_mask[:, None] & t_mask[None, :]
    X = tl.load(X_ptr + b * sx_b + h * sx_h + p[:, None] * sx_p + t[None, :] * sx_l, mask=xt_mask, other=0.0)
    X = X.to(tl.float32)
    if FORWARD:
        dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h + t * sdt_l, mask=t_mask, other=0.0)
        w = dt * tl.exp(tl.load(s_row + CHUNK - 1) - s)
    else:
        X = _gate_grad(X, z_ptr + b * sz_b + h * sz_h + p[:, None] * sz_p + t[None, :] * sz_l, xt_mask, HAS_Z)
        w = tl.exp(s)
    Y = tl.load(
        Y_ptr + b * sy_b + grp * sy_g + t[:, None] * sy_l + n[None, :] * sy_n,
        mask=t_mask[:, None] & n_mask[None, :],
        other=0.0,
    )
    acc = tl.dot((X * w[None, :]).to(Y.dtype), Y, input_precision=PRECISION)
    out = out_ptr + ((b * n_chunks + c) * H + h) * P * N + p[:, None] * N + n[None, :]
    tl.store(out, acc, mask=p_mask[:, None] & n_mask[None, :])


@triton.jit
def _tile_row(tile, rows, row):
    """Row ``row`` of a ``(TILE, BLOCK)`` tile whose row indices are ``rows``, as a ``(BLOCK,)`` vector."""
    return tl.sum(tl.where(rows[:, None] == row, tile, 0.0), axis=0)


@triton.jit
def state_passing_fwd_kernel(
    states_ptr, s_ptr, h0_ptr, final_ptr,
    H, n_chunks, PN,
    CHUNK: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr, HAS_H0: tl.constexpr,
):  # fmt: skip
    """In place over ``states (batch, chunks, heads, P*N)``: chunk contributions in, entering states out;
    ``H_{c+1} = exp(s_last) H_c + S_c`` from ``H_0 = h0`` (or zero); the last one goes to ``final``.

    A program owns ``BLOCK`` elements of one head and walks the chunks ``TILE`` at a time: row ``k`` of a
    tile pairs chunk ``first + k - 1``'s decay and contribution (row 0: decay 1 and the state carried into
    the tile), so one associative scan down the rows gives the states entering the tile's chunks. Every
    load of a tile is issued at once; only the carried state passes from tile to tile."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    e_mask = e < PN
    k = tl.arange(0, TILE)
    carried = tl.zeros((BLOCK,), tl.float32)
    if HAS_H0:
        carried = tl.load(h0_ptr + bh * PN + e, mask=e_mask, other=0.0).to(tl.float32)
    for first in range(0, n_chunks, TILE):
        chunk = first + k
        prev = tl.maximum(chunk - 1, 0)
        used = (k > 0) & (chunk - 1 < n_chunks)
        rows = states_ptr + ((b * n_chunks + prev) * H + h) * PN
        contribution = tl.load(rows[:, None] + e[None, :], mask=used[:, None] & e_mask[None, :], other=0.0)
        contribution = tl.where(k[:, None] == 0, carried[None, :], contribution)
        decay = tl.exp(tl.load(s_ptr + (bh * n_chunks + prev) * CHUNK + CHUNK - 1, mask=used, other=0.0))
        decay = tl.broadcast_to(decay[:, None], (TILE, BLOCK))
        _, entering = tl.associative_scan((decay, contribution), 0, scan_combine)
        # The state entering the next tile: its last chunk's decay and contribution on the last row.
        last = tl.minimum(first + TILE - 1, n_chunks - 1)
        last_row = states_ptr + ((b * n_chunks + last) * H + h) * PN + e
        # (a vector comparison: Triton's interpreter takes no scalar mask)
        last_contribution = tl.load(last_row, mask=e_mask & (first + TILE - 1 + 0 * e < n_chunks), other=0.0)
        own_decay = tl.load(s_ptr + (bh * n_chunks + chunk) * CHUNK + CHUNK - 1, mask=chunk < n_chunks, other=0.0)
        last_decay = tl.exp(tl.sum(tl.where(k == TILE - 1, own_decay, 0.0), axis=0))
        carried = last_decay * _tile_row(entering, k, TILE - 1) + last_contribution
        out_rows = states_ptr + ((b * n_chunks + chunk) * H + h) * PN
        tl.store(out_rows[:, None] + e[None, :], entering, mask=(chunk < n_chunks)[:, None] & e_mask[None, :])
    tl.store(final_ptr + bh * PN + e, carried, mask=e_mask)


@triton.jit
def state_passing_bwd_kernel(
    dstates_ptr, s_ptr, dfinal_ptr, dh0_ptr,
    H, n_chunks, PN,
    CHUNK: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr,
    HAS_DH0: tl.constexpr,
):  # fmt: skip
    """In place over ``dstates``: ``R_c`` in, ``G_{c+1}`` (gradient of the state leaving chunk ``c``) out, with
    ``G_c = R_c + exp(s_last) G_{c+1}`` from ``G_chunks = dfinal`` (or zero); ``G_0`` goes to ``dh0``.

    Tiles as in :func:`state_passing_fwd_kernel`, walked from the end with their rows in reverse chunk order:
    row ``k`` holds chunk ``last - k`` and pairs chunk ``last - k + 1``'s decay and ``R`` (row 0: the gradient
    carried from the tile after)."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    e_mask = e < PN
    k = tl.arange(0, TILE)
    carried = tl.zeros((BLOCK,), tl.float32)
    if HAS_DFINAL:
        carried = tl.load(dfinal_ptr + bh * PN + e, mask=e_mask, other=0.0).to(tl.float32)
    for done in range(0, n_chunks, TILE):
        last = n_chunks - 1 - done
        chunk = last - k
        nxt = tl.maximum(chunk + 1, 0)
        used = (k > 0) & (chunk + 1 >= 0)
        rows = dstates_ptr + ((b * n_chunks + nxt) * H + h) * PN
        from_output = tl.load(rows[:, None] + e[None, :], mask=used[:, None] & e_mask[None, :], other=0.0)
        from_output = tl.where(k[:, None] == 0, carried[None, :], from_output)
        decay = tl.exp(tl.load(s_ptr + (bh * n_chunks + nxt) * CHUNK + CHUNK - 1, mask=used, other=0.0))
        decay = tl.broadcast_to(decay[:, None], (TILE, BLOCK))
        _, leaving = tl.associative_scan((decay, from_output), 0, scan_combine)
        # The gradient carried to the tile before: the tile's first chunk on the last row.
        first = tl.maximum(last - TILE + 1, 0)
        first_row = dstates_ptr + ((b * n_chunks + first) * H + h) * PN + e
        first_output = tl.load(first_row, mask=e_mask & (last - TILE + 1 + 0 * e >= 0), other=0.0)
        own = tl.maximum(chunk, 0)
        own_decay = tl.load(s_ptr + (bh * n_chunks + own) * CHUNK + CHUNK - 1, mask=chunk >= 0, other=0.0)
        first_decay = tl.exp(tl.sum(tl.where(k == TILE - 1, own_decay, 0.0), axis=0))
        carried = first_decay * _tile_row(leaving, k, TILE - 1) + first_output
        out_rows = dstates_ptr + ((b * n_chunks + own) * H + h) * PN
        tl.store(out_rows[:, None] + e[None, :], leaving, mask=(chunk >= 0)[:, None] & e_mask[None, :])
    if HAS_DH0:
        tl.store(dh0_ptr + bh * PN + e, carried, mask=e_mask)


@triton.jit
def chunk_scan_fwd_kernel(
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dt_ptr, s_ptr, states_ptr, y_ptr, gate_in_ptr,
    L, H, heads_per_group, heads_per_program, n_chunks,
    sx_b, sx_l, sx_h, sx_p, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, sD_h, sD_p, sdt_b, sdt_l, sdt_h, sy_b, sy_l, sy_h, sy_p,
    P: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Output of one chunk for ``heads_per_program`` heads of one group: intra-chunk dual form plus the
    carried state, then ``D x`` and the gate. The heads of a group share B and C, so ``C B^T`` is formed
    once and reused by each head (the heads differ in their decays, ``dt``, ``x`` and state).

    Program ``(c, i)``: chunk ``c``, the ``i``-th run of ``heads_per_program`` consecutive heads (runs never
    cross a group). With a gate, ``gate_in`` (laid out like ``y``) receives the output before it, for the
    backward."""
    c = tl.program_id(0)
    runs_per_batch = H // heads_per_program
    b = (tl.program_id(1) // runs_per_batch).to(tl.int64)
    first_head = tl.program_id(1) % runs_per_batch * heads_per_program
    grp = first_head // heads_per_group
    i = tl.arange(0, CHUNK)
    t = c * CHUNK + i
    t_mask = t < L
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    tn_mask = t_mask[:, None] & (n < N)[None, :]
    tp_mask = t_mask[:, None] & (p < P)[None, :]
    pn_mask = (p < P)[:, None] & (n < N)[None, :]
    Ct = tl.load(C_ptr + b * sC_b + grp * sC_g + t[:, None] * sC_l + n[None, :] * sC_n, mask=tn_mask, other=0.0)
    Bt = tl.load(B_ptr + b * sB_b + grp * sB_g + t[:, None] * sB_l + n[None, :] * sB_n, mask=tn_mask, other=0.0)
    CB = tl.dot(Ct, tl.trans(Bt), input_precision=PRECISION)
    for k in range(heads_per_program):
        h = first_head + k
        bh = b * H + h
        s = tl.load(s_ptr + (bh * n_chunks + c) * CHUNK + i)
        dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h + t * sdt_l, mask=t_mask, other=0.0)
        scores = CB * _chunk_decay(s, CHUNK) * dt[None, :]
        x = tl.load(x_ptr + b * sx_b + h * sx_h + t[:, None] * sx_l + p[None, :] * sx_p, mask=tp_mask, other=0.0)
        y = tl.dot(scores.to(x.dtype), x, input_precision=PRECISION)
        state = tl.load(
            states_ptr + ((b * n_chunks + c) * H + h) * P * N + p[:, None] * N + n[None, :], mask=pn_mask, other=0.0
        )
        y += tl.exp(s)[:, None] * tl.dot(Ct, tl.trans(state.to(Ct.dtype)), input_precision=PRECISION)
        out_offsets = b * sy_b + h * sy_h + t[:, None] * sy_l + p[None, :] * sy_p
        if HAS_D:
            Dv = tl.load(D_ptr + h * sD_h + p * sD_p, mask=p < P, other=0.0).to(tl.float32)
            y += x.to(tl.float32) * Dv[None, :]
        if HAS_Z:
            tl.store(gate_in_ptr + out_offsets, y.to(gate_in_ptr.dtype.element_ty), mask=tp_mask)
            z_ptrs = z_ptr + b * sz_b + h * sz_h + t[:, None] * sz_l + p[None, :] * sz_p
            z = tl.load(z_ptrs, mask=tp_mask, other=0.0).to(tl.float32)
            y = y * z * sigmoid(z)
        tl.store(y_ptr + out_offsets, y.to(y_ptr.dtype.element_ty), mask=tp_mask)


@triton.jit
def chunk_scan_bwd_dx_kernel(
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dt_ptr, s_ptr, dstates_ptr, gate_in_ptr, dy_ptr,
    dx_ptr, dz_ptr, ddt_ptr, dD_ptr,
    L, H, heads_per_group, n_chunks,
    sx_b, sx_l, sx_h, sx_p, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, sD_h, sD_p, sdt_b, sdt_l, sdt_h, sy_b, sy_l, sy_h, sy_p, sdy_b, sdy_l, sdy_h, sdy_p,
    P: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Per chunk: gradients of x and z, the gradient of dt where it multiplies x (float32, ``(batch, L,
    heads)``), and per-chunk partial sums of the gradient of D ``(batch, chunks, heads, P)``.

    ``sy_*`` are the strides of ``gate_in``, ``dx`` and ``dz`` (all allocated alike)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // heads_per_group
    i = tl.arange(0, CHUNK)
    t = c * CHUNK + i
    t_mask = t < L
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    tn_mask = t_mask[:, None] & (n < N)[None, :]
    tp_mask = t_mask[:, None] & (p < P)[None, :]
    Ct = tl.load(C_ptr + b * sC_b + grp * sC_g + t[:, None] * sC_l + n[None, :] * sC_n, mask=tn_mask, other=0.0)
    Bt = tl.load(B_ptr + b * sB_b + grp * sB_g + t[:, None] * sB_l + n[None, :] * sB_n, mask=tn_mask, other=0.0)
    chunk_row = bh.to(tl.int64) * n_chunks + c
    s = tl.load(s_ptr + chunk_row * CHUNK + i)
    s_last = tl.load(s_ptr + chunk_row * CHUNK + CHUNK - 1)
    dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h + t * sdt_l, mask=t_mask, other=0.0)
    kernel = tl.dot(Ct, tl.trans(Bt), input_precision=PRECISION) * _chunk_decay(s, CHUNK)  # (i, j)
    dy = tl.load(dy_ptr + b * sdy_b + h * sdy_h + t[:, None] * sdy_l + p[None, :] * sdy_p, mask=tp_mask, other=0.0)
    dy = dy.to(tl.float32)
    z_ptrs = z_ptr + b * sz_b + h * sz_h + t[:, None] * sz_l + p[None, :] * sz_p
    g = _gate_grad(dy, z_ptrs, tp_mask, HAS_Z)
    x = tl.load(x_ptr + b * sx_b + h * sx_h + t[:, None] * sx_l + p[None, :] * sx_p, mask=tp_mask, other=0.0)
    dxt = tl.dot(tl.trans(kernel).to(x.dtype), g.to(x.dtype), input_precision=PRECISION)
    pn_mask = (p < P)[:, None] & (n < N)[None, :]
    state_offsets = ((b * n_chunks + c) * H + h) * P * N + p[:, None] * N + n[None, :]
    grad_leaving = tl.load(dstates_ptr + state_offsets, mask=pn_mask, other=0.0)
    dxt += tl.exp(s_last - s)[:, None] * tl.dot(Bt, tl.trans(grad_leaving.to(Bt.dtype)), input_precision=PRECISION)
    x = x.to(tl.float32)
    out_offsets = b * sy_b + h * sy_h + t[:, None] * sy_l + p[None, :] * sy_p
    dx = dt[:, None] * dxt
    if HAS_D:
        Dv = tl.load(D_ptr + h * sD_h + p * sD_p, mask=p < P, other=0.0).to(tl.float32)
        dx += g * Dv[None, :]
        tl.store(dD_ptr + ((b * n_chunks + c) * H + h) * P + p, tl.sum(g * x, axis=0), mask=p < P)
    tl.store(dx_ptr + out_offsets, dx.to(dx_ptr.dtype.element_ty), mask=tp_mask)
    if HAS_Z:
        z = tl.load(z_ptrs, mask=tp_mask, other=0.0).to(tl.float32)
        sig = sigmoid(z)
        gate_in = tl.load(gate_in_ptr + out_offsets, mask=tp_mask, other=0.0).to(tl.float32)
        dz = dy * gate_in * sig * (1.0 + z * (1.0 - sig))
        tl.store(dz_ptr + out_offsets, dz.to(dz_ptr.dtype.element_ty), mask=tp_mask)
    tl.store(ddt_ptr + b * sdt_b + h * sdt_h + t * sdt_l, tl.sum(x * dxt, axis=1), mask=t_mask)


@triton.jit
def chunk_scan_bwd_dbc_kernel(
    x_ptr, B_ptr, C_ptr, z_ptr, dt_ptr, s_ptr, states_ptr, dstates_ptr, dy_ptr, dB_ptr, dC_ptr, dlog_ptr,
    L, H, G, heads_per_group, n_chunks,
    sx_b, sx_l, sx_h, sx_p, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, sdt_b, sdt_l, sdt_h, sdy_b, sdy_l, sdy_h, sdy_p,
    P: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Per chunk and block of N: this head's share of the gradients of B and C, added in float32 to
    ``dB, dC (batch, L, groups, N)`` (heads of one group add into the same rows), and this block's share of
    the gradient of the log decays ``d(dt A)`` added to ``dlog (batch, heads, chunks, CHUNK)``.

    ``d(dt A)_k`` sums each term where it arises instead of differencing large partial sums: the
    intra-chunk pairs ``j < k <= i`` of ``W_ij = (g_i . x~_j)(C_i . B_j) exp(s_i - s_j)``, the carried
    state's output ``sum_{i >= k} g_i . y_inter_i``, the chunk's contributions to its leaving state from
    steps before ``k``, and ``exp(s_last) <G_{c+1}, H_c>``."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // heads_per_group
    i = tl.arange(0, CHUNK)
    t = c * CHUNK + i
    t_mask = t < L
    p = tl.arange(0, BLOCK_P)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    tn_mask = t_mask[:, None] & (n < N)[None, :]
    tp_mask = t_mask[:, None] & (p < P)[None, :]
    chunk_row = bh.to(tl.int64) * n_chunks + c
    s = tl.load(s_ptr + chunk_row * CHUNK + i)
    s_last = tl.load(s_ptr + chunk_row * CHUNK + CHUNK - 1)
    dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h + t * sdt_l, mask=t_mask, other=0.0)
    dy = tl.load(dy_ptr + b * sdy_b + h * sdy_h + t[:, None] * sdy_l + p[None, :] * sdy_p, mask=tp_mask, other=0.0)
    z_ptrs = z_ptr + b * sz_b + h * sz_h + t[:, None] * sz_l + p[None, :] * sz_p
    g = _gate_grad(dy.to(tl.float32), z_ptrs, tp_mask, HAS_Z)
    x = tl.load(x_ptr + b * sx_b + h * sx_h + t[:, None] * sx_l + p[None, :] * sx_p, mask=tp_mask, other=0.0)
    # Float32 operands here (TF32 tensor cores for half inputs): on Hopper, triton 3.6 miscompiles this
    # kernel's 16-bit dots (wrong dB/dC and out-of-range shared memory accesses).
    dtype = tl.float32
    xt = (x.to(tl.float32) * dt[:, None]).to(dtype)
    g = g.to(dtype)
    weights = tl.dot(g, tl.trans(xt), input_precision=PRECISION) * _chunk_decay(s, CHUNK)  # (i, j): g_i . x~_j decayed
    Ct = tl.load(C_ptr + b * sC_b + grp * sC_g + t[:, None] * sC_l + n[None, :] * sC_n, mask=tn_mask, other=0.0).to(
        dtype
    )
    Bt = tl.load(B_ptr + b * sB_b + grp * sB_g + t[:, None] * sB_l + n[None, :] * sB_n, mask=tn_mask, other=0.0).to(
        dtype
    )
    pn_mask = (p < P)[:, None] & (n < N)[None, :]
    state_offsets = ((b * n_chunks + c) * H + h) * P * N + p[:, None] * N + n[None, :]
    entering = tl.load(states_ptr + state_offsets, mask=pn_mask, other=0.0)
    grad_leaving = tl.load(dstates_ptr + state_offsets, mask=pn_mask, other=0.0)
    dC_inter = tl.exp(s)[:, None] * tl.dot(g, entering.to(dtype), input_precision=PRECISION)
    dB_inter = tl.exp(s_last - s)[:, None] * tl.dot(xt, grad_leaving.to(dtype), input_precision=PRECISION)
    dC = tl.dot(weights.to(dtype), Bt, input_precision=PRECISION) + dC_inter
    dB = tl.dot(tl.trans(weights.to(dtype)), Ct, input_precision=PRECISION) + dB_inter
    offsets = (b * L + t[:, None]) * G * N + grp * N + n[None, :]
    tl.atomic_add(dC_ptr + offsets, dC, mask=tn_mask, sem="relaxed")
    tl.atomic_add(dB_ptr + offsets, dB, mask=tn_mask, sem="relaxed")

    pairs = weights * tl.dot(Ct, tl.trans(Bt), input_precision=PRECISION)  # W_ij over this block of N
    before_k = tl.cumsum(pairs, axis=1) - pairs  # (i, k): sum over j < k
    dlog = tl.sum(tl.where(i[:, None] >= i[None, :], before_k, 0.0), axis=0)
    out_inter = tl.sum(dC_inter * Ct.to(tl.float32), axis=1)  # g_i . y_inter_i
    dlog += tl.sum(out_inter, axis=0) - tl.cumsum(out_inter, axis=0) + out_inter
    to_state = tl.sum(dB_inter * Bt.to(tl.float32), axis=1)  # x~_j . (G_{c+1} B_j) exp(s_last - s_j)
    dlog += tl.cumsum(to_state, axis=0) - to_state
    dlog += tl.exp(s_last) * tl.sum(tl.sum(grad_leaving * entering, axis=1), axis=0)
    tl.atomic_add(dlog_ptr + chunk_row * CHUNK + i, dlog, sem="relaxed")
