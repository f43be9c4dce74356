"""The decoder's convolution epilogue and bilinear resize (:mod:`videostate.ssm.kernels.conv_epilogue`) against
their written formula and PyTorch's resize in float64, and the DPT decoder's channels-last path built on them against
the layer-by-layer decoder.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS
from videostate.depth.decoder import DPTDecoder

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import conv_epilogue

TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (batch, C, H, W): channels that are not a power of two, rows over several programs, 1x1 maps.
SHAPES = [(2, 48, 5, 7), (1, 32, 11, 13), (3, 16, 1, 1)]
# (residuals, relu, relu_copy, project): each use the decoder makes of it.
VARIANTS = [(0, False, False, False), (0, True, False, False), (1, False, False, False), (2, False, True, False),
            (0, True, False, True)]  # fmt: skip


def maps(shape, dtype, generator, count):
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64)
        .to(DEVICE, dtype)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(count)
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize(("residuals", "relu", "relu_copy", "project"), VARIANTS, ids=str)
def test_epilogue_matches_formula(shape, dtype, residuals, relu, relu_copy, project):
    g = torch.Generator().manual_seed(0)
    y, *res = maps(shape, dtype, g, 1 + residuals)
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64).to(DEVICE, dtype)
    weight = torch.randn(shape[1], generator=g, dtype=torch.float64).to(DEVICE, dtype)
    proj_bias = torch.randn(1, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    got = conv_epilogue.conv_epilogue(
        y, bias, tuple(res), relu=relu, relu_copy=relu_copy, project=(weight, proj_bias) if project else None
    )
    expected = y.double() + bias.double()[:, None, None] + sum(r.double() for r in res)
    if relu:
        expected = expected.clamp(min=0)
    if project:
        expected = torch.einsum("bchw,c->bhw", expected, weight.double())[:, None] + proj_bias.double()
    outputs, oracles = (got, (expected, expected.clamp(min=0))) if relu_copy else ((got,), (expected,))
    for out, oracle in zip(outputs, oracles, strict=True):
        assert out.shape == oracle.shape and out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
        error = ((out.double() - oracle).abs().max() / oracle.abs().max()).item()
        assert error < TOLERANCE[dtype] * (shape[1] if project else 1)


def test_epilogue_checks_its_inputs():
    y = torch.randn(1, 8, 3, 3, device=DEVICE)
    cl = y.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels-last"):
        conv_epilogue.conv_epilogue(y, torch.randn(8, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        conv_epilogue.conv_epilogue(cl, torch.randn(4, device=DEVICE))
    with pytest.raises(ValueError, match="up to two residuals"):
        conv_epilogue.conv_epilogue(cl, torch.randn(8, device=DEVICE), (cl[:, :4],))
    with pytest.raises(ValueError, match="project must be"):
        conv_epilogue.conv_epilogue(cl, torch.randn(8, device=DEVICE), project=(torch.randn(4), torch.randn(1)))


# (batch, C, H, W) -> size: twice the size (the fusion stage), odd sizes (the head), rows and columns of one pixel,
# more channels than a program takes, a shrink.
RESIZES = [((2, 48, 5, 7), (10, 14)), ((1, 32, 4, 6), (13, 17)), ((1, 16, 1, 3), (4, 5)), ((1, 200, 3, 2), (5, 1)),
           ((1, 8, 9, 9), (4, 6))]  # fmt: skip


@pytest.mark.parametrize(("shape", "size"), RESIZES, ids=str)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_resize_matches_pytorch(shape, size, dtype):
    g = torch.Generator().manual_seed(1)
    (x,) = maps(shape, dtype, g, 1)
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64).to(DEVICE, dtype)
    got = conv_epilogue.resize_bilinear(x, size, bias)
    expected = F.interpolate(x.double(), size=size, mode="bilinear", align_corners=True) + bias.double()[:, None, None]
    assert got.shape == expected.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    error = ((got.double() - expected).abs().max() / expected.abs().max()).item()
    assert error < TOLERANCE[dtype]


def test_resize_checks_its_inputs():
    x = torch.randn(1, 8, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="channels-last"):
        conv_epilogue.resize_bilinear(x, (6, 6), torch.randn(8, device=DEVICE))
    cl = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        conv_epilogue.resize_bilinear(cl, (6, 6), torch.randn(3, device=DEVICE))
    with pytest.raises(ValueError, match="size must be positive"):
        conv_epilogue.resize_bilinear(cl, (0, 6), torch.randn(8, device=DEVICE))


@pytest.mark.parametrize("activate", [True, False])
def test_channels_last_decoder_equals_the_layer_by_layer_one(activate, monkeypatch):
    """Depth Anything's four maps (4x, 2x, 1x and half the patch grid of 3x5, channels not powers of two) through
    the fused path and through the modules one by one, float32 (no TF32), random weights and biases."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    decoder = DPTDecoder([6, 12, 24, 40], fusion_hidden_size=24, head_hidden_size=8).to(DEVICE)
    with torch.no_grad():
        for p in decoder.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    # (channels, height, width): the coarsest map is the ceiling of half the grid, as the stride-2 reassembly
    shapes = [(6, 12, 20), (12, 6, 10), (24, 3, 5), (40, 2, 3)]
    features = [torch.randn(2, *shape, device=DEVICE) for shape in shapes]
    with torch.no_grad():
        got = decoder.fused(conv_epilogue, features, (42, 70), activate)
        with torch.enable_grad():  # the layer-by-layer path
            expected = decoder(features, (42, 70), activate).detach()
    assert got.shape == expected.shape == (2, 1, 42, 70)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [d for d in KERNEL_DTYPES if d != torch.float32], ids=str)
def test_channels_last_decoder_is_as_accurate_as_the_layer_by_layer_one(dtype, monkeypatch):
    """In half precision both paths round, at different places: against the float64 decoder the fused path's error
    is no larger than 1.25 times the layer-by-layer path's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(1)
    decoder = DPTDecoder([16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16).double()
    with torch.no_grad():
        for p in decoder.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    features = [torch.randn(2, c, h, w, dtype=torch.float64) for c, h, w in [(16, 24, 32), (32, 12, 16), (64, 6, 8),
                                                                                (64, 3, 4)]]  # fmt: skip
    with torch.no_grad():
        exact = decoder(features, (84, 112), activate=False)
        half = decoder.to(DEVICE, dtype)
        inputs = [f.to(DEVICE, dtype) for f in features]
        fused = half.fused(conv_epilogue, inputs, (84, 112), activate=False).double().cpu()
        with torch.enable_grad():
            layered = half(inputs, (84, 112), activate=False).detach().double().cpu()
    fused_error, layered_error = (
        (out - exact).abs().max().item() / exact.abs().max().item() for out in (fused, layered)
    )
    assert fused_error <= 1.25 * layered_error, (fused_error, layered_error)
    assert 1e-5 < layered_error < 2e-2
