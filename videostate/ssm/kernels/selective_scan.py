"""Selective scan on the GPU: launchers and autograd functions around :mod:`.scan_state_kernels`,
:mod:`.scan_lane_kernels`, :mod:`.scan_lane_backward_kernels` and :mod:`.scan_step_kernels`.

Same call signatures as :func:`videostate.ssm.selective_scan.selective_scan_reference`. Float64
inputs run the reference (the kernels keep their state and sums in float32).
"""

from __future__ import annotations

import torch
import triton

from ..selective_scan import no_step_delta, selective_scan_reference
from .common import any_float64, next_power_of_2, sm_count
from .padded_rows import padded_rows
from .scan_chunk_kernels import selective_scan_chunk_states_kernel, selective_scan_chunk_sums_kernel
from .scan_lane_backward_kernels import selective_scan_bwd_lane_kernel
from .scan_lane_kernels import STEPS, selective_scan_fwd_lane_kernel
from .scan_state_kernels import selective_scan_bwd_state_kernel, selective_scan_fwd_state_kernel
from .scan_step_kernels import selective_scan_fwd_kernel

# Forward ``kernel="state"`` (FORWARD_STATE, the default) and the backward (BACKWARD_STATE): ``block_d`` channels x
# ``block_l`` steps per tile, one scan along time per state. H100, bf16, the benchmark's three shapes (8, 1536, 2048) /
# (64, 384, 1569) / (2, 768, 6272): forward 0.44 / 1.12 / 0.21 ms, backward 1.80 / 3.84 / 0.98 ms, the best of the
# settings swept (1-8 channels, 128-2048 steps, 1-8 warps; more channels or warps per program spilled registers or
# waited on shared-memory barriers). The kernels they replaced took 1.05 / 1.77 / 0.47 ms forward (runs of steps
# composed per thread, one scan over the runs of a (channels, N, runs) tile) and 8.2 / 14.1 / 6.7 ms backward.
# ``kernel="step"`` (FORWARD_STEP): one channel's N states spread over ``split`` lanes, ``unroll`` steps per loop
# iteration. A sequence shorter than SHORT_LENGTH runs the step kernel with FORWARD_SHORT (H100, bf16, the depth
# model's four L=32 scans read channel-major: 2.11 ms with it, 3.46 ms with FORWARD_STEP's settings). Settings that
# `benchmarks/ssm_kernels.py --sweep` finds faster must pass tests/ssm/test_kernels_gpu.py before they replace these.
FORWARD_STATE = {"kernel": "state", "block_d": 1, "block_l": 256, "num_warps": 1}
BACKWARD_STATE = {"block_d": 1, "block_l": 256, "num_warps": 1}
FORWARD_STEP = {"kernel": "step", "split": 4, "num_warps": 2, "unroll": 4}
FORWARD_SHORT = {"kernel": "step", "split": 2, "num_warps": 1, "unroll": 4}
CONFIG = {"forward": dict(FORWARD_STATE), "backward": dict(BACKWARD_STATE)}
# Forward ``kernel="lane"`` (FORWARD_LANE, :mod:`.scan_lane_kernels`) and backward ``kernel="lane"`` (BACKWARD_LANE,
# :mod:`.scan_lane_backward_kernels`): each channel on ``parts`` lanes that split its states, a program one warp. On
# CUDA the state settings take them instead where there are at least LANE_MIN_CHANNELS_PER_SM channels (``batch *
# dim``) per SM and, for the backward, the forward stored its checkpoints and there are at most LANE_MAX_STATES
# states (:func:`uses_lane`, :func:`uses_lane_backward`). H100, bf16, GPU ms, state kernel / lane kernel by channels
# per SM (the benchmark's ``forward_kernels`` and ``backward_kernels``; the forward's parts by its rule below):
# forward (2, 768, 6272) 12: 0.21 / 0.37; (2, 1536, 2048) 23: 0.12 / 0.13; (4, 1536, 4096) 47: 0.53 / 0.32;
# (4, 2048, 2048) 62: 0.30 / 0.20; (6, 1536, 2048) 70: 0.34 / 0.24; (8, 1536, 2048) 93: 0.44 / 0.24;
# (32, 768, 1024) 186: 0.41 / 0.22; (64, 384, 1569) 186: 1.10 / 0.72; backward (2, 768, 6272) 12: 0.97 / 1.52;
# (2, 1536, 2048) 23: 0.63 / 0.51; (4, 1536, 4096) 47: 1.92 / 1.23; (4, 2048, 2048) 62: 1.23 / 0.65; (6, 1536, 2048)
# 70: 1.39 / 0.87; (8, 1536, 2048) 93: 1.79 / 0.92; (32, 768, 1024) 186: 1.72 / 0.94; (64, 384, 1569) 186: 3.14 /
# 1.65.
# Parts give the grid more warps to hide latency with; the per-step values of a channel (softplus, gate, output and,
# in the backward, the gradients of u, delta and z) are computed once, each part at its own STEPS / parts steps of a
# block and exchanged by shuffles. The forward takes the most parts, up to LANE_MAX_PARTS, that keep the grid within
# LANE_FORWARD_WARPS_PER_SM warps per SM (:func:`lane_forward_parts`); forward ms with 1 / 2 / 4 / 8 parts:
# (8, 1536, 2048) 0.42 / 0.29 / 0.24 / 0.27; (64, 384, 1569) 0.81 / 0.73 / 0.78 / 0.80; (4, 1536, 2048) 0.39 / 0.24
# / 0.19 / 0.16; (2, 768, 6272) 1.17 / 0.70 / 0.49 / 0.38. The backward always takes 4: 2 / 4 / 8 took 1.14 / 0.93 /
# 1.14 ms on (8, 1536, 2048) and 2.14 / 1.78 / 2.02 on (64, 384, 1569). Registers: the forward's ``maxnreg``: with
# ptxas's own allocation (about 100 registers) each step's B and C loads were issued just before their use and the
# few warps waited on them (one part: (8, 1536, 2048) took 0.435 / 0.436 / 0.418 ms with ptxas's own, 168 and 200;
# four parts: 0.236 with each). The backward takes ``maxnreg`` (255: 8 warps an SM) unless the grid then runs in
# more waves than with ``maxnreg_fewer_waves`` (168: 12 warps an SM): (8, 1536, 2048), 11.6 warps an SM, 0.93 ms with
# 168 (1.45 / 1.20 ms with 255 / 168 before the parts shared their per-step values); (4, 2048, 2048), 7.8: 0.77 /
# 0.95 then; (64, 384, 1569), 23.3: 1.78 / 1.66 ms.
FORWARD_LANE = {"kernel": "lane", "maxnreg": 200, "segment_channels_per_sm": 256, "segment_min_chunks": 6}
BACKWARD_LANE = {"kernel": "lane", "parts": 4, "maxnreg": 255, "maxnreg_fewer_waves": 168,
                 "segment_channels_per_sm": 512, "segment_min_chunks": 3}  # fmt: skip
