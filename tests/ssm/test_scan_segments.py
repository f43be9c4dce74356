"""The lane kernels in time-parallel segments (:mod:`videostate.ssm.kernels.scan_chunk_kernels`) against the plain
loop.

Chunks of 16 steps, and segments of 1 or 3 of them forced by the settings (on CUDA the launcher cuts a sequence
into segments only where the channels alone give too few lanes). The chunk kernels' entering states against the
loop's states at the chunk starts; forward, final state and every gradient of one-direction and bidirectional scans
against :func:`tests.ssm.oracles.selective_scan_loop` in float64, differentiated by autograd, with an initial state
and a final-state gradient (which enter the first and the last segment only through the chunk kernels' scan). On
CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, MARKS, RUNS
from tests.ssm.oracles import loop_state_after, scan_steps, selective_scan_loop
from tests.ssm.test_scan_state_kernels import (
    check_bidirectional_against_loops,
    check_scan_against_loop,
    rel_error,
    scan_inputs,
    spy_launches,
)

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import common
    from videostate.ssm.kernels import selective_scan as scan

CHUNK = 16
KERNELS = (
    "selective_scan_chunk_sums_kernel",
    "selective_scan_chunk_states_kernel",
    "selective_scan_fwd_lane_kernel",
    "selective_scan_bwd_lane_kernel",
)


def segments(monkeypatch, chunks: int, parts: int = 4) -> None:
    """Both lane kernels, in segments of ``chunks`` chunks; the forward with ``parts`` lanes a channel."""
    lane = {"kernel": "lane", "segment_chunks": chunks}
    monkeypatch.setitem(scan.CONFIG, "forward", dict(scan.FORWARD_LANE, parts=parts, **lane))
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE, block_l=CHUNK, parts=4, **lane))
    monkeypatch.setattr(scan, "SHORT_LENGTH", 1)


@pytest.fixture
def launches(monkeypatch):
    """Every launch of the chunk and lane kernels, as ``(kernel name, constexprs)``; the kernels still run."""
    return spy_launches(monkeypatch, KERNELS, lambda name, args, kwargs: (name, kwargs))


def test_sm_count_is_asked_once_per_device(monkeypatch):
    """The rules' SM count: each device's properties are queried once; a device without an index is the current."""
    asked = []

    def properties(index):
        asked.append(index)
        return type("Properties", (), {"multi_processor_count": 100 + index})()

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    common._sm_count.cache_clear()
    try:
        counts = [common.sm_count(torch.device(name)) for name in ("cuda:0", "cuda:1", "cuda:0", "cuda")]
    finally:
        common._sm_count.cache_clear()
    assert counts == [100, 101, 100, 101] and asked == [0, 1]


def test_segment_rules(monkeypatch):
    """Chunks a segment: the setting's ``segment_chunks`` (at most the sequence's chunks); on CUDA, with fewer than
    LANE_MIN_CHANNELS_PER_SM channels per SM and at least ``segment_min_chunks`` chunks, the fewest segments that
    reach its ``segment_channels_per_sm`` channels per SM; else one segment. The state setting gives way to a lane
    setting where that cuts the sequence into segments."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    lane = {"segment_channels_per_sm": 256, "segment_min_chunks": 4}
    assert scan.lane_segment_chunks({"segment_chunks": 3}, 8, 10, cpu) == 3
    assert scan.lane_segment_chunks({"segment_chunks": 30}, 8, 10, cpu) == 10
    assert scan.lane_segment_chunks(lane, 8, 10, cpu) == 10
    monkeypatch.setattr(scan, "sm_count", lambda device: 132)
    enough = scan.LANE_MIN_CHANNELS_PER_SM * 132
    assert scan.lane_segment_chunks(lane, enough, 25, cuda) == 25
    assert scan.lane_segment_chunks(lane, enough - 1, 25, cuda) == 3  # 9 segments: 8 of 3 chunks and 1
    assert scan.lane_segment_chunks(lane, 256 * 132 // 25, 25, cuda) == 1
    assert scan.lane_segment_chunks(lane, 1, 25, cuda) == 1
    assert scan.lane_segment_chunks(lane, 1, 4, cuda) == 1 and scan.lane_segment_chunks(lane, 1, 3, cuda) == 3
    assert scan.lane_segment_chunks({}, 1, 25, cuda) == 25
    chunk = scan.CONFIG["backward"]["block_l"]
    assert scan.uses_lane(1, enough, chunk, cuda, lane=lane)
    assert scan.uses_lane(1, enough - 1, 4 * chunk, cuda, lane=lane)
    assert not scan.uses_lane(1, enough - 1, 3 * chunk, cuda, lane=lane)
    assert not scan.uses_lane(1, enough - 1, 25 * chunk, cuda, lane={})


@pytest.mark.parametrize("adjoint", [False, True], ids=["states", "adjoints"])
def test_chunk_states_are_the_loops(adjoint):
    """The state entering chunk ``c`` is the loop's final state after ``c * CHUNK`` steps; the adjoint chunk ``c``
    receives from the one after it is the gradient of that state through the steps after chunk ``c`` alone (the
    loop's gradient of its initial state over them, with the final state's gradient)."""
    e = scan_inputs(2, 3, 5 * CHUNK - 6, 8, 0, seed=21)
    f = {k: v.float().to(DEVICE) for k, v in e.items()}
    B4, C4 = scan._grouped(f["B"]), scan._grouped(f["C"])
    out = torch.full((2, 3, 5, 8), float("nan"), device=DEVICE)
    if not adjoint:
        scan.chunk_states(f["u"], f["delta"], f["A"], B4, f["delta_bias"], True, f["initial_state"], out, CHUNK)
    d_final = torch.randn(2, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    dy = torch.randn(e["u"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    if adjoint:
        scan.chunk_states(
            f["u"], f["delta"], f["A"], C4, f["delta_bias"], True, d_final.float().to(DEVICE), out, CHUNK,
            z=f["z"], dy=dy.float().to(DEVICE),
        )  # fmt: skip
    for c in range(5):
        if adjoint and c == 4:
            expected = d_final
        elif adjoint:
            start = (c + 1) * CHUNK
            h = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
            y, final = selective_scan_loop(**{**scan_steps(e, start), "initial_state": h}, delta_softplus=True)
            expected = torch.autograd.grad([y, final], h, [dy[..., start:], d_final])[0]
        else:
            expected = loop_state_after(e, c * CHUNK)
        assert rel_error(out[:, :, c].cpu(), expected) < 1e-5, c


@pytest.mark.parametrize(
    "chunks, parts, shape",
    [(1, 4, (1, 4, 100, 16, 0)), (3, 1, (1, 4, 100, 16, 0)), (2, 2, (2, 6, 45, 5, 3))],
    ids=["chunk-segments", "three-chunk-segments", "grouped-odd-N"],
)
def test_segmented_scan_against_loop(chunks, parts, shape, monkeypatch, launches):
    """100 steps are padded to 112, seven chunks of 16: segments of one chunk, or of three (the last of one);
    45 steps of grouped B/C and 5 states run over three chunks, in segments of two."""
    segments(monkeypatch, chunks, parts)
    check_scan_against_loop(shape, seed=24)
    names = [name for name, _ in launches]
    assert names == [*KERNELS[:3], *KERNELS[:2], KERNELS[3]]
    lanes = [kw for name, kw in launches if name in KERNELS[2:]]
    assert all(kw["SEGMENTED"] for kw in lanes) and not lanes[0]["STORE_CKPT"]
    assert [kw["ADJOINT"] for name, kw in launches if name in KERNELS[:2]] == [False, False, True, True]


@pytest.mark.parametrize("length", [48, 80])
def test_segmented_bidirectional_against_loops(length, monkeypatch, launches):
    """The reversed direction's adjoint sums read the output gradient and the gate at the mirrored steps, a chunk
    flipped in registers; 48 steps are three chunks, 80 five."""
    segments(monkeypatch, 1)
    check_bidirectional_against_loops(length, True, seeds=(25, 26))
    reversed_sums = [kw["REVERSE_OUT"] for name, kw in launches if name == KERNELS[0] and kw["ADJOINT"]]
    assert sorted(reversed_sums) == [False, True]


def test_one_chunk_is_one_segment(monkeypatch, launches):
    """A sequence of one chunk runs unsegmented, without the chunk kernels."""
    segments(monkeypatch, 1)
    check_scan_against_loop((1, 4, CHUNK, 16, 0), seed=27)
    assert [name for name, _ in launches] == [KERNELS[2], KERNELS[3]]
    assert not any(kw["SEGMENTED"] for _, kw in launches)
