"""Triton kernels of the depthwise causal convolution with a carried ``conv_state``.

The convolution reads the extended input ``xin = cat(conv_state, x)``: position ``s`` of ``x`` is
``x[s]`` for ``s >= 0`` and ``conv_state[W + s]`` for ``-W <= s < 0``; ``y[t] = act(bias + sum_k
w[k] * xin[t - (W - 1 - k)])``. One program owns a ``(BLOCK_D, BLOCK_L)`` tile; the ``W`` shifted
reads of a tile hit the cache.

``REVERSE`` convolves the time-reversed sequence (from a zero state) without forming the flip: a tile covers
positions of ``x`` in its own order, each tap reads ``W - 1 - k`` steps after the output's position instead of before
it, and the outputs, which lie in reversed order, are stored (and their gradients loaded) as an ascending run flipped
in registers, so every access stays in storage order (vectorised where aligned).

The backward takes two passes. The first computes the gradient at every output's pre-activation, ``g = dy *
silu'(pre)`` (recomputing ``pre``), and per-tile sums for the weight and bias gradients, which the caller sums. The
second forms the input gradient at every extended position ``s`` in ``[-W, L)`` (negative positions are the gradient
of ``conv_state``) from the ``W`` values of ``g`` that ``s`` feeds.

Grid: axis 0 runs over ``(batch, tile of L)`` pairs, batch-major (it takes up to ``2**31 - 1`` programs;
axes 1 and 2 only ``65535``: a 4K frame pair's interleaved scan is 16.7M steps, 130560 tiles of 128), axis
1 over tiles of channels. Offsets are int64: ``(batch, channels, L)`` maps of more than ``2**31`` elements
are fine.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import sigmoid


@triton.jit
def _load_xin(x_rows, state_rows, s, d_mask, L, sx_l, ss_w, W: tl.constexpr, HAS_STATE: tl.constexpr):
    """The extended input at positions ``s`` ((BLOCK_L,), may be negative), float32."""
    inside = d_mask[:, None] & ((s >= 0) & (s < L))[None, :]
    values = tl.load(x_rows + s[None, :] * sx_l, mask=inside, other=0.0).to(tl.float32)
    if HAS_STATE:
        before = d_mask[:, None] & ((s < 0) & (s >= -W))[None, :]
        values += tl.load(state_rows + (s + W)[None, :] * ss_w, mask=before, other=0.0).to(tl.float32)
    return values


@triton.jit
def _tap(k: tl.constexpr, W: tl.constexpr, REVERSE: tl.constexpr):
    """Where tap ``k`` reads ``x`` relative to the position of its output: ``W - 1 - k`` steps before it, or with
    ``REVERSE`` (the convolution of the time-reversed sequence, in the sequence's own order) as many after it."""
    if REVERSE:
        return W - 1 - k
    else:
        return -(W - 1 - k)


@triton.jit
def _pre_activation(x_rows, state_rows, w_rows, bias, p, d_mask, L, sx_l, ss_w, sw_w,
                    W: tl.constexpr, HAS_STATE: tl.constexpr, REVERSE: tl.constexpr):  # fmt: skip
    acc = tl.zeros((bias.shape[0], p.shape[0]), tl.float32) + bias[:, None]
    for k in tl.static_range(W):
        w_k = tl.load(w_rows + k * sw_w, mask=d_mask, other=0.0).to(tl.float32)
        xin = _load_xin(x_rows, state_rows, p + _tap(k, W, REVERSE), d_mask, L, sx_l, ss_w, W, HAS_STATE)
        acc += w_k[:, None] * xin
    return acc


@triton.jit
def _output_steps(t0, L, BLOCK_L: tl.constexpr, REVERSE: tl.constexpr):
    """Where the outputs of positions ``t0 + arange(BLOCK_L)`` lie, and which exist: those positions, or with
    ``REVERSE`` (outputs in time-reversed order) ``L - 1 - t`` for the tile flipped, i.e. ascending again."""
    if REVERSE:
        steps = L - t0 - BLOCK_L + tl.arange(0, BLOCK_L)
        return steps, steps >= 0
    else:
        steps = t0 + tl.arange(0, BLOCK_L)
        return steps, steps < L


@triton.jit
def _in_order(values, REVERSE: tl.constexpr):
    """A tile of outputs (or their gradients) between the order of positions and that of :func:`_output_steps`."""
    if REVERSE:
        return tl.flip(values, 1)
    else:
        return values


@triton.jit
def _tile(n_tiles, dim, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The program's tile: its batch row and tile of L (axis 0), its positions ``(BLOCK_L,)`` and channels
    ``(BLOCK_D,)`` (int64) and the channels' mask."""
    b = (tl.program_id(0) // n_tiles).to(tl.int64)
    tile = (tl.program_id(0) % n_tiles).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, tile, tile * BLOCK_L + tl.arange(0, BLOCK_L), d.to(tl.int64), d < dim


@triton.jit
def _bias(bias_ptr, d, d_mask, HAS_BIAS: tl.constexpr):
    bias = tl.zeros(d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    return bias


@triton.jit
def causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr,
    dim, L, n_tiles,
    sx_b, sx_d, sx_l, sw_d, sw_w, ss_b, ss_d, ss_w, sy_b, sy_d, sy_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    b, tile, t, d, d_mask = _tile(n_tiles, dim, BLOCK_D, BLOCK_L)
    x_rows = x_ptr + b * sx_b + d[:, None] * sx_d
    state_rows = state_ptr + b * ss_b + d[:, None] * ss_d
    bias = _bias(bias_ptr, d, d_mask, HAS_BIAS)
    pre = _pre_activation(
        x_rows, state_rows, w_ptr + d * sw_d, bias, t, d_mask, L, sx_l, ss_w, sw_w, W, HAS_STATE, REVERSE
    )
    if SILU:
        pre = pre * sigmoid(pre)
    steps, exists = _output_steps(tile * BLOCK_L, L, BLOCK_L, REVERSE)
    y_offsets = b * sy_b + d[:, None] * sy_d + steps[None, :] * sy_l
    out = _in_order(pre, REVERSE).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_offsets, out, mask=d_mask[:, None] & exists[None, :])


@triton.jit
def causal_conv1d_bwd_gate_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, dy_ptr, g_ptr, dw_ptr, dbias_ptr,
    dim, L, n_tiles,
    sx_b, sx_d, sx_l, sw_d, sw_w, ss_b, ss_d, ss_w, sdy_b, sdy_d, sdy_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """The backward's first pass over a tile of output positions: the gradient at the pre-activation, ``g = dy *
    silu'(pre)`` (``dy`` without ``SILU``), written to ``g_ptr`` (a contiguous ``(batch, dim, L)`` float32 buffer
    in the order of positions), and the tile's sums of ``g`` and of ``g`` times each tap's input, the bias and
    weight gradients."""
    b, tile, t, d, d_mask = _tile(n_tiles, dim, BLOCK_D, BLOCK_L)
    x_rows = x_ptr + b * sx_b + d[:, None] * sx_d
    state_rows = state_ptr + b * ss_b + d[:, None] * ss_d
    w_rows = w_ptr + d * sw_d
    steps, exists = _output_steps(tile * BLOCK_L, L, BLOCK_L, REVERSE)
    dy_offsets = b * sdy_b + d[:, None] * sdy_d + steps[None, :] * sdy_l
    g = _in_order(tl.load(dy_ptr + dy_offsets, mask=d_mask[:, None] & exists[None, :], other=0.0), REVERSE)
    g = g.to(tl.float32)
    if SILU:
        bias = _bias(bias_ptr, d, d_mask, HAS_BIAS)
        pre = _pre_activation(x_rows, state_rows, w_rows, bias, t, d_mask, L, sx_l, ss_w, sw_w, W, HAS_STATE, REVERSE)
        sig = sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    tl.store(g_ptr + (b * dim + d[:, None]) * L + t[None, :], g, mask=d_mask[:, None] & (t < L)[None, :])
    partial = (b * n_tiles + tile) * dim + d  # row of the per-tile weight and bias sums
    tl.store(dbias_ptr + partial, tl.sum(g, axis=1), mask=d_mask)
    for k in tl.static_range(W):
        xin = _load_xin(x_rows, state_rows, t + _tap(k, W, REVERSE), d_mask, L, sx_l, ss_w, W, HAS_STATE)
        tl.store(dw_ptr + partial * W + k, tl.sum(g * xin, axis=1), mask=d_mask)


@triton.jit
def _input_gradient(g_rows, w_rows, s, d_mask, L, sw_w, W: tl.constexpr, REVERSE: tl.constexpr):
    """``sum_k w[k] * g[s - tap(k)]`` over the positions ``s`` that feed outputs (float32)."""
    dx = tl.zeros((d_mask.shape[0], s.shape[0]), tl.float32)
    for k in tl.static_range(W):
        fed = s - _tap(k, W, REVERSE)  # the output that reads s through tap k
        g_fed = tl.load(g_rows + fed[None, :], mask=d_mask[:, None] & ((fed >= 0) & (fed < L))[None, :], other=0.0)
        dx += tl.load(w_rows + k * sw_w, mask=d_mask, other=0.0).to(tl.float32)[:, None] * g_fed
    return dx


@triton.jit
def causal_conv1d_bwd_input_kernel(
    w_ptr, g_ptr, dx_ptr, dstate_ptr,
    dim, L, n_tiles,
    sw_d, sw_w, sdx_b, sdx_d, sdx_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
    HAS_STATE: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """The backward's second pass: the input gradient over a tile of positions in ``[0, L)``, from the ``W`` values
    of ``g`` (the first pass's buffer) that each feeds; with ``HAS_STATE`` the first tile of each row also writes
    the carried state's gradient, the same sum at the positions ``[-W, 0)``."""
    b, tile, s, d, d_mask = _tile(n_tiles, dim, BLOCK_D, BLOCK_L)
    g_rows = g_ptr + (b * dim + d[:, None]) * L
    w_rows = w_ptr + d * sw_d
    dx = _input_gradient(g_rows, w_rows, s, d_mask, L, sw_w, W, REVERSE)
    dx_offsets = b * sdx_b + d[:, None] * sdx_d + s[None, :] * sdx_l
    tl.store(dx_ptr + dx_offsets, dx.to(dx_ptr.dtype.element_ty), mask=d_mask[:, None] & (s < L)[None, :])
    if HAS_STATE:
        if tile == 0:
            back = tl.arange(0, BLOCK_W) - W  # the positions [-W, 0) of the carried inputs (and unused ones)
            dstate = _input_gradient(g_rows, w_rows, back, d_mask, L, sw_w, W, REVERSE)
            state_offsets = (b * dim + d[:, None]) * W + (back + W)[None, :]
            tl.store(dstate_ptr + state_offsets, dstate, mask=d_mask[:, None] & (back < 0)[None, :])


@triton.jit
def causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, next_ptr,
    dim,
    sx_b, sx_d, ss_b, ss_d, ss_w, sw_d, sw_w,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k = tl.arange(0, BLOCK_W)
    d_mask = d < dim
    in_window = d_mask[:, None] & (k < W)[None, :]
    # window = (state[1:], x): column k holds state[k + 1], the last one the new input.
    from_state = d_mask[:, None] & (k < W - 1)[None, :]
    state_rows = state_ptr + b * ss_b + d[:, None] * ss_d
    window = tl.load(state_rows + (k + 1)[None, :] * ss_w, mask=from_state, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * sx_b + d * sx_d, mask=d_mask, other=0.0).to(tl.float32)
    window = tl.where((k == W - 1)[None, :], x[:, None], window)
    w = tl.load(w_ptr + d[:, None] * sw_d + k[None, :] * sw_w, mask=in_window, other=0.0).to(tl.float32)
    y = tl.sum(window * w, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if SILU:
        y = y * sigmoid(y)
    tl.store(y_ptr + b * dim + d, y.to(y_ptr.dtype.element_ty), mask=d_mask)
    next_offsets = b * dim * W + d[:, None] * W + k[None, :]
    tl.store(next_ptr + next_offsets, window.to(next_ptr.dtype.element_ty), mask=in_window)


@triton.jit
def _tap_weight(w_rows, slot: tl.constexpr, W: tl.constexpr, d_mask):
    """The weight of window slot ``slot`` (``x[t - 3 + slot]``): tap ``slot - (4 - W)``, zero before the first."""
    if slot < 4 - W:
        return tl.zeros(d_mask.shape, tl.float32)[None, :]
    return tl.load(w_rows + (slot - (4 - W)), mask=d_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _state_input(state_rows, back: tl.constexpr, W: tl.constexpr, ss_w, mask, HAS_STATE: tl.constexpr):
    """``x[-back]``, the carried input ``back`` steps before the chunk: ``conv_state[W - back]``, zero past it."""
    if HAS_STATE and back <= W:
        return tl.load(state_rows + (W - back) * ss_w, mask=mask, other=0.0).to(tl.float32)
    return tl.zeros(mask.shape, tl.float32)


@triton.jit
def causal_conv1d_tokens_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr,
    batch, dim, L,
    sx_b, sx_l, sw_d, ss_b, ss_d, ss_w, sy_b, sy_l,
    W: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
):  # fmt: skip
    """SiLU causal convolution of token-major sequences (``W <= 4``): a program owns ``BLOCK_B`` sequences x
    ``BLOCK_D`` channels and walks time, the last three inputs held in registers, so each input is read once."""
    seq = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    mask = (seq < batch)[:, None] & d_mask[None, :]
    w_rows = w_ptr + d * sw_d
    w0 = _tap_weight(w_rows, 0, W, d_mask)
    w1 = _tap_weight(w_rows, 1, W, d_mask)
    w2 = _tap_weight(w_rows, 2, W, d_mask)
    w3 = _tap_weight(w_rows, 3, W, d_mask)
    start = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
    if HAS_BIAS:
        start += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    state_rows = state_ptr + seq[:, None] * ss_b + d[None, :] * ss_d
    x0 = _state_input(state_rows, 3, W, ss_w, mask, HAS_STATE)  # x[t - 3], x[t - 2], x[t - 1] at t = 0
    x1 = _state_input(state_rows, 2, W, ss_w, mask, HAS_STATE)
    x2 = _state_input(state_rows, 1, W, ss_w, mask, HAS_STATE)
    x_rows = x_ptr + seq[:, None] * sx_b + d[None, :]
    y_rows = y_ptr + seq[:, None] * sy_b + d[None, :]
    for _ in range(L):
        x3 = tl.load(x_rows, mask=mask, other=0.0).to(tl.float32)
        pre = start + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3
        tl.store(y_rows, (pre * sigmoid(pre)).to(y_ptr.dtype.element_ty), mask=mask)
        x0, x1, x2 = x1, x2, x3
        x_rows += sx_l
        y_rows += sy_l