LANE_MIN_CHANNELS_PER_SM = 32
LANE_MAX_STATES = 16
LANE_MAX_PARTS = 8
LANE_FORWARD_WARPS_PER_SM = 16
REGISTERS_PER_SM = 65536
# H100, bf16, forward with the states unrolled / in a loop (one-channel programs, so B*D of them per SM):
# (2, 768, 6272) 12 per SM: 0.21 / 0.39 ms; (1, 1536, 4096) 12: 0.14 / 0.25; (4, 768, 2048) 23: 0.135 / 0.135;
# (8, 1536, 2048) 93: 0.469 / 0.436; (32, 768, 1024) 186: 0.458 / 0.411; (64, 384, 1569) 186, padded to 1584:
# 1.20 / 1.12 ms; but the bidirectional scan's reversed direction at that odd length (not padded): 2.54 / 3.35 ms.
STATE_LOOP_PROGRAMS_PER_SM = 32
SHORT_LENGTH = 64
# Time-parallel segments of the lane kernels (:mod:`.scan_chunk_kernels`): with fewer than LANE_MIN_CHANNELS_PER_SM
# channels per SM and at least ``segment_min_chunks`` chunks, the sequence is cut into segments of whole chunks that
# run at once, each from the state (backward: the adjoint) the chunk kernels give it, until the grid holds
# ``segment_channels_per_sm`` channels per SM (the lane settings' keys; :func:`lane_segment_chunks`). The chunk
# kernels cost about half a lane pass over the sequence: they compute as many exponentials. H100, bf16, GPU ms,
# state kernel / segmented lane kernels (forward 256 and backward 512 channels per SM): forward (1, 384, 12544), 3
# per SM: 0.36 / 0.10; (1, 768, 12544) 6: 0.38 / 0.19; (1, 1152, 12544) 9: 0.40 / 0.28; (2, 768, 6272) 12: 0.21 /
# 0.19; (1, 1152, 3136) 9: 0.094 / 0.075; (2, 1536, 2048) 23: 0.120 / 0.110; (4, 768, 3136) 23: 0.21 / 0.19;
# (1, 384, 1584), seven chunks: 0.039 / 0.028; (2, 768, 1024), four: 0.030 / 0.038; (1, 768, 512), two: 0.013 /
# 0.025. Backward: 1.33 / 0.29; 1.39 / 0.47; 1.69 / 0.70; 0.97 / 0.50; 0.49 / 0.22; 0.61 / 0.31; 1.01 / 0.52;
# 0.155 / 0.077; 0.166 / 0.108; 0.065 / 0.074. Segments of 128 / 256 / 512 channels per SM, forward (2, 768,
# 6272): 0.198 / 0.191 / 0.221, backward 0.57 / 0.52 / 0.50; (1, 768, 12544) 0.198 / 0.190 / 0.217 and 0.57 / 0.52
# / 0.47. With the channels alone at 32 per SM and more, segments slow the forward ((4, 1536, 4096), 47 per SM: 0.32
# whole, 0.48 in segments) and, from 62 per SM, the backward ((4, 2048, 2048): 0.64 / 0.80; at 47: 1.22 / 1.14).
# CHUNK_SUMS tiles the per-chunk sums (channels a program, warps; (2, 768, 6272): 1 / 2 / 4 / 8 channels with one
# warp 80 / 77 / 87 / 189 us, 4 channels with 4 warps 179 us), CHUNK_STATES the scan over chunks (chunks composed at
# a time, warps).
CHUNK_SUMS = {"block_d": 2, "num_warps": 1}
CHUNK_STATES = {"block_c": 64, "num_warps": 1}


def runs_short_setting(length: int) -> bool:
    """Whether the forward runs a sequence of ``length`` steps with FORWARD_SHORT (shorter than SHORT_LENGTH)."""
    return CONFIG["forward"].get("kernel") != "step" and length < SHORT_LENGTH


def _state_blocks(cpg: int, length: int, cfg: dict) -> dict:
    """Tiles of the state kernels: the setting's, the chunk no longer than the sequence needs (at least a warp)."""
    block_l = min(cfg["block_l"], max(32, next_power_of_2(length)))
    return {"BLOCK_D": max(1, min(cfg["block_d"], next_power_of_2(cpg))), "BLOCK_L": block_l}


