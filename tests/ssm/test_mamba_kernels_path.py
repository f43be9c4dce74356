"""The Mamba layer on the Triton kernels at a length they pad (70 steps: 10 to 80), against the float64 layer on
the reference ops. The layer pads its input itself (``Mamba.gated_scan``), so the launcher must copy nothing; the
bidirectional layer's backward direction convolves its input reversed in place. Output, input and parameter
gradients offline, and the output and states streamed in chunks of 66 steps (padded, from the state) and 4.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter, the dispatch told to take the Triton backend there."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, MARKS, RUNS
from tests.ssm.test_scan_state_kernels import rel_error
from videostate.ssm import Mamba, dispatch

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm import mamba as mamba_module
    from videostate.ssm.kernels import selective_scan as scan


def check_mamba_against_reference(model, reference, x):
    """``model`` (float32, the kernels) against ``reference`` (float64, the reference ops, the same weights) at
    ``x``: output, input gradient and every parameter's gradient within 1e-5."""
    x_fast, x_ref = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    y, y_ref = model(x_fast), reference(x_ref)
    assert rel_error(y, y_ref) < 1e-5
    cotangent = torch.randn_like(y_ref)
    y.backward(cotangent.float())
    y_ref.backward(cotangent)
    assert rel_error(x_fast.grad, x_ref.grad) < 1e-5
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert rel_error(p.grad, p_ref.grad) < 1e-5, name


@pytest.fixture
def kernels_here(monkeypatch):
    """The Triton backend for every op of the layer on DEVICE; an error if the launcher pads copies."""
    if INTERPRET:
        resolve_backend = dispatch.resolve_backend

        def on_the_interpreter(op, backend, device):
            if backend == "auto" and "triton" in dispatch.backends(op):
                return "triton"
            return resolve_backend(op, backend, device)

        monkeypatch.setattr(dispatch, "resolve_backend", on_the_interpreter)
        monkeypatch.setattr(mamba_module, "resolve_backend", on_the_interpreter)

    def no_copies(*args, **kwargs):
        raise AssertionError("the launcher padded copies of the scan's inputs")

    monkeypatch.setattr(scan, "_identity_steps", no_copies)


@pytest.mark.parametrize("bimamba", [False, True], ids=["mamba", "bimamba"])
def test_mamba_on_the_kernels_pads_its_own_scan_inputs(bimamba, kernels_here):
    torch.manual_seed(8)
    model = Mamba(8, d_state=4, bimamba=bimamba).to(DEVICE)
    reference = Mamba(8, d_state=4, bimamba=bimamba, use_fast_path=False).to(DEVICE).double()
    reference.load_state_dict(model.state_dict())
    assert model._identity_pad(70, DEVICE) == 10 and reference._identity_pad(70, DEVICE) == 0
    x = torch.randn(1, 70, 8, device=DEVICE)
    check_mamba_against_reference(model, reference, x)
    with torch.no_grad():
        state, pieces = model.init_state(1), []
        for part in x.split([66, 4], dim=1):
            piece, state = model(part, state=state)
            pieces.append(piece)
        ref_state, ref_pieces = reference.init_state(1), []
        for part in x.double().split([66, 4], dim=1):
            piece, ref_state = reference(part, state=ref_state)
            ref_pieces.append(piece)
    assert rel_error(torch.cat(pieces, dim=1), torch.cat(ref_pieces, dim=1)) < 1e-5
    assert rel_error(state.ssm_state, ref_state.ssm_state) < 1e-5
    assert rel_error(state.conv_state, ref_state.conv_state) < 1e-5
