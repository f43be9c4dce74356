"""The causal convolution of a time-reversed sequence, read in place (``reverse=True``): the bidirectional Mamba's
backward direction convolves its input reversed without forming the flip. Forward, final state and gradients of the
Triton path against the float64 convolution of ``x.flip(-1)``, on contiguous rows and on a strided view of wider rows
(the layer's ``x``, half of a channel-major input projection)."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS
from tests.ssm.oracles import causal_conv_loop

if RUNS:
    from videostate.ssm.kernels.causal_conv import causal_conv1d_triton

pytestmark = list(MARKS)

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def reversed_case(batch, dim, length, width, dtype, strided, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    if strided:  # the first half of (batch, 2 * dim, length) rows, as Mamba's x in xz
        x = torch.randn(batch, 2 * dim, length, generator=g, device=DEVICE).to(dtype)[:, :dim]
    else:
        x = torch.randn(batch, dim, length, generator=g, device=DEVICE).to(dtype)
    weight = torch.randn(dim, width, generator=g, device=DEVICE) * 0.5
    bias = torch.randn(dim, generator=g, device=DEVICE) * 0.3
    return x, weight, bias


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize(
    ("shape", "activation"), [((2, 20, 300, 4), "silu"), ((3, 7, 5, 3), None), ((1, 4, 2, 4), "silu")], ids=str
)
def test_reversed_convolution_equals_the_convolution_of_the_flip(shape, activation, strided, dtype):
    x, weight, bias = reversed_case(*shape, dtype, strided)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    exact = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y, final = causal_conv1d_triton(*leaves, activation, None, reverse=True)
    expected, expected_final = causal_conv_loop(exact[0].flip(-1), exact[1], exact[2], activation, None)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(final.double(), expected_final, rtol=0, atol=0)
    grad = torch.randn(expected.shape, generator=torch.Generator(device=DEVICE).manual_seed(9), device=DEVICE)
    y.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).double())
    for name, got, want in zip(("x", "weight", "bias"), leaves, exact, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol, msg=name)