def _state_loop(cfg: dict, programs: int, length: int, device: torch.device) -> bool:
    """Whether the forward state kernel walks the states in a loop, carrying them in memory (``STATE_LOOP``), rather
    than unrolled with all of them in registers: the setting's ``state_loop`` if it has one, else when its grid has
    at least STATE_LOOP_PROGRAMS_PER_SM programs per SM and its loads are vectorised (a length that is a multiple
    of 16). Registers then limit how many programs an SM runs at once, and the loop keeps fewer values live; with
    fewer programs the unrolled states' shorter dependency chains win, and so do they over element-wise loads."""
    if "state_loop" in cfg:
        return bool(cfg["state_loop"])
    if device.type != "cuda" or length % 16:
        return False
    return programs >= STATE_LOOP_PROGRAMS_PER_SM * sm_count(device)


def _grouped(t: torch.Tensor) -> torch.Tensor:
    """B or C as ``(batch, G, N, L)`` (a view: ungrouped inputs get G=1)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def vector_rows(t: torch.Tensor) -> bool:
    """Whether the kernels can read ``t``'s rows (``(..., L)``) as 16-byte vectors: steps at stride 1 and every row
    starting 16-byte aligned at a multiple of 16 elements, which Triton's launch specialisation can prove."""
    row_strides = [stride for size, stride in zip(t.shape[:-1], t.stride()[:-1], strict=True) if size > 1]
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(stride % 16 == 0 for stride in row_strides)


def _aligned_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t (..., L)`` laid out so that the backward kernel's loads of it are vectorised: every row starts at a
    multiple of 16 elements and can be read up to ``L`` rounded up to 16 (see :func:`_row_length`). ``t`` itself
    when its layout allows it, else a copy in padded rows (a view of their first ``L``). Tensors whose rows are
    not contiguous (token-major inputs) are returned as they are."""
    if t is None or t.numel() == 0 or t.stride(-1) != 1:
        return t
    length = t.shape[-1]
    padded = triton.cdiv(length, 16) * 16
    last = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    readable = (last + padded - length + 1) * t.element_size() <= t.untyped_storage().nbytes()
    if readable and vector_rows(t):
        return t
    rows = torch.empty(*t.shape[:-1], padded, device=t.device, dtype=t.dtype)[..., :length]
    rows.copy_(t)
    return rows


def _row_length(length: int, *rows: torch.Tensor | None) -> int:
    """How far the backward kernel reads each row of ``rows`` (passed through :func:`_aligned_rows`): ``length``
    rounded up to 16 when every row is contiguous, so that their masks are constant over aligned runs of 16 steps;
    the values past ``length`` are never used."""
    if all(t is None or t.stride(-1) == 1 for t in rows):
        return triton.cdiv(length, 16) * 16
    return length


def identity_pad(length: int) -> int:
    """How many steps that leave the state unchanged bring ``length`` to a multiple of 16, for a forward over the
    padded length: its final state is the one at step ``L``, its output up to ``L`` the same, and with a length a
    multiple of 16 the kernels' loads and stores are vectorised and the lane kernel applies (:func:`uses_lane`; H100,
    bf16, (64, 384, 1569): the forward takes 0.51 ms with the copies (:func:`.padded_rows.padded_rows`), 0.18 ms of
    it copying; the lane kernel over the odd length, reading B and C from copies, took 0.64 ms). 0 where this does not
    apply: lengths already a multiple of 16 and sequences the step kernel runs. A caller that makes the scan's
    inputs can make them padded (:meth:`videostate.ssm.Mamba.gated_scan`); otherwise the launcher pads copies."""
    if length % 16 == 0 or CONFIG["forward"].get("kernel") not in ("state", "lane") or runs_short_setting(length):
        return 0
    return triton.cdiv(length, 16) * 16 - length


def _identity_pad(length: int, rows: tuple, has_bias: bool, delta_softplus: bool) -> int:
    """:func:`identity_pad` for copies of ``rows``: 0 also where they are not contiguous or no ``delta`` value
    discretises to 0 (a bias without softplus)."""
    if any(t is not None and t.stride(-1) != 1 for t in rows) or (has_bias and not delta_softplus):
        return 0
    return identity_pad(length)


def _identity_steps(rows: tuple, delta: torch.Tensor, pad: int, delta_softplus: bool, *, front: bool) -> tuple:
    """Copies of ``rows`` (``(..., L)`` tensors or ``None``, ``delta`` among them) with ``pad`` steps that leave the
    state unchanged after the sequence, or before it with ``front``: ``delta`` that discretises to 0
    (:func:`~videostate.ssm.selective_scan.no_step_delta` under softplus) and zero elsewhere."""
    no_step = no_step_delta(delta.dtype) if delta_softplus else 0.0
    return tuple(None if t is None else padded_rows(t, pad, no_step if t is delta else 0.0, front=front) for t in rows)


def _identity_padded(u, delta, z, B, C, delta_bias, delta_softplus) -> tuple | None:
    """``u, delta, z, B, C`` padded at the end with :func:`_identity_pad`'s steps (:func:`_identity_steps`), or
    ``None`` where none apply."""
    rows = (u, delta, z, B, C)
    pad = _identity_pad(u.shape[-1], rows, delta_bias is not None, delta_softplus)
    return _identity_steps(rows, delta, pad, delta_softplus, front=False) if pad else None


def _flips_output(reverse_out: bool, length: int) -> bool:
    """Whether the state kernels read and write a reversed output a chunk at a time in order, flipping it in
    registers: when a length that is a multiple of 16 lets those accesses be vectorised."""
    return reverse_out and length % 16 == 0


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else tuple(t.stride())


def checkpoint_buffer(u: torch.Tensor, n: int) -> torch.Tensor | None:
    """Where the forward stores the state entering each of the backward's chunks, ``(batch, dim, n_chunks, N)``
    float32 (``1 / block_l`` of all states), so that the backward need not recompute them. None when the forward
    does not run the state kernel with the backward's chunk length; the backward then recomputes them."""
    batch, dim, length = u.shape
    forward = CONFIG["forward"]
    if forward.get("kernel") not in ("state", "lane") or runs_short_setting(length):
        return None
    block_l = _state_blocks(1, length, CONFIG["backward"])["BLOCK_L"]
    if forward["kernel"] == "state" and _state_blocks(1, length, forward)["BLOCK_L"] != block_l:
        return None
    return torch.empty(batch, dim, triton.cdiv(length, block_l), n, device=u.device, dtype=torch.float32)


