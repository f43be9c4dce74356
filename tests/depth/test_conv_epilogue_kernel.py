"""The decoder's convolution epilogue (:mod:`videostate.ssm.kernels.conv_epilogue`) against its written formula in
float64, and the DPT decoder's channels-last path built on it against the layer-by-layer decoder.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch

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
