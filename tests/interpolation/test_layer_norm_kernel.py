"""The Triton LayerNorm (and residual add + LayerNorm) against ``F.layer_norm`` in float64.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU the same tests run on CPU tensors
through Triton's interpreter (smaller maps). Tolerances: the kernel's float32 statistics, then one rounding
to the output dtype.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_targets import DEVICE, INTERPRET, MARKS, RUNS
from videostate.ssm.layer_norm import LayerNorm

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.layer_norm import add_layer_norm_triton, launch_shape, layer_norm_triton

# Relative error to the float64 LayerNorm of the same (rounded) input, per output dtype: float32 statistics,
# then one rounding to the output dtype (the interpreter rounds to bfloat16 towards zero: one unit, not half).
HALF_UNITS = 1.0 if INTERPRET else 0.5
TOLERANCE = {
    torch.float64: 1e-6,
    torch.float32: 1e-6,
    torch.bfloat16: 2 * HALF_UNITS * 2**-8,
    torch.float16: 2 * HALF_UNITS * 2**-11,
}
SHAPES = [(3, 5, 7, 32), (2, 9, 64), (37, 128), (4, 48), (1, 1, 20)]


def inputs(shape, dtype, *, shift=0.0, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    channels = shape[-1]
    x = (torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.float64) * 3 + shift).to(dtype)
    weight = torch.rand(channels, generator=g, device=DEVICE, dtype=torch.float64) + 0.5
    bias = torch.rand(channels, generator=g, device=DEVICE, dtype=torch.float64) - 0.5
    return x, weight.float(), bias.float()


def check(out, x, weight, bias, eps, dtype):
    expected = F.layer_norm(x.double(), (x.shape[-1],), weight.double(), bias.double(), eps)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=TOLERANCE[dtype], atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shift", [0.0, 20.0], ids=["centred", "offset"])
def test_layer_norm_kernel_matches_float64(shape, dtype, shift):
    x, weight, bias = inputs(shape, dtype, shift=shift)
    check(layer_norm_triton(x, weight, bias, 1e-5), x, weight, bias, 1e-5, dtype)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_layer_norm_kernel_writes_the_requested_dtype(out_dtype):
    x, weight, bias = inputs((2, 6, 10, 64), torch.bfloat16, seed=1)
    check(layer_norm_triton(x, weight, bias, 1e-6, out_dtype), x, weight, bias, 1e-6, out_dtype)


def test_layer_norm_kernel_without_affine_and_on_a_non_contiguous_input():
    x, _, _ = inputs((4, 8, 32), torch.float32, seed=2)
    view = x.transpose(0, 1)
    out = layer_norm_triton(view, None, None, 1e-5)
    ones, zeros = torch.ones(32, device=DEVICE), torch.zeros(32, device=DEVICE)
    check(out, view, ones, zeros, 1e-5, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_add_layer_norm_kernel_returns_the_sum_and_its_norm(dtype):
    x, weight, bias = inputs((2, 5, 6, 32), dtype, seed=3)
    residual, _, _ = inputs((2, 5, 6, 32), dtype, seed=4)
    summed, out = add_layer_norm_triton(x, residual, weight, bias, 1e-5, torch.bfloat16)
    # Rounded as PyTorch's add rounds it (by the interpreter: towards zero, within one unit).
    torch.testing.assert_close(summed, x + residual, rtol=2**-7 if INTERPRET and dtype != torch.float32 else 0, atol=0)
    check(out, summed, weight, bias, 1e-5, torch.bfloat16)


def test_add_layer_norm_kernel_promotes_like_an_add():
    x, weight, bias = inputs((3, 64), torch.bfloat16, seed=5)
    residual = inputs((3, 64), torch.float32, seed=6)[0]
    summed, out = add_layer_norm_triton(x, residual, weight, bias, 1e-5)
    assert summed.dtype == out.dtype == torch.float32
    torch.testing.assert_close(summed, x + residual, rtol=0, atol=0)
    with pytest.raises(ValueError, match="same shape"):
        add_layer_norm_triton(x, residual[:2], weight, bias, 1e-5)


def test_launch_shape_tiles_rows_on_the_first_grid_axis():
    """Millions of rows go on grid axis 0 (up to 2**31 - 1 programs), in tiles of about 4096 elements."""
    rows = 2 * 2176 * 3840  # a 4K frame pair's full-resolution tokens
    for channels, tile_rows in ((32, 128), (64, 64), (128, 32), (20, 128)):
        launch = launch_shape(rows, channels)
        assert launch["meta"]["ROWS"] == tile_rows
        assert launch["grid"] == (-(-rows // tile_rows),)


def test_module_uses_the_kernel_for_inference_under_autocast(monkeypatch):
    """LayerNorm's inference path under autocast equals the kernel; with the fast path off (or with gradients) it
    is the reference."""
    norm = LayerNorm(32).to(DEVICE)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, _, _ = inputs((2, 3, 4, 32), torch.bfloat16, seed=7)
    delta, _, _ = inputs((2, 3, 4, 32), torch.bfloat16, seed=8)
    device = DEVICE.type
    if device == "cpu":  # the interpreter runs the kernel on CPU tensors: let the module take it there
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        fast = norm(x)
        fast_sum, fast_sum_norm = norm.add_and_norm(x, delta)
        monkeypatch.setenv("VIDEOSTATE_DISABLE_FUSED", "1")
        reference = norm(x)
        ref_sum, ref_sum_norm = norm.add_and_norm(x, delta)
    torch.testing.assert_close(fast, layer_norm_triton(x, norm.weight, norm.bias, norm.eps, torch.bfloat16))
    assert fast.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), reference.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(fast_sum, ref_sum, rtol=2**-7 if INTERPRET else 0, atol=0)
    torch.testing.assert_close(fast_sum_norm.float(), ref_sum_norm.float(), rtol=2**-6, atol=2**-6)