def scan_forward(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, *, y=None, reverse_out=False,
    accumulate=False, setting=None, checkpoints=None,
):  # fmt: skip
    """Launch the forward kernel; returns ``(y, final_state)``.

    With ``y`` given the result is written into it (``accumulate`` adds its current value before the
    gate); ``reverse_out`` reads ``z`` and writes ``y`` at ``L - 1 - t``. ``setting`` replaces the kernel
    setting chosen from the length (CONFIG's, or FORWARD_SHORT for a sequence shorter than SHORT_LENGTH; the state
    setting gives way to FORWARD_LANE where :func:`uses_lane` says so).
    ``checkpoints`` (from :func:`checkpoint_buffer`) receives the state entering each chunk.
    """
    batch, dim, length = u.shape
    B4, C4 = _grouped(B), _grouped(C)
    groups = B4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    cfg = CONFIG["forward"]
    if setting is not None:
        cfg = setting
    elif runs_short_setting(length):
        cfg = FORWARD_SHORT  # a short sequence leaves most of a state kernel's tile idle
    if y is None:
        y = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
    final_state = torch.empty(batch, dim, n, device=u.device, dtype=torch.float32)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    kernel = cfg.get("kernel", "step")
    if kernel == "state" and setting is None and uses_lane(batch, dim, length, u.device, u, delta, z, B4, C4, y):
        cfg, kernel = FORWARD_LANE, "lane"
    if kernel == "lane":
        block_l = _state_blocks(1, length, CONFIG["backward"])["BLOCK_L"]
        _launch_lane(
            u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, y, final_state, checkpoints, block_l,
            reverse_out, accumulate, cfg,
        )  # fmt: skip
        return y, final_state
    if kernel == "step":
        split = min(cfg["split"], next_power_of_2(n))
        block_d = 32 * cfg["num_warps"] // split
        blocks = {"SPLIT": split, "BLOCK_D": block_d, "UNROLL": cfg["unroll"]}
        launch = selective_scan_fwd_kernel
    elif kernel == "state":
        blocks = _state_blocks(cpg, length, cfg)
        block_d = blocks["BLOCK_D"]
        blocks.update(
            STORE_CKPT=checkpoints is not None,
            FLIP_OUT=_flips_output(reverse_out, length),
            STATE_LOOP=_state_loop(cfg, batch * groups * triton.cdiv(cpg, block_d), length, u.device),
        )
        launch = selective_scan_fwd_state_kernel
    else:
        raise ValueError(f"CONFIG['forward']['kernel'] must be 'state' or 'step'; got {kernel!r}")
    chunks = triton.cdiv(length, blocks["BLOCK_L"]) if kernel == "state" else None
    if checkpoints is not None and checkpoints.shape[2] != chunks:
        raise ValueError(
            f"checkpoints of {checkpoints.shape[2]} chunks need the state kernel with the backward's chunk length; "
            f"the forward runs {kernel!r} with {blocks}"
        )
    outputs = (y, final_state)
    if kernel == "state":
        outputs += (final_state if checkpoints is None else checkpoints,)
    grid = (batch, groups, triton.cdiv(cpg, block_d))
    launch[grid](
        u, delta, A, B4, C4,
        u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        final_state if h0 is None else h0, *outputs,
        dim, length, cpg,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides3(z), *y.stride(),
        N=n, **blocks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_H0=h0 is not None, REVERSE_OUT=reverse_out, ACCUMULATE=accumulate,
        num_warps=cfg["num_warps"],
    )  # fmt: skip
    return y, final_state


def uses_lane(
    batch: int, dim: int, length: int, device: torch.device, *rows: torch.Tensor | None, lane: dict = FORWARD_LANE
) -> bool:
    """Whether the state setting gives way to the ``lane`` setting (FORWARD_LANE, or BACKWARD_LANE): on CUDA, a
    length that is a multiple of 16, ``rows`` (``u``, ``delta``, ``z``, B, C, the output, or its gradient) read as
    vectors (:func:`vector_rows`), and either at least LANE_MIN_CHANNELS_PER_SM channels (``batch * dim``) per SM or
    a sequence that the setting cuts into time-parallel segments (:func:`lane_segment_chunks`). Element by element
    the lane kernel is slower than the state kernel (H100, bf16, the fused bidirectional scan of (64, 384, 1569),
    whose rows are not padded: 5.06 against 2.54 ms; in rows aligned by copies but over that odd length, whose step
    masks are not constant over vectors: 2.83 against 2.51 ms); over (64, 384, 1568) the fused scan takes 0.81 ms
    with it, 1.43 ms with the state kernel."""
    if device.type != "cuda" or length % 16 or not all(t is None or vector_rows(t) for t in rows):
        return False
    channels, sms = batch * dim, sm_count(device)
    if channels >= LANE_MIN_CHANNELS_PER_SM * sms:
        return True
    n_chunks = triton.cdiv(length, _state_blocks(1, length, CONFIG["backward"])["BLOCK_L"])
    return lane_segment_chunks(lane, channels, n_chunks, device) < n_chunks


