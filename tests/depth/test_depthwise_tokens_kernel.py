"""The pre-mix kernel (:mod:`videostate.ssm.kernels.depthwise_tokens`) against the written formula in float64:
``temporal_tokenize(conv2d(feat, weight, bias, groups=C, padding=K // 2) + pe)``.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tests.kernel_targets import DEVICE, INTERPRET, KERNEL_DTYPES, MARKS, RUNS
from videostate.depth import SpatialPreMix

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.depthwise_tokens import depthwise_tokens

DTYPES = KERNEL_DTYPES
TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (B, N, C, H, W, pe batch): a map of one pixel, more rows than a strip (ROWS) and more pixels than a program's
# (BLOCK_X), neither a multiple of them, channels that are not a multiple of a program's (BLOCK_C), a per-stream
# encoding of two streams.
SHAPES = [
    (1, 3, 8, 5, 7, 1),
    (2, 1, 6, 1, 1, 2),
    (1, 2, 20, 17, 33, 1),
    (2, 3, 12, 3, 5, 2),
]


def formula(feat, weight, bias, pe):
    b, c = feat.shape[0], feat.shape[2]
    z = F.conv2d(
        rearrange(feat.double(), "b n c h w -> (b n) c h w"),
        weight.double(),
        bias,
        padding=weight.shape[-1] // 2,
        groups=c,
    )
    z = rearrange(z, "(b n) c h w -> b n c h w", b=b) + pe.double()[..., None, None]
    return rearrange(z, "b n c h w -> (b h w) n c")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_kernel_matches_formula(shape, dtype, with_bias):
    b, n, c, h, w, pe_batch = shape
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(b, n, c, h, w, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    weight = torch.randn(c, 1, 3, 3, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    bias = torch.randn(c, generator=g, dtype=torch.float64).to(DEVICE, dtype) if with_bias else None
    pe = torch.randn(pe_batch, n, c, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    out = depthwise_tokens(feat, weight, bias, pe)
    assert out.shape == (b * h * w, n, c) and out.dtype == dtype and out.is_contiguous()
    expected = formula(feat, weight, None if bias is None else bias.double(), pe)
    error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    assert error < TOLERANCE[dtype]


def test_kernel_reads_strided_maps():
    """A channel-last view of the frames (as a transposed teacher output would be) gives the same tokens."""
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(1, 2, 16, 5, 6, generator=g).to(DEVICE)
    strided = feat.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert torch.equal(strided, feat) and strided.stride() != feat.stride()
    weight, pe = torch.randn(16, 1, 3, 3, generator=g).to(DEVICE), torch.randn(1, 2, 16, generator=g).to(DEVICE)
    torch.testing.assert_close(depthwise_tokens(strided, weight, None, pe), depthwise_tokens(feat, weight, None, pe))


def test_kernel_checks_shapes():
    feat, pe = torch.randn(1, 2, 4, 3, 3, device=DEVICE), torch.randn(1, 2, 4, device=DEVICE)
    for size in (2, 5):
        with pytest.raises(ValueError, match=r"weight must have shape \(4, 1, 3, 3\)"):
            depthwise_tokens(feat, torch.randn(4, 1, size, size, device=DEVICE), None, pe)
    with pytest.raises(ValueError, match="pe must have shape"):
        depthwise_tokens(feat, torch.randn(4, 1, 3, 3, device=DEVICE), None, torch.randn(1, 3, 4, device=DEVICE))


@pytest.mark.skipif(INTERPRET, reason="the module's fast path is taken on CUDA tensors only")
def test_premix_takes_the_kernel_for_inference(monkeypatch):
    """``SpatialPreMix.tokens`` runs the kernel without gradients on CUDA (a spy counts the calls) and equals the
    module's PyTorch path; with gradients it keeps the PyTorch path."""
    import videostate.ssm.kernels.depthwise_tokens as kernels

    calls = []
    real = kernels.depthwise_tokens
    monkeypatch.setattr(kernels, "depthwise_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    premix = SpatialPreMix(24).to(DEVICE)
    feat, pe = torch.randn(2, 3, 24, 10, 11, device=DEVICE), torch.randn(1, 3, 24, device=DEVICE)
    with torch.no_grad():
        fast = premix.tokens(feat, pe)
    assert calls == [1]
    slow = premix.tokens(feat.requires_grad_(), pe)
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(INTERPRET, reason="the module's fast path is taken on CUDA tensors only")
def test_premix_of_other_sizes_keeps_pytorch(monkeypatch):
    """The kernel is 3x3 only: a 5x5 pre-mix runs PyTorch's convolution for inference too, and equals the
    written formula."""
    import videostate.ssm.kernels.depthwise_tokens as kernels

    calls = []
    real = kernels.depthwise_tokens
    monkeypatch.setattr(kernels, "depthwise_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    premix = SpatialPreMix(8, kernel_size=5).to(DEVICE)
    feat, pe = torch.randn(1, 2, 8, 6, 7, device=DEVICE), torch.randn(1, 2, 8, device=DEVICE)
    with torch.no_grad():
        out = premix.tokens(feat, pe)
    assert calls == []
    expected = formula(feat, premix.conv.weight, premix.conv.bias.double(), pe)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
