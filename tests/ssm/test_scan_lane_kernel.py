"""The selective scan's lane kernel (:mod:`videostate.ssm.kernels.scan_lane_kernels`) against the plain loop.

The forward runs the lane kernel (forced: on CUDA the launcher takes it only with enough channels per SM) with
the backward's chunks 32 steps long, so that it stores the states entering several chunks and the backward reads
them. Forward, final state and every gradient against :func:`tests.ssm.oracles.selective_scan_loop` in float64,
differentiated by autograd; the stored states against the loop's states at the chunk starts; the bidirectional
layout (output written reversed and accumulated under one gate) at lengths that are and are not whole blocks of
steps. On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through
Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, MARKS, RUNS
from tests.ssm.oracles import loop_state_after, selective_scan_loop
from tests.ssm.test_scan_state_kernels import (
    BIDIRECTIONAL,
    bidirectional_inputs,
    bidirectional_loops,
    check_bidirectional_against_loops,
    check_scan_against_loop,
    rel_error,
    scan_inputs,
    spy_launches,
    whole_sequences,
)

pytestmark = list(MARKS)
if RUNS:
    import triton
    import triton.language as tl

    from videostate.ssm.kernels import scan_lane_kernels
    from videostate.ssm.kernels import selective_scan as scan

    @triton.jit
    def _steps_roundtrip_kernel(x_ptr, cols_ptr, back_ptr, R: tl.constexpr):
        rows = tl.arange(0, R)
        tile = tl.load(x_ptr + rows[:, None] * 8 + tl.arange(0, 8)[None, :])
        cols = scan_lane_kernels.unstack_steps(tile)
        for k in tl.static_range(8):
            tl.store(cols_ptr + k * R + rows, cols[k])
        tl.store(back_ptr + rows[:, None] * 8 + tl.arange(0, 8)[None, :], scan_lane_kernels.stack_steps(cols))


CHUNK = 32  # the backward's chunk length here: the forward stores the state entering each


@pytest.fixture(autouse=True)
def lane_forward(monkeypatch):
    whole_sequences(monkeypatch)
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_LANE))
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE, block_l=CHUNK, block_d=2))
    monkeypatch.setattr(scan, "SHORT_LENGTH", 1)


@pytest.fixture
def launches(monkeypatch):
    """Every launch of the forward kernels, as ``(kernel name, constexprs)``; the kernels still run."""
    names = ("selective_scan_fwd_lane_kernel", "selective_scan_fwd_state_kernel")
    return spy_launches(monkeypatch, names, lambda name, args, kwargs: (name, kwargs))


def test_steps_split_and_stacked_in_order():
    """A ``(R, 8)`` tile's columns come out in order, and stacking them gives the tile back."""
    x = torch.randn(4, 8, device=DEVICE)
    cols = torch.full((8, 4), float("nan"), device=DEVICE)
    back = torch.full_like(x, float("nan"))
    _steps_roundtrip_kernel[(1,)](x, cols, back, R=4)
    assert torch.equal(cols, x.T) and torch.equal(back, x)


@pytest.mark.parametrize("parts", [1, 2, 4, 8])
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 1, 16, 0), (1, 4, 70, 16, 0), (2, 5, 64, 8, 0), (2, 6, 45, 5, 3)],
    ids=["L1", "three-chunks", "whole-blocks", "grouped-odd-N"],
)
def test_lane_scan_against_loop(shape, parts, monkeypatch, launches):
    """Odd lengths run over rows padded with steps that leave the state unchanged; the backward reads the states
    the lane kernel stored at its chunks' starts. With 2 or 4 lanes a channel each holds a share of its states (5
    states padded to 8), and the output sums theirs."""
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_LANE, parts=parts))
    check_scan_against_loop(shape, seed=4)
    assert [name for name, _ in launches] == ["selective_scan_fwd_lane_kernel"]
    assert launches[0][1]["STORE_CKPT"] and launches[0][1]["CKPT_L"] == CHUNK


def test_stored_states_are_the_loops():
    """The state entering chunk ``c`` is the loop's final state after ``c * CHUNK`` steps."""
    inputs = scan_inputs(2, 3, 100, 8, 0, seed=5)
    fast = {k: v.float().to(DEVICE) for k, v in inputs.items()}
    checkpoints = torch.full((2, 3, 4, 8), float("nan"), device=DEVICE)
    scan.scan_forward(
        *(fast[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")), True, fast["initial_state"],
        checkpoints=checkpoints,
    )  # fmt: skip
    for c in range(4):
        assert rel_error(checkpoints[:, :, c].cpu(), loop_state_after(inputs, c * CHUNK)) < 1e-5, c


@pytest.mark.parametrize("parts", [1, 4, 8])
@pytest.mark.parametrize(
    "length, softplus", [(45, False), (45, True), (80, True)], ids=["part-block", "padded", "whole-blocks"]
)
def test_bidirectional_against_loops(length, softplus, parts, monkeypatch, launches):
    """The reversed direction writes a block's outputs as the tile of its mirrored steps, reversed in registers; a
    length that is not whole blocks (not padded: a bias without softplus leaves no step to pad with) leaves the last
    block's mirrored steps partly before the sequence. With softplus that length is padded to 48: the time-reversed
    inputs before their sequence, the others after it."""
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_LANE, parts=parts))
    check_bidirectional_against_loops(length, softplus, seeds=(6, 7))
    assert [(name, kw["REVERSE_OUT"], kw["ACCUMULATE"]) for name, kw in launches] == [
        ("selective_scan_fwd_lane_kernel", True, False),
        ("selective_scan_fwd_lane_kernel", False, True),
    ]