def lane_forward_parts(channels: int, n: int, device: torch.device) -> int:
    """How many lanes the lane forward gives each of ``channels`` channels of ``n`` states: the largest power of 2 up
    to LANE_MAX_PARTS and ``n`` padded to a power of 2 whose lanes stay within LANE_FORWARD_WARPS_PER_SM warps per
    SM (at least 1); 1 off CUDA."""
    if device.type != "cuda":
        return 1
    lanes = LANE_FORWARD_WARPS_PER_SM * 32 * sm_count(device)
    parts = 1
    while parts * 2 <= min(LANE_MAX_PARTS, next_power_of_2(n)) and channels * parts * 2 <= lanes:
        parts *= 2
    return parts


def lane_segment_chunks(cfg: dict, channels: int, n_chunks: int, device: torch.device) -> int:
    """How many chunks each time-parallel segment of a lane kernel holds (``n_chunks``: one segment, the whole
    sequence): the setting ``cfg``'s ``segment_chunks`` if it has one; on CUDA, with fewer than
    LANE_MIN_CHANNELS_PER_SM channels (``batch * dim``) per SM and at least its ``segment_min_chunks`` chunks, the
    fewest segments that give the grid its ``segment_channels_per_sm`` channels (each counted as often as it has
    segments) per SM; else, and off CUDA, one."""
    if "segment_chunks" in cfg:
        return min(cfg["segment_chunks"], n_chunks)
    if device.type != "cuda" or n_chunks < cfg.get("segment_min_chunks", 2):
        return n_chunks
    sms = sm_count(device)
    if channels >= LANE_MIN_CHANNELS_PER_SM * sms:
        return n_chunks
    segments = max(1, min(n_chunks, triton.cdiv(cfg.get("segment_channels_per_sm", 0) * sms, channels)))
    return triton.cdiv(n_chunks, segments)


def chunk_states(u, delta, A, BC4, delta_bias, delta_softplus, start, out, ckpt_l, *, z=None, dy=None,
                 reverse_out=False):  # fmt: skip
    """The chunk kernels (:mod:`.scan_chunk_kernels`) into ``out (batch, dim, n_chunks, N)`` float32: the state
    entering each chunk of ``ckpt_l`` steps from the initial state ``start`` (``None``: zero), or, given the output
    gradient ``dy``, the adjoint each chunk receives from the one after it, from the final state's gradient
    ``start``. ``BC4`` is B forward and C backward, as ``(batch, G, N, L)``."""
    batch, dim, length = u.shape
    groups = BC4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    n_chunks = out.shape[2]
    adjoint = dy is not None
    sums = torch.empty(batch, dim, n_chunks - 1, n, device=u.device, dtype=torch.float32)
    totals = torch.empty(batch, dim, n_chunks - 1, device=u.device, dtype=torch.float32)
    block_d = min(CHUNK_SUMS["block_d"], next_power_of_2(cpg))
    selective_scan_chunk_sums_kernel[(batch * (n_chunks - 1), groups, triton.cdiv(cpg, block_d))](
        u, delta, A, BC4, u if z is None else z, u if dy is None else dy, u if delta_bias is None else delta_bias,
        sums, totals,
        dim, length, cpg, n_chunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *A.stride(), *BC4.stride()[:3],
        *_strides3(z)[:2], *_strides3(dy)[:2],
        N=n, BLOCK_D=block_d, CKPT_L=ckpt_l,
        HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), ADJOINT=adjoint,
        REVERSE_OUT=reverse_out, FLIP_OUT=_flips_output(reverse_out, length), num_warps=CHUNK_SUMS["num_warps"],
    )  # fmt: skip
    selective_scan_chunk_states_kernel[(batch * dim,)](
        sums, totals, A, out if start is None else start, out,
        dim, n_chunks, *A.stride(),
        N=n, NP=next_power_of_2(n), BLOCK_C=CHUNK_STATES["block_c"], HAS_START=start is not None, ADJOINT=adjoint,
        num_warps=CHUNK_STATES["num_warps"],
    )  # fmt: skip


