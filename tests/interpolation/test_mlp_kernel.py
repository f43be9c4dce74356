"""The fused MLP kernel against the written formula ``fc2(act(fc1(x))) + residual`` in float64, ``act`` exact GELU
or SiLU.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU the same tests run on CPU tensors
through Triton's interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, KERNEL_DTYPES, MARKS, RUNS
from videostate.interpolation.backbone import MLP

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.mlp import mlp_triton

DTYPES = KERNEL_DTYPES
# Relative to the largest output: float32 sums; the half types round x, the weights and the hidden activations.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# (tokens shape, channels, hidden): the backbone's widths, a hidden width that is not a multiple of the step,
# channels that are not a power of two, and a token count that is not a multiple of a program's.
SHAPES = [((2, 9, 13), 32, 128), ((301,), 64, 256), ((3, 50), 24, 80), ((1, 70), 128, 512)]


def weights(channels, hidden, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rand(*shape, scale):
        return (torch.rand(*shape, generator=g, device=DEVICE, dtype=torch.float64) * 2 - 1) * scale

    return (
        rand(hidden, channels, scale=1 / math.sqrt(channels)) * 2,
        rand(hidden, scale=0.5),
        rand(channels, hidden, scale=1 / math.sqrt(hidden)),
        rand(channels, scale=0.5),
    )


def formula(x, w1, b1, w2, b2, residual=None, activation="gelu"):
    h = x.double() @ w1.double().T + b1.double()
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2))) if activation == "gelu" else h / (1 + torch.exp(-h))
    out = h @ w2.double().T + b2.double()
    return out if residual is None else out + residual.double()


def max_relative_error(out, expected):
    return ((out.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_kernel_matches_formula(shape, dtype, with_residual, activation):
    tokens, channels, hidden = shape
    w1, b1, w2, b2 = weights(channels, hidden)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(*tokens, channels, generator=g, device=DEVICE, dtype=torch.float64).to(dtype)
    residual = torch.randn(*tokens, channels, generator=g, device=DEVICE).to(dtype) if with_residual else None
    out = mlp_triton(x, w1.float(), b1.float(), w2.float(), b2.float(), residual, dtype, activation)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    # The oracle takes the weights as the kernel does: rounded to the compute dtype.
    expected = formula(x, w1.to(dtype), b1.float(), w2.to(dtype), b2.float(), residual, activation)
    assert max_relative_error(out, expected) < TOLERANCE[dtype]


def test_kernel_checks_shapes():
    w1, b1, w2, b2 = (t.float() for t in weights(32, 128))
    x = torch.randn(4, 32, device=DEVICE)
    with pytest.raises(ValueError, match="w2 must have shape"):
        mlp_triton(x, w1, b1, w2.T, b2)
    with pytest.raises(ValueError, match="residual must have"):
        mlp_triton(x, w1, b1, w2, b2, torch.randn(4, 16, device=DEVICE))
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp_triton(x, w1, b1, w2, b2, activation="relu")


@pytest.mark.skipif(INTERPRET, reason="the module's fast path is taken on CUDA tensors only")
def test_module_takes_the_kernel_for_inference(monkeypatch):
    """Without gradients on CUDA, ``MLP.add_to`` comes from the kernel (a spy counts the calls) and equals the
    PyTorch layers under bfloat16 autocast; with gradients it keeps the layers."""
    import videostate.ssm.kernels.mlp as kernels

    calls = []
    real = kernels.mlp_triton
    monkeypatch.setattr(kernels, "mlp_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    mlp = MLP(32, 128).to(DEVICE)
    x, residual = torch.randn(2, 16, 24, 32, device=DEVICE), torch.randn(2, 16, 24, 32, device=DEVICE)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fast = mlp.add_to(residual.bfloat16(), x.bfloat16())
    assert calls == [1] and fast.dtype == torch.bfloat16
    expected = formula(x.bfloat16(), mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, residual.bfloat16())
    assert max_relative_error(fast, expected) < TOLERANCE[torch.bfloat16]
    mlp.add_to(residual, x.requires_grad_()).sum().backward()
    assert calls == [1] and x.grad is not None
