"""The lane-per-channel Triton forward kernel of the Mamba-1 selective scan over ``(batch, dim, L)``, and the helpers
it shares with the lane backward (:mod:`.scan_lane_backward_kernels`).

A program is one warp: ``BLOCK_D = 32 / 2 ** LOG_PARTS`` channels of one batch element and one group of B/C, each
channel on ``2 ** LOG_PARTS`` lanes (its *parts*) that split its states, ``2 ** LOG_NS`` each (a lane's *slots*; the
states are padded to fill them), in registers. It walks time ``STEPS`` steps at a time. B and C are read as a
``(32, STEPS)`` tile per slot, a lane's steps of a row one vector (two in float32), in which the lanes of a part read
the same address, and split into steps in registers (:func:`slot_steps`).

The channel's own per-step values are computed once, not by each part: each part owns ``STEPS / parts`` steps of a
block (:func:`own_steps`). It reads ``u``, ``delta`` and ``z`` and writes the output there, and computes the softplus
and the gate there; the discretised ``delta`` and ``delta u`` of all the block's steps reach every part by indexed
shuffles (:func:`parts_gathered`), and the parts' shares of the output are summed at the owner's steps by a butterfly
that halves the steps at each exchange (:func:`parts_scattered`). The next block's tiles are read before the current
one is solved, so that their latency hides behind it.

Each state update is ``h = exp2(delta A log2 e) h + delta u B`` and ``y += C h``: one exponential and four float
operations, the fewest the recurrence allows. With four parts, the softplus and gate computed by each part at all
eight steps of a block took (8, 1536, 2048) 0.31 ms on the H100; at its own steps only, 0.24 ms. One lane per channel
gives the grid ``batch * dim`` lanes only, a few warps per SM, so the kernel relies on each warp's own parallelism:
the launcher lets ptxas use up to 200 registers (``FORWARD_LANE``) so that it issues the loads early, splits the
states over more lanes where that keeps the grid within a bound of warps per SM
(:func:`.selective_scan.lane_forward_parts`), and takes this kernel only with enough channels
(``LANE_MIN_CHANNELS_PER_SM``; the launcher gives the figures). Long sequences of few channels take the state
kernels (:mod:`.scan_state_kernels`), which split time.

``STORE_CKPT`` writes the state entering every ``CKPT_L`` steps (the backward's chunks). ``REVERSE_OUT`` reads
``z`` and writes the output at ``L - 1 - t`` (the backward direction of a bidirectional Mamba): a lane's outputs
are the tile of its own steps' mirrored steps, reversed in registers (:func:`own_outputs`, :func:`mirrored`).
``ACCUMULATE`` adds the value already in the output before the gate.
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, silu_hw, softplus_hw

STEPS = tl.constexpr(8)  # steps per block: a lane's 8 bfloat16 values of a row are one 128-bit word
WARP = tl.constexpr(32)


@triton.jit
def _halves(x):
    """``x (R, 2 W)``, ``W > 1``, as its even and odd columns ``(R, W)``."""
    return tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))


@triton.jit
def unstack_steps(x):
    """The columns of ``x (R, 8)`` as a tuple of eight ``(R,)`` tiles, in order."""
    even, odd = _halves(x)  # columns 0 2 4 6 and 1 3 5 7
    c04, c26 = _halves(even)
    c15, c37 = _halves(odd)
    c0, c4 = tl.split(c04)
    c2, c6 = tl.split(c26)
    c1, c5 = tl.split(c15)
    c3, c7 = tl.split(c37)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def stack_steps(c):
    """Eight ``(R,)`` tiles as the columns of one ``(R, 8)`` tile (the inverse of :func:`unstack_steps`)."""
    R: tl.constexpr = c[0].shape[0]
    even = tl.reshape(tl.join(tl.join(c[0], c[4]), tl.join(c[2], c[6])), (R, 4))
    odd = tl.reshape(tl.join(tl.join(c[1], c[5]), tl.join(c[3], c[7])), (R, 4))
    return tl.reshape(tl.join(even, odd), (R, 8))


@triton.jit
def own_columns(x):
    """The columns of ``x (R, W)``, ``W`` one of 1, 2, 4 and 8, as a tuple of ``W`` ``(R,)`` tiles in order."""
    W: tl.constexpr = x.shape[1]
    if W == 1:
        cols = (tl.reshape(x, (x.shape[0],)),)
    elif W == 2:
        cols = tl.split(x)
    elif W == 4:
        even, odd = _halves(x)
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        cols = (c0, c1, c2, c3)
    else:
        cols = unstack_steps(x)
    return cols


@triton.jit
def own_stacked(c, W: tl.constexpr):
    """``W`` ``(R,)`` tiles as the columns of one ``(R, W)`` tile (the inverse of :func:`own_columns`)."""
    if W == 1:
        x = c[0][:, None]
    elif W == 2:
        x = tl.join(c[0], c[1])
    elif W == 4:
        x = tl.reshape(tl.join(tl.join(c[0], c[2]), tl.join(c[1], c[3])), (c[0].shape[0], 4))
    else:
        x = stack_steps(c)
    return x


@triton.jit
def slot_steps(rows, t0, stride, read, L):
    """A block's ``STEPS`` steps from ``t0`` of a slot's row of B or C, float32, as a tuple of ``(32,)`` tiles:
    ``rows (32, 1)`` points to each lane's row, its steps ``stride`` apart; zero where ``read (32, 1)`` is off and
    from step ``L`` on. A lane reads 16-bit values as one vector of the eight steps, float32 ones as two of four:
    one tile of eight float32 steps a lane would span two lanes' vectors, and its split into steps would shuffle
    them between lanes (H100, float32 inputs, (8, 1536, 2048): forward 0.290 ms, 0.643 with such tiles; backward
    1.100, 1.297). Read as float32 copies, bfloat16 B and C made the forward slower: 0.531 against 0.322 ms on
    (64, 384, 1568), whose 64 batch elements each have their own rows."""
    if rows.dtype.element_ty.primitive_bitwidth == 32:
        HALF: tl.constexpr = STEPS // 2
        t = t0 + tl.arange(0, HALF)[None, :]
        lo = tl.load(rows + t * stride, mask=read & (t < L), other=0.0)
        hi = tl.load(rows + (t + HALF) * stride, mask=read & (t + HALF < L), other=0.0)
        steps = own_columns(lo) + own_columns(hi)
    else:
        t = t0 + tl.arange(0, STEPS)[None, :]
        steps = unstack_steps(tl.load(rows + t * stride, mask=read & (t < L), other=0.0).to(tl.float32))
    return steps


@triton.jit
def _block_tiles(u_rows, dt_rows, z_rows, t, t_out, valid, valid_out, HAS_Z: tl.constexpr):
    """A lane's ``u``, raw ``delta`` and ``z`` at its own steps ``t`` of a block, ``(32, OWN)`` tiles in their own
    dtypes (``z`` at the output's steps ``t_out``)."""
    u = tl.load(u_rows + t, mask=valid, other=0.0)
    dt = tl.load(dt_rows + t, mask=valid, other=0.0)
    z = u
    if HAS_Z:
        z = tl.load(z_rows + t_out, mask=valid_out, other=0.0)
    return u, dt, z


@triton.jit
def mirrored(x, REVERSE_OUT: tl.constexpr):
    """A block's tile between the order of its steps and that of its output's steps: reversed with ``REVERSE_OUT``
    (its own inverse)."""
    if REVERSE_OUT and x.shape[1] > 1:
        x = tl.flip(x, 1)
    return x


@triton.jit
def lanes_exchanged(x, m: tl.constexpr, FAST_MATH: tl.constexpr):
    """``x (32, S)``, a lane's row, with each lane's row replaced by that of the lane ``m`` apart (``lane ^ m``).
    On the GPU one shuffle a value (a program is one warp, lane ``i`` holding row ``i``); in the interpreter a
    permutation of the rows."""
    if FAST_MATH:
        bits = tl.inline_asm_elementwise(
            "shfl.sync.bfly.b32 $0, $1, $2, 31, -1;", "=r,r,r",
            [x.to(tl.int32, bitcast=True), tl.full(x.shape, m, tl.int32)], dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
        exchanged = bits.to(tl.float32, bitcast=True)
    else:
        R: tl.constexpr = x.shape[0]
        S: tl.constexpr = x.shape[1]
        exchanged = tl.reshape(tl.flip(tl.reshape(x, (R // (2 * m), 2, m, S)), 1), (R, S))
    return exchanged


@triton.jit
def parts_summed(x, LOG_D: tl.constexpr, FAST_MATH: tl.constexpr):
    """``x (32, S)`` summed over the parts of each channel (lanes ``2 ** LOG_D`` apart)."""
    for i in tl.static_range(5 - LOG_D):
        x += lanes_exchanged(x, (1 << LOG_D) << i, FAST_MATH)
    return x


@triton.jit
def lane_exchanged(x, m: tl.constexpr, FAST_MATH: tl.constexpr):
    """:func:`lanes_exchanged` of a ``(32,)`` tile, a value a lane."""
    if FAST_MATH:
        exchanged = lanes_exchanged(x, m, FAST_MATH)
    else:
        exchanged = tl.reshape(tl.flip(tl.reshape(x, (WARP // (2 * m), 2, m)), 1), (WARP,))
    return exchanged


@triton.jit
def part_broadcast(x, q: tl.constexpr, LOG_PARTS: tl.constexpr, FAST_MATH: tl.constexpr):
    """``x (32,)``, a value a lane, with every lane's value replaced by that of its channel's part ``q``. On the GPU
    one indexed shuffle; in the interpreter a selection of rows."""
    LOG_D: tl.constexpr = 5 - LOG_PARTS
    if FAST_MATH:
        source = (q << LOG_D) | (tl.arange(0, WARP) & ((1 << LOG_D) - 1))
        bits = tl.inline_asm_elementwise(
            "shfl.sync.idx.b32 $0, $1, $2, 31, -1;", "=r,r,r",
            [x.to(tl.int32, bitcast=True), source], dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
        broadcast = bits.to(tl.float32, bitcast=True)
    else:
        rows = tl.reshape(x, (1 << LOG_PARTS, 1 << LOG_D))
        row = tl.sum(tl.where(tl.arange(0, 1 << LOG_PARTS)[:, None] == q, rows, 0.0), axis=0)
        broadcast = tl.reshape(tl.broadcast_to(row[None, :], (1 << LOG_PARTS, 1 << LOG_D)), (WARP,))
    return broadcast


@triton.jit
def parts_gathered(x, LOG_PARTS: tl.constexpr, FAST_MATH: tl.constexpr):
    """A block's channel values from its parts' own steps: ``x (32, STEPS / parts)``, each lane's values at its own
    steps (:func:`own_steps`), as a tuple of ``STEPS`` ``(32,)`` tiles, step ``k`` from the part that owns it."""
    OWN: tl.constexpr = STEPS >> LOG_PARTS
    cols = own_columns(x)
    if LOG_PARTS == 0:
        gathered = cols
    else:
        gathered = ()
        for q in tl.static_range(1 << LOG_PARTS):  # step q * OWN + j is column j of part q
            for j in tl.static_range(OWN):
                gathered = gathered + (part_broadcast(cols[j], q, LOG_PARTS, FAST_MATH),)
    return gathered


@triton.jit
def parts_scattered(ys, part, LOG_PARTS: tl.constexpr, FAST_MATH: tl.constexpr):
    """``ys``, a tuple of ``STEPS`` ``(32,)`` tiles a lane's share of each step's sum, summed over the channel's parts
    at each lane's own steps (:func:`own_steps`) as a ``(32, STEPS / parts)`` tile: a butterfly from the highest part
    bit, each exchange sending the half of the steps the partner owns."""
    for i in tl.static_range(LOG_PARTS):  # part bit LOG_PARTS - 1 - i, lane bit 4 - i
        upper = ((part >> (LOG_PARTS - 1 - i)) & 1) != 0
        kept = ()
        for j in tl.static_range(STEPS >> (i + 1)):
            lo = ys[j]
            hi = ys[j + (STEPS >> (i + 1))]
            sent = lane_exchanged(tl.where(upper, lo, hi), 1 << (4 - i), FAST_MATH)
            kept = kept + (tl.where(upper, hi, lo) + sent,)
        ys = kept
    return own_stacked(ys, STEPS >> LOG_PARTS)


@triton.jit
def own_outputs(first, L, OWN: tl.constexpr, REVERSE_OUT: tl.constexpr):
    """Where a lane's own steps ``first + j`` (``j < OWN``; ``first (32, 1)`` its first own step of a block, see
    :func:`own_steps`) have their outputs, ``(32, OWN)``: the same steps, or with ``REVERSE_OUT`` their mirrored
    steps ``L - 1 - t`` in ascending order, i.e. the own steps' reversed (:func:`mirrored`). A column plus a range,
    so that Triton reads and writes them as vectors."""
    base = first
    if REVERSE_OUT:
        base = L - OWN - first
    return base + tl.arange(0, OWN)[None, :]


@triton.jit
def own_steps(part, LOG_PARTS: tl.constexpr):
    """A lane's first own step of a block, ``(32, 1)``: part ``p`` owns the ``STEPS / parts`` steps from
    ``p * STEPS / parts``. The channel's parts compute its per-step values (softplus, gate, output) at their own
    steps only."""
    return (part * (STEPS >> LOG_PARTS))[:, None]


@triton.jit
def lane_parts(LOG_PARTS: tl.constexpr):
    """Each of the program's 32 lanes' part (which share of its channel's states it holds; 0 for all with one part)
    and channel within the program."""
    lane = tl.arange(0, WARP)
    if LOG_PARTS == 0:
        return lane * 0, lane
    return lane >> (5 - LOG_PARTS), lane & ((WARP >> LOG_PARTS) - 1)


@triton.jit
def slot_exists(part, i: tl.constexpr, N: tl.constexpr, LOG_NS: tl.constexpr, LOG_PARTS: tl.constexpr):
    """Where slot ``i``'s state (``part * 2 ** LOG_NS + i``) is one of the ``N`` (they are padded to fill the
    slots); a constant where none is padding."""
    if N == (1 << (LOG_NS + LOG_PARTS)):
        return tl.full(part.shape, 1, tl.int1)
    return part * (1 << LOG_NS) + i < N


@triton.jit
def slot_real(part, i: tl.constexpr, d_mask, N: tl.constexpr, LOG_NS: tl.constexpr, LOG_PARTS: tl.constexpr):
    """Where slot ``i``'s state exists (:func:`slot_exists`) on a lane that has a channel (``d_mask``)."""
    return d_mask & slot_exists(part, i, N, LOG_NS, LOG_PARTS)


@triton.jit
def program_segment(L, n_segments, segment_chunks, CKPT_L: tl.constexpr):
    """A lane program's batch element and segment (``program_id(0)`` is ``b * n_segments + segment``) and the steps
    ``[start, end)`` the segment holds: ``segment_chunks`` chunks of ``CKPT_L`` steps (the whole sequence with one
    segment)."""
    pid = tl.program_id(0)
    segment = pid % n_segments
    start = segment * segment_chunks * CKPT_L
    end = tl.minimum(L, start + segment_chunks * CKPT_L)
    return (pid // n_segments).to(tl.int64), segment, start, end


@triton.jit
def program_channels(D_ptr, bias_ptr, cpg, LOG_PARTS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A lane program's channels (group ``program_id(1)``, block ``program_id(2)``): each lane's part, its channel
    ``d`` and whether there is one (``d_mask``), and that channel's ``D`` and delta bias as ``(32, 1)`` float32
    columns (zero without them)."""
    part, ch = lane_parts(LOG_PARTS)
    dl = tl.program_id(2) * (WARP >> LOG_PARTS) + ch
    d_mask = dl < cpg
    d = tl.program_id(1) * cpg + dl
    Dv = tl.zeros((WARP, 1), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d[:, None], mask=d_mask[:, None], other=0.0).to(tl.float32)
    bias = tl.zeros((WARP, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d[:, None], mask=d_mask[:, None], other=0.0).to(tl.float32)
    return part, d, d_mask, Dv, bias


@triton.jit
def slot_columns(A_ptr, h_ptr, d, d_mask, part, state_rows, sA_d, sA_n, N: tl.constexpr, LOG_NS: tl.constexpr,
                 LOG_PARTS: tl.constexpr, HAS_H: tl.constexpr):  # fmt: skip
    """Per slot of the lane (tuples of ``(32,)`` tiles): ``A`` scaled to base 2, and the value of ``h_ptr`` (a
    ``(batch, dim, N)`` tensor, the slot's at ``state_rows + i``) or zero without ``HAS_H``."""
    A2 = ()
    h = ()
    for i in tl.static_range(1 << LOG_NS):
        real = slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)
        n = part * (1 << LOG_NS) + i
        A2 = A2 + (tl.load(A_ptr + d * sA_d + n * sA_n, mask=real, other=0.0).to(tl.float32) * LOG2E,)
        hi = tl.zeros((WARP,), tl.float32)
        if HAS_H:
            hi = tl.load(h_ptr + state_rows + i, mask=real, other=0.0)
        h = h + (hi,)
    return A2, h


@triton.jit
def selective_scan_fwd_lane_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, ckpt_ptr,
    dim, L, cpg, n_chunks, n_segments, segment_chunks,
    su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sz_b, sz_d, sy_b, sy_d,
    N: tl.constexpr, LOG_NS: tl.constexpr, LOG_PARTS: tl.constexpr, CKPT_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, SEGMENTED: tl.constexpr, REVERSE_OUT: tl.constexpr,
    ACCUMULATE: tl.constexpr, FAST_MATH: tl.constexpr,
):  # fmt: skip
    NS: tl.constexpr = 1 << LOG_NS
    b, segment, start, end = program_segment(L, n_segments, segment_chunks, CKPT_L)
    g = tl.program_id(1)
    part, d, d_mask, Dv, bias = program_channels(D_ptr, bias_ptr, cpg, LOG_PARTS, HAS_D, HAS_BIAS)
    col = d[:, None]
    col_mask = d_mask[:, None]
    first = part * NS  # the lane's first state; slot i holds state first + i
    state_rows = (b * dim + d) * N + first
    chunk_rows = (b * dim + d) * n_chunks * N + first
    ckpt_rows = ckpt_ptr + chunk_rows
    if SEGMENTED:  # the state entering the segment, as the chunk kernels stored it
        A2, hs = slot_columns(
            A_ptr, ckpt_ptr, d, d_mask, part, chunk_rows + (start // CKPT_L) * N, sA_d, sA_n, N, LOG_NS, LOG_PARTS,
            True,
        )  # fmt: skip
    else:
        A2, hs = slot_columns(A_ptr, h0_ptr, d, d_mask, part, state_rows, sA_d, sA_n, N, LOG_NS, LOG_PARTS, HAS_H0)
    u_rows = u_ptr + b * su_b + col * su_d
    dt_rows = dt_ptr + b * sdt_b + col * sdt_d
    z_rows = z_ptr + b * sz_b + col * sz_d
    y_rows = y_ptr + b * sy_b + col * sy_d
    B_rows = B_ptr + b * sB_b + g * sB_g + first[:, None] * sB_n
    C_rows = C_ptr + b * sC_b + g * sC_g + first[:, None] * sC_n

    OWN: tl.constexpr = STEPS >> LOG_PARTS
    own_first = own_steps(part, LOG_PARTS)
    own = own_first + tl.arange(0, OWN)[None, :]
    t_out = own_outputs(start + own_first, L, OWN, REVERSE_OUT)
    valid = col_mask & (start + own < L)
    valid_out = col_mask & (t_out >= 0) & (t_out < L)
    u, dt_raw, z = _block_tiles(u_rows, dt_rows, z_rows, start + own, t_out, valid, valid_out, HAS_Z)
    for t0 in range(start, end, STEPS):
        # the next block's tiles are read before this one is solved
        t_own = t0 + own
        t_next = t_own + STEPS
        t_out_next = t_out + STEPS
        if REVERSE_OUT:
            t_out_next = t_out - STEPS
        valid_next = col_mask & (t_next < L)
        valid_out_next = col_mask & (t_out_next >= 0) & (t_out_next < L)
        u_next, dt_next, z_next = _block_tiles(
            u_rows, dt_rows, z_rows, t_next, t_out_next, valid_next, valid_out_next, HAS_Z
        )
        uf = u.to(tl.float32)
        dt = dt_raw.to(tl.float32) + bias
        if SOFTPLUS:
            dt = softplus_hw(dt, FAST_MATH)
        dt = tl.where(t_own < L, dt, 0.0)  # steps past the end leave the state unchanged
        dts = parts_gathered(dt, LOG_PARTS, FAST_MATH)
        dtus = parts_gathered(dt * uf, LOG_PARTS, FAST_MATH)
        Bs = ()  # slot i of step k at i * STEPS + k
        Cs = ()
        for i in tl.static_range(NS):
            read = slot_exists(part, i, N, LOG_NS, LOG_PARTS)[:, None]
            Bs = Bs + slot_steps(B_rows + i * sB_n, t0, sB_l, read, L)
            Cs = Cs + slot_steps(C_rows + i * sC_n, t0, sC_l, read, L)
        ys = ()
        for k in tl.static_range(STEPS):
            if STORE_CKPT and k == 0:  # CKPT_L is a multiple of STEPS
                if t0 % CKPT_L == 0:
                    for i in tl.static_range(NS):
                        stored = slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS)
                        tl.store(ckpt_rows + (t0 // CKPT_L) * N + i, hs[i], mask=stored)
            y = tl.zeros((WARP,), tl.float32)
            new = ()
            for i in tl.static_range(NS):
                h = tl.exp2(dts[k] * A2[i]) * hs[i] + dtus[k] * Bs[i * STEPS + k]
                y += h * Cs[i * STEPS + k]
                new = new + (h,)
            hs = new
            ys = ys + (y,)
        y = parts_scattered(ys, part, LOG_PARTS, FAST_MATH) + Dv * uf
        y = mirrored(y, REVERSE_OUT)
        if ACCUMULATE:
            y += tl.load(y_rows + t_out, mask=valid_out, other=0.0).to(tl.float32)
        if HAS_Z:
            y = y * silu_hw(z.to(tl.float32), FAST_MATH)
        tl.store(y_rows + t_out, y.to(y_ptr.dtype.element_ty), mask=valid_out)
        u, dt_raw, z = u_next, dt_next, z_next
        t_out = t_out_next
        valid_out = valid_out_next
    if segment == n_segments - 1:
        for i in tl.static_range(NS):
            tl.store(hT_ptr + state_rows + i, hs[i], mask=slot_real(part, i, d_mask, N, LOG_NS, LOG_PARTS))