def _launch_lane(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, y, final_state, checkpoints, ckpt_l,
                 reverse_out, accumulate, cfg):  # fmt: skip
    """The lane kernel (:mod:`.scan_lane_kernels`) into ``y`` and ``final_state`` (and ``checkpoints``, every
    ``ckpt_l`` steps), in time-parallel segments where :func:`lane_segment_chunks` gives more than one."""
    batch, dim, length = u.shape
    groups = B4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    n_chunks = triton.cdiv(length, ckpt_l)
    segment_chunks = lane_segment_chunks(cfg, batch * dim, n_chunks, u.device)
    n_segments = triton.cdiv(n_chunks, segment_chunks)
    segmented = n_segments > 1
    if segmented:  # every chunk's entering state, which the backward reads too
        if checkpoints is None:
            checkpoints = torch.empty(batch, dim, n_chunks, n, device=u.device, dtype=torch.float32)
        chunk_states(u, delta, A, B4, delta_bias, delta_softplus, h0, checkpoints, ckpt_l)
    parts = cfg.get("parts") or lane_forward_parts(batch * dim * n_segments, n, u.device)
    split = _lane_split(n, parts)
    registers = {} if cfg.get("maxnreg") is None else {"maxnreg": cfg["maxnreg"]}
    selective_scan_fwd_lane_kernel[(batch * n_segments, groups, triton.cdiv(cpg, 32 // parts))](
        u, delta, A, B4, C4,
        u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        final_state if h0 is None else h0, y, final_state, final_state if checkpoints is None else checkpoints,
        dim, length, cpg, n_chunks, n_segments, segment_chunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *A.stride(), *B4.stride(), *C4.stride(),
        *_strides3(z)[:2], y.stride(0), y.stride(1),
        N=n, **split, CKPT_L=ckpt_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_H0=h0 is not None, STORE_CKPT=checkpoints is not None and not segmented, SEGMENTED=segmented,
        REVERSE_OUT=reverse_out, ACCUMULATE=accumulate, FAST_MATH=u.device.type == "cuda",
        num_warps=1, **registers,
    )  # fmt: skip


def _lane_split(n: int, parts: int) -> dict:
    """The lane kernels' split of a channel's ``n`` states over ``parts`` lanes (a power of 2 up to STEPS: each lane
    also computes the channel's per-step values at ``STEPS / parts`` steps of a block): the states padded to a power
    of 2 and at least ``parts``, as log2 of the slots a lane holds and of the parts."""
    if parts not in (1, 2, 4, 8):
        raise ValueError(f"parts must be a power of 2 from 1 to 8; got {parts}")
    slots = max(next_power_of_2(n), parts) // parts
    return {"LOG_NS": slots.bit_length() - 1, "LOG_PARTS": parts.bit_length() - 1}


def scan_backward(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, dy, d_final, *,
    dz=None, accumulate_dz=False, reverse_out=False, checkpoints=None,
):  # fmt: skip
    """Launch the backward kernel; returns the gradients ``(du, ddelta, dA, dB, dC, dD, dz, dbias, dh0)``.

    ``checkpoints``: the states entering the chunks as the forward stored them (else the kernel computes them).
    ``dz`` given: the gate's gradient is written into it, or added to it with ``accumulate_dz`` (the two
    directions of a bidirectional scan share one gate).
    dA, dD and dbias are float32 sums over the batch; dB, dC float32 in B's and C's shapes.
    """
    batch, dim, length = u.shape
    u, delta, z, dy = _aligned_rows(u), _aligned_rows(delta), _aligned_rows(z), _aligned_rows(dy)
    B4, C4 = _aligned_rows(_grouped(B)), _aligned_rows(_grouped(C))
    groups = B4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    cfg = CONFIG["backward"]
    blocks = _state_blocks(cpg, length, cfg)
    n_chunks = triton.cdiv(length, blocks["BLOCK_L"])
    device, f32 = u.device, torch.float32
    has_checkpoints = checkpoints is not None
    if not has_checkpoints:
        checkpoints = torch.empty(batch, dim, n_chunks, n, device=device, dtype=f32)
    elif checkpoints.shape != (batch, dim, n_chunks, n):
        raise ValueError(f"checkpoints must be {(batch, dim, n_chunks, n)}; got {tuple(checkpoints.shape)}")
    du = torch.empty(batch, dim, length, device=device, dtype=u.dtype)
    ddelta = torch.empty(batch, dim, length, device=device, dtype=delta.dtype)
    if z is not None and dz is None:
        dz = torch.empty(batch, dim, length, device=device, dtype=z.dtype)
    # Rows of dB and dC start at multiples of 16 elements, so the kernels' atomic adds are vectorised.
    padded = triton.cdiv(length, 16) * 16
    dBC = torch.zeros(2, batch, groups, n, padded, device=device, dtype=f32)[..., :length]
    lane = has_checkpoints and uses_lane_backward(cfg, n, length, blocks["BLOCK_L"], u, delta, z, dy, B4, C4)
    lane_cfg = BACKWARD_LANE if cfg.get("kernel") != "lane" else cfg
    segment_chunks = lane_segment_chunks(lane_cfg, batch * dim, n_chunks, device) if lane else n_chunks
    n_segments = triton.cdiv(n_chunks, segment_chunks)
    # dA, dD and dbias per batch element and time-parallel segment of the lane kernel (one without segments)
    dA = torch.empty(batch, n_segments, dim, n, device=device, dtype=f32)
    dD = torch.empty(batch, n_segments, dim, device=device, dtype=f32)
    dbias = torch.empty(batch, n_segments, dim, device=device, dtype=f32)
    # The gradient of the state entering each chunk, carried between them: at the end, that of h0.
    carried = torch.empty(batch, dim, n, device=device, dtype=f32)
    h0 = None if initial_state is None else initial_state.to(f32).contiguous()
    d_final = None if d_final is None else d_final.to(f32).contiguous()
    args = (u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, dy, d_final, checkpoints, carried,
            du, ddelta, dz, dBC, dA, dD, dbias, accumulate_dz, reverse_out)  # fmt: skip
    if lane:
        _launch_lane_backward(*args, blocks["BLOCK_L"], segment_chunks, lane_cfg)
    else:
        _launch_state_backward(*args, has_checkpoints, blocks, cfg)
    dB, dC = dBC[0], dBC[1]
    if B.dim() == 3:
        dB, dC = dB[:, 0], dC[:, 0]
    dA, dD, dbias = (t.sum((0, 1)) for t in (dA, dD, dbias))
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None if h0 is None else carried


def uses_lane_backward(cfg: dict, n: int, length: int, chunk: int, u, delta, z, dy, B4, C4) -> bool:
    """Whether the backward takes the lane kernel, given that the forward stored its checkpoints: at most
    LANE_MAX_STATES states, a length and chunk made of whole STEPS-step blocks, and either the setting says so
    (``kernel="lane"``) or it is the state setting and :func:`uses_lane` holds."""
    if n > LANE_MAX_STATES or length % STEPS.value or chunk % STEPS.value:
        return False
    if cfg.get("kernel") == "lane":
        return True
    if cfg.get("kernel", "state") != "state":
        return False
    batch, dim, _ = u.shape
    return uses_lane(batch, dim, length, u.device, u, delta, z, dy, B4, C4, lane=BACKWARD_LANE)


def _launch_state_backward(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, dy, d_final, checkpoints,
                           carried, du, ddelta, dz, dBC, dA, dD, dbias, accumulate_dz, reverse_out, has_checkpoints,
                           blocks, cfg):  # fmt: skip
    """The state kernel's backward (:mod:`.scan_state_kernels`) into the gradient buffers."""
    batch, dim, length = u.shape
    groups = B4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    dB, dC = dBC[0], dBC[1]
    row_length = _row_length(length, u, delta, z, dy, B4, C4)
    grid = (batch, groups, triton.cdiv(cpg, blocks["BLOCK_D"]))
    selective_scan_bwd_state_kernel[grid](
        u, delta, A, B4, C4,
        u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        dA if h0 is None else h0, dy, dA if d_final is None else d_final, checkpoints, carried,
        du, ddelta, du if dz is None else dz, dB, dC, dA, dD, dbias,
        dim, length, row_length, cpg, groups, checkpoints.shape[2],
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides3(z), *dy.stride(),
        dB.stride(-2),
        N=n, **blocks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_H0=h0 is not None, HAS_DHT=d_final is not None, HAS_CKPT=has_checkpoints, REVERSE_OUT=reverse_out,
        FLIP_OUT=_flips_output(reverse_out, length), ACCUMULATE_DZ=accumulate_dz, ROWS_PADDED=row_length != length,
        num_warps=cfg["num_warps"],
    )  # fmt: skip


def _launch_lane_backward(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, h0, dy, d_final, checkpoints,
                          carried, du, ddelta, dz, dBC, dA, dD, dbias, accumulate_dz, reverse_out, ckpt_l,
                          segment_chunks, cfg):  # fmt: skip
    """The lane kernel's backward (:mod:`.scan_lane_backward_kernels`) into the gradient buffers, from the
    ``checkpoints`` stored every ``ckpt_l`` steps, in time-parallel segments of ``segment_chunks`` chunks each
    from the adjoint :func:`chunk_states` gives it."""
    batch, dim, length = u.shape
    groups = B4.shape[1]
    cpg, n = dim // groups, A.shape[1]
    n_chunks = checkpoints.shape[2]
    n_segments = triton.cdiv(n_chunks, segment_chunks)
    carry = None
    if n_segments > 1:
        carry = torch.empty_like(checkpoints)
        chunk_states(
            u, delta, A, C4, delta_bias, delta_softplus, d_final, carry, ckpt_l, z=z, dy=dy, reverse_out=reverse_out
        )
    split = _lane_split(n, cfg["parts"])
    grid = (batch * n_segments, groups, triton.cdiv(cpg, 32 // cfg["parts"]))
    scratch = torch.empty(grid[0] * grid[1] * grid[2] * (ckpt_l // STEPS.value) * (32 << split["LOG_NS"]),
                          device=u.device, dtype=torch.float32)  # fmt: skip
    selective_scan_bwd_lane_kernel[grid](
        u, delta, A, B4, C4,
        u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        dy, dA if d_final is None else d_final, checkpoints, checkpoints if carry is None else carry, scratch,
        carried, du, ddelta, du if dz is None else dz, dBC, dA, dD, dbias,
        dim, length, cpg, groups, n_chunks, n_segments, segment_chunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *A.stride(),
        B4.stride(0), B4.stride(1), B4.stride(2), C4.stride(0), C4.stride(1), C4.stride(2),
        *_strides3(z)[:2], dy.stride(0), dy.stride(1), dBC.stride(0), dBC.stride(-2),
        N=n, **split, CKPT_L=ckpt_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_H0=h0 is not None, HAS_DHT=d_final is not None, SEGMENTED=carry is not None, REVERSE_OUT=reverse_out,
        ACCUMULATE_DZ=accumulate_dz, FAST_MATH=u.device.type == "cuda",
        num_warps=1, **_lane_backward_registers(cfg, grid[0] * grid[1] * grid[2], u.device),
    )  # fmt: skip


def _lane_backward_registers(cfg: dict, programs: int, device: torch.device) -> dict:
    """ptxas's register limit for the lane backward's one-warp ``programs``: the setting's ``maxnreg``, or its
    ``maxnreg_fewer_waves`` where the grid then runs in fewer waves of warps; none without ``maxnreg``."""
    if cfg.get("maxnreg") is None or device.type != "cuda":
        return {}
    sms = sm_count(device)

    def waves(registers: int) -> int:
        return triton.cdiv(programs, sms * (REGISTERS_PER_SM // (32 * registers)))

    fewer = cfg.get("maxnreg_fewer_waves")
    if fewer is not None and waves(fewer) < waves(cfg["maxnreg"]):
        return {"maxnreg": fewer}
    return {"maxnreg": cfg["maxnreg"]}


def _cast(grad, like):
    return None if grad is None or like is None else grad.to(like.dtype)


class SelectiveScanFunction(torch.autograd.Function):
    """One-direction selective scan; returns ``(y, final_state)``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        ctx.set_materialize_grads(False)
        length = u.shape[-1]
        padded = _identity_padded(u, delta, z, B, C, delta_bias, delta_softplus)
        if padded is not None:  # the backward runs over the padded rows too
            u, delta, z, B, C = padded
        elif any(ctx.needs_input_grad):  # the rows the backward reads, laid out for it once and kept for it
            u, delta, z, B, C = (_aligned_rows(t) for t in (u, delta, z, B, C))
        checkpoints = checkpoint_buffer(u, A.shape[1]) if any(ctx.needs_input_grad) else None
        y, final_state = scan_forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, checkpoints=checkpoints
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, checkpoints)
        ctx.delta_softplus, ctx.pad = delta_softplus, u.shape[-1] - length
        return y[..., :length], final_state

    @staticmethod
    def backward(ctx, dy, d_final):
        u, delta, A, B, C, D, z, delta_bias, initial_state, checkpoints = ctx.saved_tensors
        pad = ctx.pad
        if dy is None:
            dy = torch.zeros_like(u)
        elif pad:
            dy = padded_rows(dy, pad)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state, dy, d_final,
            checkpoints=checkpoints,
        )  # fmt: skip
        if pad:  # the gradients of the sequence's own steps
            du, ddelta, dB, dC, dz = (None if g is None else g[..., :-pad] for g in (du, ddelta, dB, dC, dz))
        return (
            du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), _cast(dD, D), dz,
            _cast(dbias, delta_bias), _cast(dh0, initial_state), None,
        )  # fmt: skip


class BidirectionalScanFunction(torch.autograd.Function):
    """Forward scan plus a scan of time-reversed inputs, one shared gate; returns ``(y, final_state)``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                initial_state, delta_softplus):  # fmt: skip
        ctx.set_materialize_grads(False)
        ckpt = ckpt_b = None
        length = u.shape[-1]
        has_bias = delta_bias is not None or delta_bias_b is not None
        pad = _identity_pad(length, (u, delta, z, B, C, u_b, delta_b, B_b, C_b), has_bias, delta_softplus)
        if pad:  # the time-reversed inputs are padded before their sequence, so that both end at the same step
            u, delta, z, B, C = _identity_steps((u, delta, z, B, C), delta, pad, delta_softplus, front=False)
            u_b, delta_b, B_b, C_b = _identity_steps((u_b, delta_b, B_b, C_b), delta_b, pad, delta_softplus, front=True)
        elif any(ctx.needs_input_grad):  # as in SelectiveScanFunction
            u, delta, z, B, C, u_b, delta_b, B_b, C_b = (
                _aligned_rows(t) for t in (u, delta, z, B, C, u_b, delta_b, B_b, C_b)
            )
        if any(ctx.needs_input_grad):
            ckpt, ckpt_b = checkpoint_buffer(u, A.shape[1]), checkpoint_buffer(u_b, A_b.shape[1])
        y, _ = scan_forward(
            u_b, delta_b, A_b, B_b, C_b, D_b, None, delta_bias_b, delta_softplus, None, reverse_out=True,
            checkpoints=ckpt_b,
        )  # fmt: skip
        y, final_state = scan_forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, y=y, accumulate=True, checkpoints=ckpt
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
                              initial_state, ckpt, ckpt_b)  # fmt: skip
        ctx.delta_softplus, ctx.pad = delta_softplus, pad
        return y[..., :length], final_state

    @staticmethod
    def backward(ctx, dy, d_final):
        saved = ctx.saved_tensors
        u, delta, A, B, C, D, z, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, h0, ckpt, ckpt_b = saved
        pad = ctx.pad
        if dy is None:
            dy = torch.zeros_like(u)
        else:  # laid out once for both directions, over the padded length
            dy = padded_rows(dy, pad) if pad else _aligned_rows(dy)
        # the gate's gradient, written by one direction and added to by the other, in the gate's dtype
        dz = None if z is None else torch.empty(z.shape, device=z.device, dtype=z.dtype)
        fwd = scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, h0, dy, d_final, dz=dz, checkpoints=ckpt
        )
        bwd = scan_backward(
            u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b, ctx.delta_softplus, None, dy, None,
            dz=dz, accumulate_dz=dz is not None, reverse_out=True, checkpoints=ckpt_b,
        )  # fmt: skip
        du, ddelta, dA, dB, dC, dD, _, dbias, dh0 = fwd
        du_b, ddelta_b, dA_b, dB_b, dC_b, dD_b, dz, dbias_b, _ = bwd
        if pad:  # the gradients of the sequence's own steps
            du, ddelta, dB, dC, dz = (None if g is None else g[..., :-pad] for g in (du, ddelta, dB, dC, dz))
            du_b, ddelta_b, dB_b, dC_b = (g[..., pad:] for g in (du_b, ddelta_b, dB_b, dC_b))
        return (
            du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), _cast(dD, D), dz,
            _cast(dbias, delta_bias),
            du_b, ddelta_b, dA_b.to(A_b.dtype), dB_b.to(B_b.dtype), dC_b.to(C_b.dtype), _cast(dD_b, D_b),
            _cast(dbias_b, delta_bias_b), _cast(dh0, h0), None,
        )  # fmt: skip


def selective_scan_triton(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """Triton selective scan (see :func:`videostate.ssm.selective_scan.selective_scan`). For a length that is not a
    multiple of 16 the output is a view of rows padded to one (see :func:`_identity_padded`)."""
    if any_float64(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state
        )
    y, final_state = SelectiveScanFunction.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus)
    )
    return (y, final_state) if return_final_state else y


def selective_scan_bidirectional_triton(
    u, delta, A, B, C, D, z, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b,
    delta_softplus=False, initial_state=None, return_final_state=False,
):  # fmt: skip
    """Fused bidirectional scan (see :func:`videostate.ssm.mamba.selective_scan_bidirectional`)."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    if any_float64(*tensors, initial_state):
        from ..mamba import selective_scan_bidirectional_reference

        return selective_scan_bidirectional_reference(
            *tensors, delta_softplus=delta_softplus, initial_state=initial_state, return_final_state=return_final_state
        )
    y, final_state = BidirectionalScanFunction.apply(*tensors, initial_state, bool(delta_softplus))
    return (y, final_state) if return_final_state else y
