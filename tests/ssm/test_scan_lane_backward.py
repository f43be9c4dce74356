"""The selective scan's lane backward kernel (:mod:`videostate.ssm.kernels.scan_lane_backward_kernels`) against the
plain loop.

The forward runs the lane kernel with the backward's chunks 32 steps long, so that it stores the states entering
several chunks; the backward runs the lane kernel (forced: on CUDA the launcher takes it only with enough channels per
SM) with 1, 2, 4 or 8 lanes per channel. Forward, final state and every gradient against
:func:`tests.ssm.oracles.selective_scan_loop` in float64, differentiated by autograd: at 16 states (the butterfly's
every exchange pairs), at 5 states (padded to 8: slots of states that do not exist) and at 4 (with four parts, one
slot a lane and exchanges that only sum), over sequences of whole chunks, a short last chunk and channels that do not
fill the last program. On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU
tensors through Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, MARKS, RUNS, output_cotangents
from tests.ssm.oracles import selective_scan_loop
from tests.ssm.test_scan_state_kernels import (
    check_bidirectional_against_loops,
    check_output_and_gradients,
    check_scan_against_loop,
    gradients,
    rel_error,
    scan_inputs,
    spy_launches,
    whole_sequences,
)

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import selective_scan as scan

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
CHUNK = 32
BACKWARD_KERNELS = ("selective_scan_bwd_lane_kernel", "selective_scan_bwd_state_kernel")


@pytest.fixture(autouse=True)
def lane_forward(monkeypatch):
    whole_sequences(monkeypatch)
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_LANE))
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE, block_l=CHUNK))
    monkeypatch.setattr(scan, "SHORT_LENGTH", 1)


@pytest.fixture
def launches(monkeypatch):
    """Every launch of the backward kernels, as ``(kernel name, lanes per channel)``; the kernels still run."""
    return spy_launches(monkeypatch, BACKWARD_KERNELS, lambda name, args, kwargs: (name, kwargs.get("LOG_PARTS")))


def lane_backward(monkeypatch, parts: int) -> None:
    setting = {"kernel": "lane", "parts": parts}
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE, block_l=CHUNK, **setting))


@pytest.mark.parametrize("parts", [1, 2, 4, 8])
@pytest.mark.parametrize(
    "shape", [(1, 4, 64, 16, 0), (2, 6, 45, 5, 3), (1, 40, 72, 4, 0)], ids=["whole-chunks", "grouped-odd-N", "short"]
)
def test_lane_backward_against_loop(shape, parts, monkeypatch, launches):
    """45 steps run over rows padded to 48 (two chunks, the last 16 steps), 72 over three (the last 8); 40 channels
    leave the last program's lanes partly without a channel with one and two parts."""
    lane_backward(monkeypatch, parts)
    check_scan_against_loop(shape, seed=13)
    assert launches == [("selective_scan_bwd_lane_kernel", parts.bit_length() - 1)]


@pytest.mark.parametrize("parts", [1, 4])
def test_lane_backward_without_options(parts, monkeypatch, launches):
    """No D, gate, delta bias, softplus, initial state or final-state gradient: the output and the gradients of u,
    delta, A, B and C within 1e-5 of the float64 loop's."""
    lane_backward(monkeypatch, parts)
    exact = scan_inputs(2, 12, 48, 16, 0, seed=18)
    exact = {k: exact[k] for k in ("u", "delta", "A", "B", "C")}
    exact["delta"] = exact["delta"].abs()
    exact = {k: v.requires_grad_() for k, v in exact.items()}
    fast = {k: v.detach().float().to(DEVICE).requires_grad_() for k, v in exact.items()}
    y_exact, _ = selective_scan_loop(**exact)
    check_output_and_gradients(scan.selective_scan_triton(**fast), y_exact, fast, exact)
    assert launches == [("selective_scan_bwd_lane_kernel", parts.bit_length() - 1)]


@pytest.mark.parametrize("parts", [2, 4, 8])
@pytest.mark.parametrize("length, softplus", [(40, False), (45, True)], ids=["whole-blocks", "padded"])
def test_bidirectional_lane_backward(length, softplus, parts, monkeypatch, launches):
    """The reversed direction reads the output gradient and the gate at the mirrored steps and adds its gate gradient
    to the one the forward direction wrote; 45 steps are padded to 48, the time-reversed inputs before their
    sequence. Each lane reads and writes its own 4, 2 or 1 steps of a block."""
    lane_backward(monkeypatch, parts)
    check_bidirectional_against_loops(length, softplus, seeds=(14, 15))
    assert launches == [("selective_scan_bwd_lane_kernel", parts.bit_length() - 1)] * 2


