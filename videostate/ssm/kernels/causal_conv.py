"""Causal depthwise convolution on the GPU: launchers and the autograd function.

Same call signatures as :func:`videostate.ssm.causal_conv.causal_conv1d_reference` and
``causal_conv1d_update_reference``. The next ``conv_state`` (the last ``width`` inputs) is sliced in
PyTorch, so it stays differentiable; the one-step update is a forward-only kernel and the reference
runs it when gradients are needed.
"""

from __future__ import annotations

import torch
import triton

from ..causal_conv import causal_conv1d_reference, causal_conv1d_update_reference, next_conv_state
from .common import any_float64, next_power_of_2
from .conv_kernels import (
    causal_conv1d_bwd_gate_kernel,
    causal_conv1d_bwd_input_kernel,
    causal_conv1d_fwd_kernel,
    causal_conv1d_tokens_kernel,
    causal_conv1d_update_kernel,
)

# CONFIG: the forward's tile; BACKWARD: that of the backward's two passes (causal_conv1d_bwd_gate_kernel, then
# causal_conv1d_bwd_input_kernel). H100, bf16, VideoMamba-M's convolutions in training, (16, 1152, 1584) with SiLU,
# GPU us forward / reversed direction: forward 57 / 72 with CONFIG, the best of eight tiles (2-32 channels, 128-512
# steps, 2-8 warps); 57 / 249 when the reversed direction walked x backwards with a negative stride (scalar loads and
# stores). Backward kernels with 16 channels per tile 266 / 303 (gate pass 151 / 190, input pass 92 / 90, the weight
# and bias sums 23), against about 447 / 1673 for the single pass it replaced, which recomputed the pre-activation at
# each of the W outputs an input feeds (its backward calls took 559 / 1785 us, which include 112 us of accumulating the
# input's gradient into a strided leaf). Calls with 8 / 16 channels per tile: forward direction 371 / 379, reversed
# 386 / 416 us (that accumulation included); 256 or 512 steps, 2 or 8 warps were slower.
CONFIG = {"block_d": 16, "block_l": 128, "num_warps": 4}
BACKWARD = {"block_d": 8, "block_l": 128, "num_warps": 4}
# Elements of a token-major tile (:func:`causal_conv1d_tokens`): a 32-step sequence and 128 channels. H100, bf16, the
# depth model's token-major convolutions (32 frames; 96 to 768 channels): DA2-S's six 0.68 -> 0.61 ms, DA2-L's finest
# 0.75 -> 0.64 ms, against the 2048 of CONFIG's tile; the best of eight tilings (16 to 256 channels, 1 to 4 warps).
TOKENS_TILE = 4096
# Token-major convolutions of at most TOKENS_WIDTH taps walk time (causal_conv1d_tokens_kernel): a program of
# TOKENS_SEQUENCES sequences x TOKENS_CHANNELS channels, TOKENS_WARPS warps. H100, bf16, 32 steps, the depth model's
# convolutions at 518x518, against the tiles above: DA2-S's six 0.37 -> 0.36 ms, DA2-L's 1.42 -> 1.35 ms; from a
# carried state, whose window the tiles read again at every tap, 0.92 -> 0.40 ms and 3.69 -> 1.41 ms (best of 56
# tilings).
TOKENS_WIDTH = 4
TOKENS_SEQUENCES, TOKENS_CHANNELS, TOKENS_WARPS = 1, 128, 2


MAX_GRID_AXIS_1 = 65535  # CUDA's limit on grid axes 1 and 2 (axis 0: 2**31 - 1)


def launch_grid(batch: int, dim: int, n_tiles: int, block_d: int) -> tuple[int, int]:
    """Grid of the convolution kernels: axis 0 the ``batch * n_tiles`` (batch, tile of L) pairs, axis 1 the
    tiles of ``block_d`` channels."""
    channel_tiles = triton.cdiv(dim, block_d)
    if channel_tiles > MAX_GRID_AXIS_1:
        raise ValueError(f"causal_conv1d runs at most {MAX_GRID_AXIS_1 * block_d} channels; got x of {dim} channels")
    return batch * n_tiles, channel_tiles


def _silu(activation) -> bool:
    return activation in ("silu", "swish")


def _state_args(conv_state, fallback):
    return (fallback, 0, 0, 0) if conv_state is None else (conv_state, *conv_state.stride())


class CausalConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, conv_state, silu, reverse):
        batch, dim, length = x.shape
        width = weight.shape[1]
        y = torch.empty(batch, dim, length, device=x.device, dtype=x.dtype)
        state, *state_strides = _state_args(conv_state, x)
        n_tiles = triton.cdiv(length, CONFIG["block_l"])
        causal_conv1d_fwd_kernel[launch_grid(batch, dim, n_tiles, CONFIG["block_d"])](
            x, weight, x if bias is None else bias, state, y, dim, length, n_tiles,
            *x.stride(), *weight.stride(), *state_strides, *y.stride(),
            W=width, BLOCK_D=CONFIG["block_d"], BLOCK_L=CONFIG["block_l"],
            HAS_BIAS=bias is not None, HAS_STATE=conv_state is not None, SILU=silu, REVERSE=reverse,
            num_warps=CONFIG["num_warps"],
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias, conv_state)
        ctx.silu, ctx.reverse = silu, reverse
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, conv_state = ctx.saved_tensors
        batch, dim, length = x.shape
        width = weight.shape[1]
        f32 = torch.float32
        block_d, block_l = BACKWARD["block_d"], BACKWARD["block_l"]
        n_tiles = triton.cdiv(length, block_l)
        grid = launch_grid(batch, dim, n_tiles, block_d)
        dx = torch.empty(batch, dim, length, device=x.device, dtype=x.dtype)
        dstate = None if conv_state is None else torch.empty(batch, dim, width, device=x.device, dtype=f32)
        dw = torch.empty(batch, n_tiles, dim, width, device=x.device, dtype=f32)
        dbias = torch.empty(batch, n_tiles, dim, device=x.device, dtype=f32)
        g = torch.empty(batch, dim, length, device=x.device, dtype=f32)  # the gradient at the pre-activation
        state, *state_strides = _state_args(conv_state, x)
        flags = {"W": width, "BLOCK_D": block_d, "BLOCK_L": block_l, "HAS_STATE": conv_state is not None,
                 "REVERSE": ctx.reverse, "num_warps": BACKWARD["num_warps"]}  # fmt: skip
        causal_conv1d_bwd_gate_kernel[grid](
            x, weight, x if bias is None else bias, state, dy, g, dw, dbias, dim, length, n_tiles,
            *x.stride(), *weight.stride(), *state_strides, *dy.stride(),
            HAS_BIAS=bias is not None, SILU=ctx.silu, **flags,
        )  # fmt: skip
        causal_conv1d_bwd_input_kernel[grid](
            weight, g, dx, dx if dstate is None else dstate, dim, length, n_tiles, *weight.stride(), *dx.stride(),
            BLOCK_W=next_power_of_2(width), **flags,
        )  # fmt: skip
        dw = dw.sum((0, 1)).to(weight.dtype)
        dbias = None if bias is None else dbias.sum((0, 1)).to(bias.dtype)
        dstate = None if dstate is None else dstate.to(conv_state.dtype)
        return dx, dw, dbias, dstate, None, None


def causal_conv1d_triton(x, weight, bias, activation, conv_state, reverse=False):
    """Triton causal convolution (see :func:`videostate.ssm.causal_conv.causal_conv1d`); ``(y, next_state)``."""
    if any_float64(x, weight, bias, conv_state):
        return causal_conv1d_reference(x, weight, bias, activation, conv_state, reverse)
    y = CausalConv1dFunction.apply(x, weight, bias, conv_state, _silu(activation), reverse)
    width = weight.shape[1]
    return y, next_conv_state(x[..., :width].flip(-1) if reverse else x, conv_state, width)


def causal_conv1d_tokens(x, weight, bias, conv_state=None):
    """SiLU causal convolution of token-major sequences, forward only: ``x (batch, L, dim)`` (channels at stride
    1, e.g. read in place from a projection's rows) -> ``(batch, L, dim)`` contiguous; ``weight (dim, W)``,
    ``conv_state (batch, dim, W)`` or ``None`` (zeros). Up to ``TOKENS_WIDTH`` taps a program walks time with the
    window in registers; wider convolutions take tiles that span a short sequence whole and as many channels as
    ``TOKENS_TILE`` holds elements."""
    batch, length, dim = x.shape
    width = weight.shape[1]
    y = torch.empty(batch, length, dim, device=x.device, dtype=x.dtype)
    state, *state_strides = _state_args(conv_state, x)
    if width <= TOKENS_WIDTH:
        grid = (triton.cdiv(batch, TOKENS_SEQUENCES), triton.cdiv(dim, TOKENS_CHANNELS))
        causal_conv1d_tokens_kernel[grid](
            x, weight, x if bias is None else bias, state, y, batch, dim, length,
            x.stride(0), x.stride(1), weight.stride(0), *state_strides, y.stride(0), y.stride(1),
            W=width, BLOCK_B=TOKENS_SEQUENCES, BLOCK_D=TOKENS_CHANNELS, HAS_BIAS=bias is not None,
            HAS_STATE=conv_state is not None, num_warps=TOKENS_WARPS,
        )  # fmt: skip
        return y
    block_l = min(CONFIG["block_l"], max(16, next_power_of_2(length)))
    block_d = TOKENS_TILE // block_l
    n_tiles = triton.cdiv(length, block_l)
    x_cm, y_cm = x.mT, y.mT  # the kernel's (batch, dim, L) indexing
    causal_conv1d_fwd_kernel[launch_grid(batch, dim, n_tiles, block_d)](
        x_cm, weight, x if bias is None else bias, state, y_cm, dim, length, n_tiles,
        *x_cm.stride(), *weight.stride(), *state_strides, *y_cm.stride(),
        W=width, BLOCK_D=block_d, BLOCK_L=block_l,
        HAS_BIAS=bias is not None, HAS_STATE=conv_state is not None, SILU=True, REVERSE=False,
        num_warps=CONFIG["num_warps"],
    )  # fmt: skip
    return y


def causal_conv1d_update_triton(x, conv_state, weight, bias, activation):
    """One step (see :func:`videostate.ssm.causal_conv.causal_conv1d_update`); forward-only kernel."""
    tensors = (x, conv_state, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or any_float64(*tensors):
        return causal_conv1d_update_reference(x, conv_state, weight, bias, activation)
    batch, dim, width = conv_state.shape
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    next_state = torch.empty(batch, dim, width, device=x.device, dtype=conv_state.dtype)
    block_d = 64
    causal_conv1d_update_kernel[(batch, triton.cdiv(dim, block_d))](
        x, conv_state, weight, x if bias is None else bias, y, next_state, dim,
        *x.stride(), *conv_state.stride(), *weight.stride(),
        W=width, BLOCK_D=block_d, BLOCK_W=next_power_of_2(width), HAS_BIAS=bias is not None, SILU=_silu(activation),
    )  # fmt: skip
    return y, next_state
