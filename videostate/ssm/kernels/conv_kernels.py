"""Triton kernels of the depthwise causal convolution with a carried ``conv_state``.

The convolution reads the extended input ``xin = cat(conv_state, x)``: position ``s`` of ``x`` is
``x[s]`` for ``s >= 0`` and ``conv_state[W + s]`` for ``-W <= s < 0``; ``y[t] = act(bias + sum_k
w[k] * xin[t - (W - 1 - k)])``. One program owns a ``(BLOCK_D, BLOCK_L)`` tile; the ``W`` shifted
reads of a tile hit the cache.

The backward kernel computes the gradient of every extended position ``s`` in ``[-W, L)`` (negative
positions are the gradient of ``conv_state``), recomputing the pre-activation at the ``W``
positions each ``s`` feeds, so nothing but the output gradient is read besides the inputs. Per-tile
sums for the weight and bias gradients are written out and summed by the caller.

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
def _pre_activation(x_rows, state_rows, w_rows, bias, p, d_mask, L, sx_l, ss_w, sw_w,
                    W: tl.constexpr, HAS_STATE: tl.constexpr):  # fmt: skip
    acc = tl.zeros((bias.shape[0], p.shape[0]), tl.float32) + bias[:, None]
    for k in tl.static_range(W):
        w_k = tl.load(w_rows + k * sw_w, mask=d_mask, other=0.0).to(tl.float32)
        acc += w_k[:, None] * _load_xin(x_rows, state_rows, p - (W - 1 - k), d_mask, L, sx_l, ss_w, W, HAS_STATE)
    return acc


@triton.jit
def causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr,
    dim, L, n_tiles,
    sx_b, sx_d, sx_l, sw_d, sw_w, ss_b, ss_d, ss_w, sy_b, sy_d, sy_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    b = (tl.program_id(0) // n_tiles).to(tl.int64)
    t = (tl.program_id(0) % n_tiles).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    d = d.to(tl.int64)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    x_rows = x_ptr + b * sx_b + d[:, None] * sx_d
    state_rows = state_ptr + b * ss_b + d[:, None] * ss_d
    pre = _pre_activation(x_rows, state_rows, w_ptr + d * sw_d, bias, t, d_mask, L, sx_l, ss_w, sw_w, W, HAS_STATE)
    if SILU:
        pre = pre * sigmoid(pre)
    mask = d_mask[:, None] & (t < L)[None, :]
    tl.store(y_ptr + b * sy_b + d[:, None] * sy_d + t[None, :] * sy_l, pre.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def causal_conv1d_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, dy_ptr, dx_ptr, dstate_ptr, dw_ptr, dbias_ptr,
    dim, L, n_tiles,
    sx_b, sx_d, sx_l, sw_d, sw_w, ss_b, ss_d, ss_w, sdy_b, sdy_d, sdy_l, sdx_b, sdx_d, sdx_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    b = (tl.program_id(0) // n_tiles).to(tl.int64)
    tile = (tl.program_id(0) % n_tiles).to(tl.int64)
    s = tile * BLOCK_L + tl.arange(0, BLOCK_L) - W  # extended positions [-W, L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    d = d.to(tl.int64)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    x_rows = x_ptr + b * sx_b + d[:, None] * sx_d
    state_rows = state_ptr + b * ss_b + d[:, None] * ss_d
    w_rows = w_ptr + d * sw_d
    dy_rows = dy_ptr + b * sdy_b + d[:, None] * sdy_d
    partial = (b * n_tiles + tile) * dim + d  # row of the per-tile weight and bias sums
    dx = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)
    for j in tl.static_range(W):
        p = s + j  # output position that s feeds through weight W - 1 - j
        valid = d_mask[:, None] & ((p >= 0) & (p < L))[None, :]
        grad = tl.load(dy_rows + p[None, :] * sdy_l, mask=valid, other=0.0).to(tl.float32)
        if SILU:
            pre = _pre_activation(x_rows, state_rows, w_rows, bias, p, d_mask, L, sx_l, ss_w, sw_w, W, HAS_STATE)
            sig = sigmoid(pre)
            grad = grad * sig * (1.0 + pre * (1.0 - sig))
        w_j = tl.load(w_rows + (W - 1 - j) * sw_w, mask=d_mask, other=0.0).to(tl.float32)
        dx += w_j[:, None] * grad
        if j == 0:
            tl.store(dbias_ptr + partial, tl.sum(grad, axis=1), mask=d_mask)
            for k in tl.static_range(W):
                xin = _load_xin(x_rows, state_rows, s - (W - 1 - k), d_mask, L, sx_l, ss_w, W, HAS_STATE)
                tl.store(dw_ptr + partial * W + k, tl.sum(grad * xin, axis=1), mask=d_mask)
    dx_offsets = b * sdx_b + d[:, None] * sdx_d + s[None, :] * sdx_l
    tl.store(dx_ptr + dx_offsets, dx.to(dx_ptr.dtype.element_ty), mask=d_mask[:, None] & ((s >= 0) & (s < L))[None, :])
    if HAS_STATE:
        state_offsets = b * dim * W + d[:, None] * W + (s + W)[None, :]
        tl.store(dstate_ptr + state_offsets, dx, mask=d_mask[:, None] & (s < 0)[None, :])


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