def test_lane_backward_rule(monkeypatch, launches):
    """The lane backward needs the forward's checkpoints (a forward by the step kernel stores none), at most
    LANE_MAX_STATES states and whole blocks of steps; the state setting takes it on CUDA only, with enough
    channels."""
    rows = torch.empty(2, 3, 64, device=DEVICE)
    forced = {"kernel": "lane", "parts": 2}
    assert scan.uses_lane_backward(forced, 16, 64, CHUNK, *[rows] * 6)
    assert not scan.uses_lane_backward(forced, scan.LANE_MAX_STATES + 1, 64, CHUNK, *[rows] * 6)
    assert not scan.uses_lane_backward(forced, 16, 60, CHUNK, *[rows] * 6)
    if DEVICE.type != "cuda":
        assert not scan.uses_lane_backward(scan.BACKWARD_STATE, 16, 64, CHUNK, *[rows] * 6)
    lane_backward(monkeypatch, 2)
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_STEP))
    check_scan_against_loop((1, 4, 64, 16, 0), seed=16)
    assert launches == [("selective_scan_bwd_state_kernel", None)]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bfloat16 and the launcher's rule: on the GPU")
def test_bfloat16_through_the_rule(monkeypatch):
    """bfloat16 u, delta, z, B and C with enough channels that the state settings take the lane kernels both ways,
    the forward with the parts its rule gives: output, final state and gradients within 1e-2 of the float64 loop fed
    the same rounded values."""
    names = ("selective_scan_fwd_lane_kernel", "selective_scan_fwd_state_kernel", *BACKWARD_KERNELS)
    launches = spy_launches(monkeypatch, names, lambda name, args, kwargs: (name, kwargs.get("LOG_PARTS")))
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_STATE))
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE))
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    halves = ("u", "delta", "B", "C", "z")
    exact = scan_inputs(2, scan.LANE_MIN_CHANNELS_PER_SM * sms // 2, 300, 16, 0, seed=17)
    exact = {k: (v.bfloat16().double() if k in halves else v).to(DEVICE).requires_grad_() for k, v in exact.items()}
    fast = {
        k: v.detach().to(torch.bfloat16 if k in halves else torch.float32).requires_grad_() for k, v in exact.items()
    }
    out_fast = scan.selective_scan_triton(**fast, delta_softplus=True, return_final_state=True)
    out_exact = selective_scan_loop(**exact, delta_softplus=True)
    cotangents = output_cotangents(out_fast, out_exact)
    grads_fast = gradients([o.double() for o in out_fast], cotangents, list(fast.values()))
    grads_exact = gradients(list(out_exact), cotangents, list(exact.values()))
    errors = {f"out{i}": rel_error(a, b) for i, (a, b) in enumerate(zip(out_fast, out_exact, strict=True))}
    errors.update({f"d{k}": rel_error(a, b) for k, a, b in zip(NAMES, grads_fast, grads_exact, strict=True)})
    assert max(errors.values()) < 1e-2, errors
    forward_parts = scan.lane_forward_parts(2 * (scan.LANE_MIN_CHANNELS_PER_SM * sms // 2), 16, DEVICE)
    assert launches == [
        ("selective_scan_fwd_lane_kernel", forward_parts.bit_length() - 1),
        ("selective_scan_bwd_lane_kernel", scan.BACKWARD_LANE["parts"].bit_length() - 1),
    ]


def test_lane_backward_registers(monkeypatch):
    """On CUDA the backward's register limit is the setting's ``maxnreg`` unless ``maxnreg_fewer_waves`` runs the
    grid of one-warp programs in fewer waves (132 SMs: 8 warps an SM with 255 registers, 12 with 168)."""
    monkeypatch.setattr(scan, "sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    setting = {"maxnreg": 255, "maxnreg_fewer_waves": 168}
    cases = {1000: 255, 1056: 255, 1057: 168, 1536: 168, 1584: 168, 2112: 255, 3072: 168}
    assert {n: scan._lane_backward_registers(setting, n, cuda)["maxnreg"] for n in cases} == cases
    assert scan._lane_backward_registers({"maxnreg": 255}, 1536, cuda) == {"maxnreg": 255}
    assert scan._lane_backward_registers({}, 1536, cuda) == {}
    assert scan._lane_backward_registers(setting, 1536, torch.device("cpu")) == {}
