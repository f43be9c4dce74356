"""The scan kernels at the lengths of the interpolation model's full-resolution SS2D: launch grids and offsets.

A 4K frame pair (2176 x 3840 after padding) interleaved is a sequence of 2 * 2176 * 3840 = 16.7M steps. The
causal convolution once put its 130560 tiles of 128 steps on grid axis 2 (CUDA allows 65535 there: "Triton
Error [CUDA]: invalid argument"), and its ``(channels, L)`` offsets reach ``192 * 16.7M > 2**31``.

The launch arithmetic is checked on CPU; the kernels against the reference run on CUDA (``gpu``) or, at small
sizes, under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from videostate.ssm.causal_conv import causal_conv1d_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()
KERNELS = HAS_TRITON and (INTERPRET or torch.cuda.is_available())
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
needs_kernels = pytest.mark.skipif(not KERNELS, reason="needs a CUDA device or TRITON_INTERPRET=1")
gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FOUR_K_STEPS = 2 * 2176 * 3840


@needs_triton
def test_conv_grid_keeps_long_sequences_on_axis_0():
    from videostate.ssm.kernels.causal_conv import CONFIG, MAX_GRID_AXIS_1, launch_grid

    n_tiles = -(-FOUR_K_STEPS // CONFIG["block_l"])
    assert n_tiles > MAX_GRID_AXIS_1  # what axis 2 was given
    grid = launch_grid(1, 192, n_tiles, CONFIG["block_d"])
    assert grid == (n_tiles, 12)
    assert launch_grid(4, 192, n_tiles, 16)[0] == 4 * n_tiles < 2**31
    with pytest.raises(ValueError, match="channels"):
        launch_grid(1, 16 * MAX_GRID_AXIS_1 + 1, 1, 16)


def conv_case(batch, dim, length, dtype, seed=0, device=DEVICE):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g, device=device).to(dtype).transpose(1, 2)  # Mamba-2's layout
    weight = torch.randn(dim, 4, generator=g, device=device) * 0.5
    bias = torch.randn(dim, generator=g, device=device) * 0.1
    state = torch.randn(batch, dim, 4, generator=g, device=device).to(dtype)
    return x, weight, bias, state


@pytest.mark.kernel
@needs_kernels
@pytest.mark.parametrize("with_state", [False, True])
def test_conv_kernel_over_several_tiles_matches_reference(with_state):
    """Several (batch, tile) pairs on axis 0 and channel tiles on axis 1, forward and backward."""
    from videostate.ssm.kernels.causal_conv import causal_conv1d_triton

    x, weight, bias, state = conv_case(3, 20, 300, torch.float32)
    state = state if with_state else None
    inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    y, _ = causal_conv1d_triton(*inputs, "silu", state)
    expected, _ = causal_conv1d_reference(*expected_inputs, "silu", state)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    for got, want in zip(inputs, expected_inputs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conv_kernel_at_the_4k_sequence_length():
    """More than 65535 tiles of L (failed to launch) and offsets past 2**31 (192 channels of 16.7M steps,
    the Mamba-2 convolution of a 4K frame pair): checked against the reference on windows of the sequence."""
    from videostate.ssm.kernels.causal_conv import causal_conv1d_triton

    x, weight, bias, _ = conv_case(1, 192, FOUR_K_STEPS, torch.bfloat16)
    with torch.no_grad():
        y, _ = causal_conv1d_triton(x, weight, bias, "silu", None)
        torch.cuda.synchronize()
        for start in (0, FOUR_K_STEPS // 2, FOUR_K_STEPS - 4096):  # channels past 128 pass 2**31 in y
            lo = max(start - 3, 0)
            expected, _ = causal_conv1d_reference(x[..., lo : start + 4096], weight, bias, "silu", None)
            torch.testing.assert_close(y[..., start : start + 4096], expected[..., start - lo :], rtol=2e-2, atol=2e-2)


@needs_triton
def test_ssd_offset_check_passes_the_4k_scan_and_names_what_overflows():
    """At the 4K interleaved scan Mamba-2's SSD inputs (strided views of the (channels, L) convolution output)
    fit the kernels' int32 offsets within a batch element; twice the channels would not, and say so."""
    from videostate.ssm.kernels.ssd import check_offsets

    def views(channels, length):  # x, B, C as Mamba-2 slices them, on the meta device: no memory
        xbc = torch.empty(1, channels, length, device="meta").transpose(1, 2)
        x, B, C = xbc.split([64, (channels - 64) // 2, (channels - 64) // 2], dim=-1)
        return x.unflatten(-1, (4, 16)), B.unflatten(-1, (1, -1)), C.unflatten(-1, (1, -1))

    x, B, C = views(192, FOUR_K_STEPS)
    check_offsets(x=x, B=B, C=C, z=None, dt=torch.empty(1, FOUR_K_STEPS, 4, device="meta"))
    _, B, _ = views(192, 12 * FOUR_K_STEPS)
    with pytest.raises(ValueError, match=r"B to span fewer than 2\*\*31"):
        check_offsets(B=B)
