"""The block-tail kernel against its written formula in float64: ``s = x + y Wo^T (+ bo)``, then
``s + fc2(act(fc1(LayerNorm(s))))``, with the projection and ``s`` rounded to the compute dtype as the unfused
layers round them.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU the same tests run on CPU tensors
through Triton's interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.block_tail import block_tail_triton

DTYPES = KERNEL_DTYPES
# Relative to the largest output: float32 sums; the half types round y, x, the weights and the intermediates.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# (tokens shape, channels, d_inner, hidden): the depth model's finest scale (48 channels, Mamba's 2x inner width,
# 2x hidden), channels and widths that are not powers of two nor multiples of a step, a token count that is not
# a multiple of a program's, 96 channels, and 160 (the narrower hidden step above 128 channels).
SHAPES = [((5, 32), 48, 96, 96), ((3, 50), 20, 40, 44), ((130,), 96, 192, 192), ((70,), 160, 320, 320)]


def rand(*shape, scale, g):
    return (torch.rand(*shape, generator=g, device=DEVICE, dtype=torch.float64) * 2 - 1) * scale


def case(tokens, channels, d_inner, hidden, with_bias, seed=0):
    """Fresh random inputs and parameters in float64: ``(y, x)`` and the kernel's parameter tuple."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    y, x = rand(*tokens, d_inner, scale=2.0, g=g), rand(*tokens, channels, scale=2.0, g=g)
    params = (
        rand(channels, d_inner, scale=1 / math.sqrt(d_inner), g=g),
        rand(channels, scale=0.5, g=g) if with_bias else None,
        1 + rand(channels, scale=0.5, g=g),
        rand(channels, scale=0.5, g=g),
        1e-5,
        rand(hidden, channels, scale=2 / math.sqrt(channels), g=g),
        rand(hidden, scale=0.5, g=g),
        rand(channels, hidden, scale=1 / math.sqrt(hidden), g=g),
        rand(channels, scale=0.5, g=g),
    )
    return y, x, params


def formula(y, x, out_w, out_b, norm_w, norm_b, eps, w1, b1, w2, b2, dtype, activation):
    """The written composition in float64, rounding where the unfused layers round in ``dtype``."""

    def rounded(t):
        return t.to(dtype).double()

    w = [rounded(t) for t in (out_w, w1, w2)]
    s = rounded(rounded(x) + rounded(F.linear(rounded(y), w[0], out_b)))
    h = rounded(F.layer_norm(s, s.shape[-1:], norm_w, norm_b, eps))
    hidden = F.linear(h, w[1], b1)
    hidden = F.silu(hidden) if activation == "silu" else F.gelu(hidden)
    return s + F.linear(rounded(hidden), w[2], b2)


def max_relative_error(out, expected):
    return ((out.double() - expected).abs().max() / expected.abs().max()).item()


def run(y, x, params, dtype, activation="silu"):
    """The kernel on the inputs and weights in ``dtype`` (biases and LayerNorm parameters as given)."""
    out_w, out_b, norm_w, norm_b, eps, w1, b1, w2, b2 = params
    return block_tail_triton(
        y.to(dtype),
        out_w.to(dtype),
        out_b,
        x.to(dtype),
        norm_w,
        norm_b,
        eps,
        w1.to(dtype),
        b1,
        w2.to(dtype),
        b2,
        activation=activation,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-out-bias", "out-bias"])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_kernel_matches_formula(shape, dtype, with_bias, activation):
    tokens, channels, d_inner, hidden = shape
    y, x, params = case(tokens, channels, d_inner, hidden, with_bias)
    out = run(y, x, params, dtype, activation)
    assert out.shape == x.shape and out.dtype == dtype
    expected = formula(y, x, *params, dtype=dtype, activation=activation)
    assert max_relative_error(out, expected) < TOLERANCE[dtype]


def test_kernel_checks_shapes_and_activation():
    y, x, params = case((4, 3), 8, 16, 12, with_bias=True)
    with pytest.raises(ValueError, match=r"y must have shape \(4, 3, 16\)"):
        run(y[:, :2], x, params, torch.float32)
    with pytest.raises(ValueError, match=r"w2 must have shape \(8, 12\)"):
        run(y, x, (*params[:7], params[7][:, :10], params[8]), torch.float32)
    with pytest.raises(ValueError, match=r"out_bias must have shape \(8,\)"):
        run(y, x, (params[0], params[1][:5], *params[2:]), torch.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        run(y, x, params, torch.float32, activation="relu")


def test_widths_the_kernel_takes():
    """Up to 128 channels, and the powers of two up to ``MAX_CHANNELS`` (measured: a padded tile is no faster)."""
    from videostate.ssm.kernels import block_tail

    assert all(block_tail.supports(c) for c in (1, 20, 48, 96, 128, 256))
    assert not any(block_tail.supports(c) for c in (160, 192, 384, 512, 1024))
