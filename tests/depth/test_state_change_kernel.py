"""The state-change kernel (:mod:`videostate.ssm.kernels.state_change`) against its formula in float64:
``(sum (new - old)^2, sum old^2)``.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, KERNEL_DTYPES, MARKS, RUNS
from videostate.depth.streaming import state_change_terms
from videostate.ssm import MambaState

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.state_change import BLOCK, state_change_sums

RTOL = 1e-6  # float32 sums of inputs that are exact in float32
# A state's shape, a length over several programs and not a multiple of one, fewer elements than one program.
SHAPES = [(7, 24, 16), (3, 5001), (5,)]


def pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(shape, generator=g, dtype=torch.float64)
    new = old + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    return new.to(DEVICE, dtype), old.to(DEVICE, dtype)


def formula(new, old):
    new, old = new.double(), old.double()
    return torch.stack([(new - old).square().sum(), old.square().sum()])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_sums_match_formula(shape, dtype):
    new, old = pair(shape, dtype)
    got = state_change_sums(new, old)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, formula(new, old), rtol=RTOL, atol=0)
    assert BLOCK < 3 * 5001  # the second shape spans several programs


def test_sums_read_strided_tensors():
    new, old = pair((64, 300), torch.float32, seed=1)
    torch.testing.assert_close(state_change_sums(new.T, old.T), formula(new, old), rtol=RTOL, atol=0)
    with pytest.raises(ValueError, match="one shape"):
        state_change_sums(new, old[:3])


@pytest.mark.skipif(INTERPRET, reason="the streamer takes the kernel for CUDA tensors only")
def test_streamer_terms_take_the_kernel_on_cuda():
    """A model's state (bf16 conv, float32 scan) on CUDA: the kernel's terms equal the float64 formula's."""
    conv_new, conv_old = pair((9, 48, 4), torch.bfloat16, seed=2)
    ssm_new, ssm_old = pair((9, 48, 16), torch.float32, seed=3)
    with torch.no_grad():
        got = state_change_terms(MambaState(conv_new, ssm_new), MambaState(conv_old, ssm_old))
    expected = formula(conv_new, conv_old) + formula(ssm_new, ssm_old)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)
