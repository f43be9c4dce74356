""":func:`videostate.ssm.kernels.padded_rows.padded_rows` against ``F.pad``: rows of several layouts and dtypes,
padded at either end with the scan's identity ``delta`` or zero. On CUDA these are ``gpu`` tests; with
``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_targets import DEVICE, KERNEL_DTYPES, MARKS, RUNS
from videostate.ssm.selective_scan import no_step_delta

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.padded_rows import BLOCK, padded_rows


def rows_of(layout: str, dtype: torch.dtype) -> torch.Tensor:
    """Fresh random ``(..., L)`` rows: contiguous, a strided slice, token-major (steps not contiguous), grouped
    B/C's four dimensions, one row longer than a program's block."""
    g = torch.Generator().manual_seed(len(layout))
    shapes = {"contiguous": (2, 3, 45), "sliced": (2, 6, 47), "token-major": (2, 45, 5), "grouped": (2, 3, 4, 29),
              "long": (1, 2 * BLOCK + 37)}  # fmt: skip
    t = torch.randn(shapes[layout], generator=g).to(DEVICE, dtype)
    if layout == "sliced":
        return t[:, ::2, 1:]
    if layout == "token-major":
        return t.transpose(1, 2)
    return t


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "token-major", "grouped", "long"])
@pytest.mark.parametrize("front", [False, True], ids=["end", "front"])
def test_padded_rows_equal_f_pad(layout, dtype, front):
    t = rows_of(layout, dtype)
    for pad, value in ((3, no_step_delta(dtype)), (16, 0.0)):
        padded = padded_rows(t, pad, value, front=front)
        expected = F.pad(t, (pad, 0) if front else (0, pad), value=value)
        assert padded.is_contiguous() and padded.dtype == dtype
        assert torch.equal(padded, expected), (pad, value)


def test_padded_rows_of_no_rows_and_the_dimensions_taken():
    empty = torch.empty(0, 3, 45, device=DEVICE)
    assert padded_rows(empty, 3).shape == (0, 3, 48)
    with pytest.raises(ValueError, match=r"at most 3 leading dimensions; got shape \(1, 1, 1, 1, 5\)"):
        padded_rows(torch.ones(1, 1, 1, 1, 5, device=DEVICE), 3)
