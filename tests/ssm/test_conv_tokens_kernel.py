"""The token-major causal convolution (:func:`videostate.ssm.kernels.causal_conv.causal_conv1d_tokens`) against the
plain-loop convolution of :mod:`tests.ssm.oracles` in float64: ``silu(bias + sum_k w_k x[t - (W - 1 - k)])`` with
the carried ``conv_state`` (or zeros) before the start.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS
from tests.ssm.oracles import causal_conv_loop

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import causal_conv

TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (batch, L, dim, W): every width the walking kernel takes (one to four taps) and one it leaves to the tiles (five);
# one step, a sequence shorter than the window, channels that are not a multiple of a program's, several programs of
# sequences and of channels.
SHAPES = [(3, 1, 16, 4), (2, 2, 40, 4), (5, 7, 136, 4), (2, 6, 24, 3), (3, 5, 8, 2), (2, 4, 8, 1), (2, 9, 24, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_kernel_matches_formula(shape, dtype, carried):
    batch, length, dim, width = shape
    g = torch.Generator().manual_seed(0)

    def rand(*size):  # values the kernel's dtype holds exactly, so that the formula sees the kernel's inputs
        return torch.randn(*size, generator=g, dtype=torch.float64).to(dtype).double()

    rows = rand(batch, length, 2 * dim)  # x read in place from a projection's rows, as the Mamba path reads it
    weight, bias = rand(dim, width), rand(dim)
    state = rand(batch, dim, width) if carried else None
    expected, _ = causal_conv_loop(rows[..., :dim].mT, weight, bias, "silu", state)
    fast = rows.to(DEVICE, dtype)
    y = causal_conv.causal_conv1d_tokens(
        fast[..., :dim],
        weight.to(DEVICE, dtype),
        bias.to(DEVICE, dtype),
        None if state is None else state.to(DEVICE, dtype),
    )
    assert y.shape == (batch, length, dim) and y.dtype == dtype and y.is_contiguous()
    error = ((y.cpu().double() - expected.mT).norm() / expected.norm()).item()
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("width", [4, 5])
def test_width_picks_the_kernel(monkeypatch, width):
    """Up to ``TOKENS_WIDTH`` taps the walking kernel runs, wider convolutions the tiled one (spies record the
    launches; the kernels still run)."""
    launched = []
    for name in ("causal_conv1d_tokens_kernel", "causal_conv1d_fwd_kernel"):
        kernel = getattr(causal_conv, name)

        class Spy:
            def __getitem__(self, grid, name=name, kernel=kernel):
                return lambda *args, **kwargs: launched.append(name) or kernel[grid](*args, **kwargs)

        monkeypatch.setattr(causal_conv, name, Spy())
    x = torch.randn(2, 3, 8, device=DEVICE)
    causal_conv.causal_conv1d_tokens(x, torch.randn(8, width, device=DEVICE), None)
    walks = width <= causal_conv.TOKENS_WIDTH
    assert launched == ["causal_conv1d_tokens_kernel" if walks else "causal_conv1d_fwd_kernel"]