def test_lane_rule(monkeypatch, launches):
    """The state setting takes the lane kernel on CUDA only, with at least LANE_MIN_CHANNELS_PER_SM channels per SM,
    a length that is a multiple of 16 and rows it reads as vectors: steps at stride 1, rows 16-byte aligned at
    multiples of 16 elements."""
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_STATE))
    rows = torch.empty(2, 3, 64, device=DEVICE)
    assert scan.vector_rows(rows) and scan.vector_rows(rows[:, :, :45]) and scan.vector_rows(rows[:1, :1, :45])
    assert not scan.vector_rows(rows[..., 1:]) and not scan.vector_rows(torch.empty(2, 3, 45, device=DEVICE))
    assert not scan.vector_rows(rows.transpose(1, 2).contiguous().transpose(1, 2))
    if DEVICE.type != "cuda":
        assert not scan.uses_lane(10**6, 10**6, 64, DEVICE, rows)
        return
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    enough = scan.LANE_MIN_CHANNELS_PER_SM * sms
    assert scan.uses_lane(1, enough, 64, DEVICE, rows) and not scan.uses_lane(1, enough - 1, 64, DEVICE, rows)
    assert not scan.uses_lane(1, enough, 64, DEVICE, rows[..., 1:])
    assert not scan.uses_lane(1, enough, 45, DEVICE, rows[..., :45])
    inputs = {k: v.float().to(DEVICE) for k, v in scan_inputs(1, enough, 64, 4, 0, seed=8).items()}
    scan.selective_scan_triton(**inputs, delta_softplus=True)
    inputs = {k: v.float().to(DEVICE) for k, v in scan_inputs(1, enough - 1, 64, 4, 0, seed=8).items()}
    scan.selective_scan_triton(**inputs, delta_softplus=True)
    assert [name for name, _ in launches] == ["selective_scan_fwd_lane_kernel", "selective_scan_fwd_state_kernel"]


def test_lane_forward_parts():
    """The forward splits each channel's states over the most lanes (a power of 2, at most LANE_MAX_PARTS and the
    states padded) that keep the grid within LANE_FORWARD_WARPS_PER_SM warps per SM; one lane off CUDA."""
    if DEVICE.type != "cuda":
        assert scan.lane_forward_parts(10, 16, DEVICE) == 1
        return
    lanes = scan.LANE_FORWARD_WARPS_PER_SM * 32 * torch.cuda.get_device_properties(DEVICE).multi_processor_count
    assert scan.lane_forward_parts(lanes // 4, 16, DEVICE) == 4
    assert scan.lane_forward_parts(lanes // 4 + 1, 16, DEVICE) == 2
    assert scan.lane_forward_parts(lanes, 16, DEVICE) == 1 == scan.lane_forward_parts(2 * lanes, 16, DEVICE)
    assert scan.lane_forward_parts(1, 16, DEVICE) == scan.LANE_MAX_PARTS
    assert scan.lane_forward_parts(1, 3, DEVICE) == 4


def test_odd_length_without_padding(launches):
    """A bias without softplus leaves no delta that discretises to 0, so an odd length is not padded: the steps of
    the last block past the sequence must leave the state as it is."""
    exact = scan_inputs(2, 3, 45, 4, 0, seed=9)
    exact["delta"], exact["delta_bias"] = exact["delta"].abs(), exact["delta_bias"].abs()
    fast = {k: v.float().to(DEVICE) for k, v in exact.items()}
    y, final_state = scan.selective_scan_triton(**fast, delta_softplus=False, return_final_state=True)
    y_exact, final_exact = selective_scan_loop(**exact, delta_softplus=False)
    assert rel_error(y.cpu(), y_exact) < 1e-5 and rel_error(final_state.cpu(), final_exact) < 1e-5
    assert [name for name, _ in launches] == ["selective_scan_fwd_lane_kernel"]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the launcher's rule: on the GPU")
@pytest.mark.parametrize(
    "length, softplus, kernel", [(48, True, "lane"), (45, True, "lane"), (45, False, "state")],
    ids=["whole-vectors", "padded", "odd"],
)  # fmt: skip
def test_bidirectional_through_the_rule(length, softplus, kernel, monkeypatch, launches):
    """With channels enough, the fused bidirectional scan runs both directions on the lane kernel over a length that
    is a multiple of 16 or padded to one, and on the state kernel over an odd length it cannot pad (a bias without
    softplus); the output equals the float64 loops'."""
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_STATE))
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    exact = bidirectional_inputs(2, scan.LANE_MIN_CHANNELS_PER_SM * sms // 2, length, 8, softplus, seeds=(11, 12))
    fast = (exact[k].float().to(DEVICE) for k in BIDIRECTIONAL)
    y_fast = scan.selective_scan_bidirectional_triton(*fast, delta_softplus=softplus).cpu()
    y_exact = bidirectional_loops(exact, softplus)
    assert rel_error(y_fast, y_exact) < 1e-5
    assert [name for name, _ in launches] == [f"selective_scan_fwd_{kernel}_kernel"] * 2
