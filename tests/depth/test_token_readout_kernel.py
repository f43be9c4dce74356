"""The read-out kernel (:mod:`videostate.ssm.kernels.token_readout`) against the written formula in float64:
``base + temporal_detokenize(y W^T + b)``.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter (whose bfloat16 matrix products are wrong, so bfloat16 runs on the GPU only).
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from tests.kernel_targets import DEVICE, INTERPRET, KERNEL_DTYPES, MARKS, RUNS
from videostate.depth.model import TemporalReadout

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.token_readout import token_readout

DTYPES = KERNEL_DTYPES
TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (B, N, C, H, W): channels that are not a power of two nor a multiple of the input step, more output channels than
# one tile, an odd number of pixels (19x19, as the depth model's coarsest map), two streams.
SHAPES = [(1, 3, 48, 5, 7), (2, 2, 200, 4, 9), (1, 2, 16, 19, 19)]


def formula(y, weight, bias, batch, height, width, base):
    maps = rearrange(y.double() @ weight.double().T + bias.double(), "(b h w) n c -> b n c h w", b=batch, h=height)
    return maps if base is None else base.double() + maps


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_base", [True, False], ids=["base", "no-base"])
def test_kernel_matches_formula(shape, dtype, with_base):
    b, n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    y = torch.randn(b * h * w, n, c, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    weight = (torch.randn(c, c, generator=g, dtype=torch.float64) / c**0.5).to(DEVICE, dtype)
    bias = torch.randn(c, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    base = torch.randn(b, n, c, h, w, generator=g, dtype=torch.float64).to(DEVICE, dtype) if with_base else None
    out = token_readout(y, weight, bias, b, h, w, base)
    assert out.shape == (b, n, c, h, w) and out.dtype == dtype and out.is_contiguous()
    expected = formula(y, weight, bias, b, h, w, base)
    error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    assert error < TOLERANCE[dtype]


def test_kernel_reads_strided_tokens():
    """Token rows read through strides (a view of wider rows) give the values of their contiguous copy."""
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(12, 3, 40, generator=g).to(DEVICE)
    y = wide[..., 4:36]
    weight, bias = torch.randn(32, 32, generator=g).to(DEVICE), torch.randn(32, generator=g).to(DEVICE)
    expected = token_readout(y.contiguous(), weight, bias, 1, 3, 4)
    torch.testing.assert_close(token_readout(y, weight, bias, 1, 3, 4), expected)


def test_kernel_checks_shapes():
    y = torch.randn(12, 2, 8, device=DEVICE)
    weight, bias = torch.randn(8, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    with pytest.raises(ValueError, match="batch\\*height\\*width = 15 rows; got 12"):
        token_readout(y, weight, bias, 1, 3, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(8, 8\)"):
        token_readout(y, weight[:4], bias, 1, 3, 4)
    with pytest.raises(ValueError, match=r"base must have shape \(1, 2, 8, 3, 4\)"):
        token_readout(y, weight, bias, 1, 3, 4, torch.randn(1, 2, 8, 4, 3, device=DEVICE))


@pytest.mark.skipif(INTERPRET, reason="the module's fast path is taken on CUDA tensors only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_readout_takes_the_kernel_for_inference(monkeypatch, dtype):
    """``TemporalReadout.frames`` runs the kernel without gradients on CUDA (a spy counts the calls) and equals the
    PyTorch path it takes with gradients, with and without the maps it adds to."""
    import videostate.ssm.kernels.token_readout as kernels

    calls = []
    real = kernels.token_readout
    monkeypatch.setattr(kernels, "token_readout", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    readout = TemporalReadout(24).to(DEVICE, dtype)
    with torch.no_grad():
        readout.weight.normal_()
        readout.bias.normal_()
    y = torch.randn(2 * 5 * 7, 3, 24, device=DEVICE, dtype=dtype)
    base = torch.randn(2, 3, 24, 5, 7, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        fast = [readout.frames(y, 5, 7, 2), readout.frames(y, 5, 7, 2, base)]
    assert calls == [1, 1]
    slow = [readout.frames(y.requires_grad_(), 5, 7, 2), readout.frames(y, 5, 7, 2, base)]
    assert calls == [1, 1] and slow[0].requires_grad
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s.detach(), rtol=tolerance, atol=tolerance)
