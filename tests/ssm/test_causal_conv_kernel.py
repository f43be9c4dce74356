"""The causal convolution's Triton path against the float64 loop: forward, final state and the gradients of the
input, weight, bias and carried state, over one and several tiles of time and channels, sequences shorter than the
convolution, with and without the SiLU, on contiguous rows and on a strided view of wider rows (the layer's ``x``,
half of a channel-major input projection). From a carried ``conv_state``, and of the time-reversed sequence
(``reverse=True``: the bidirectional Mamba's backward direction, read in place without forming the flip). The
backward takes two passes (the gradient at the pre-activation, then the input's), so every gradient is checked."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS
from tests.ssm.oracles import causal_conv_loop

if RUNS:
    from videostate.ssm.kernels.causal_conv import causal_conv1d_triton

pytestmark = list(MARKS)

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
STRIDES = pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])


def conv_case(batch, dim, length, width, dtype, strided, seed=0):
    """Leaves ``x, weight, bias, conv_state`` in ``dtype`` (the weight and bias float32) and their float64 copies."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    if strided:  # the first half of (batch, 2 * dim, length) rows, as Mamba's x in xz
        x = torch.randn(batch, 2 * dim, length, generator=g, device=DEVICE).to(dtype)[:, :dim]
    else:
        x = torch.randn(batch, dim, length, generator=g, device=DEVICE).to(dtype)
    weight = torch.randn(dim, width, generator=g, device=DEVICE) * 0.5
    bias = torch.randn(dim, generator=g, device=DEVICE) * 0.3
    state = torch.randn(batch, dim, width, generator=g, device=DEVICE).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias, state)]
    return leaves, [t.detach().double().requires_grad_() for t in leaves]


def check(y, final, expected, expected_final, leaves, exact, dtype):
    """Outputs equal, then the gradients of every leaf that took part, from one seeded output gradient."""
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(final.double(), expected_final.detach(), rtol=0, atol=0)
    grad = torch.randn(expected.shape, generator=torch.Generator(device=DEVICE).manual_seed(9), device=DEVICE)
    y.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).double())
    for name, got, want in zip(("x", "weight", "bias", "conv_state"), leaves, exact, strict=False):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@STRIDES
@pytest.mark.parametrize(
    ("shape", "activation"),
    [((2, 20, 300, 4), "silu"), ((2, 33, 129, 4), None), ((3, 7, 5, 3), "silu"), ((1, 4, 2, 4), "silu")],
    ids=str,
)
def test_convolution_from_a_carried_state(shape, activation, strided, dtype):
    leaves, exact = conv_case(*shape, dtype, strided)
    y, final = causal_conv1d_triton(*leaves[:3], activation, leaves[3])
    expected, expected_final = causal_conv_loop(*exact[:3], activation, exact[3])
    check(y, final, expected, expected_final, leaves, exact, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@STRIDES
@pytest.mark.parametrize(
    ("shape", "activation"), [((2, 20, 300, 4), "silu"), ((3, 7, 5, 3), None), ((1, 4, 2, 4), "silu")], ids=str
)
def test_reversed_convolution_equals_the_convolution_of_the_flip(shape, activation, strided, dtype):
    leaves, exact = conv_case(*shape, dtype, strided)
    leaves, exact = leaves[:3], exact[:3]  # from a zero state
    y, final = causal_conv1d_triton(*leaves, activation, None, reverse=True)
    expected, expected_final = causal_conv_loop(exact[0].flip(-1), *exact[1:], activation, None)
    check(y, final, expected, expected_final, leaves, exact, dtype)
