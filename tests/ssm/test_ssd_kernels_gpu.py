"""The Triton SSD (Mamba-2) chunked scan against the reference computed in float64 (forward and gradients).

On CUDA every run starts from a poisoned allocator (freed memory filled with NaN), so an output element the
kernels fail to write shows up as NaN. Tolerances (relative norm error): float32 1e-5 (the kernels' float32
matmuls run in full precision, not TF32), half types 1e-2.

With ``TRITON_INTERPRET=1`` and no GPU the same tests run on CPU tensors through Triton's interpreter, on
smaller shapes; there bfloat16 is skipped (the interpreter's bfloat16 ``tl.dot`` is wrong; float16 covers
the half path).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, MARKS, RUNS, output_cotangents
from videostate.ssm import dispatch
from videostate.ssm.ssd import ssd_scan_reference

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.ssd import CONFIG, ssd_scan_triton

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
HALF = [torch.float16] if INTERPRET else [torch.bfloat16, torch.float16]


def poison_allocator() -> None:
    """Fill the caching allocator's free memory with NaN so that torch.empty hands out NaN (CUDA only)."""
    if DEVICE.type != "cuda":
        return
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    block = torch.full((min(free // 4, 1 << 28) // 4,), float("nan"), device=DEVICE)
    del block


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values: an element was left unwritten"
    diff = (actual.double() - expected.double()).norm()
    scale = expected.double().norm()
    return (diff / scale if scale > 0 else diff).item()


def ssd_inputs(batch, length, heads, headdim, groups, n, dtype, *, full=True, D_per_channel=False, seed=0):
    """x, dt, B, C, z in ``dtype``; A, D, dt_bias and the initial state float32 (as Mamba-2 keeps them)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=DEVICE) * scale + shift).to(dt)

    inputs = {
        "x": randn(batch, length, heads, headdim),
        # With softplus any dt works; without it keep dt positive as a discretised step is.
        "dt": randn(batch, length, heads, scale=0.5) if full else (randn(batch, length, heads).abs() * 0.3 + 0.01),
        "A": -(torch.rand(heads, generator=g, device=DEVICE) * 2 + 0.1),
        "B": randn(batch, length, groups, n),
        "C": randn(batch, length, groups, n),
        "D": randn(heads, headdim, dt=torch.float32) if D_per_channel else randn(heads, dt=torch.float32),
        "z": randn(batch, length, heads, headdim),
        "dt_bias": randn(heads, scale=0.3, shift=-1.0, dt=torch.float32),
        "initial_states": randn(batch, heads, headdim, n, dt=torch.float32),
    }
    if not full:
        for name in ("D", "z", "dt_bias", "initial_states"):
            inputs[name] = None
    return inputs


def run_both(inputs: dict, **kwargs):
    """The kernels on ``inputs`` and the reference in float64 on the same values, with one seeded random
    cotangent for every output; returns outputs and input gradients of both."""
    fast = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    exact = {k: None if v is None else v.detach().double().requires_grad_(True) for k, v in fast.items()}
    poison_allocator()
    out_fast = ssd_scan_triton(**fast, **kwargs, return_final_states=True)
    out_exact = ssd_scan_reference(**exact, **kwargs, return_final_states=True)
    assert out_fast[0].dtype == inputs["x"].dtype and out_fast[1].dtype == torch.float32
    cotangents = output_cotangents(out_fast, out_exact)
    poison_allocator()
    torch.autograd.backward([o.double() for o in out_fast], cotangents)
    torch.autograd.backward(list(out_exact), cotangents)
    grads_fast = {k: v.grad for k, v in fast.items() if v is not None}
    assert all(grads_fast[k].dtype == fast[k].dtype for k in grads_fast), "gradients come in the inputs' dtypes"
    grads_exact = {k: v.grad for k, v in exact.items() if v is not None}
    return out_fast, out_exact, grads_fast, grads_exact


def assert_close(out_fast, out_exact, grads_fast, grads_exact, dtype):
    tol = TOLERANCE[dtype]
    errors = {name: rel_error(a, b) for name, a, b in zip(("y", "final"), out_fast, out_exact, strict=True)}
    for k in grads_exact:
        errors[f"d{k}"] = rel_error(grads_fast[k], grads_exact[k])
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


# (batch, L, heads, headdim, groups, N, chunk_size): L = 1, odd L, L not a multiple of the chunk, headdim and
# N below 16 and not powers of two, grouped B/C, long L, Mamba-2's sizes, chunk sizes the kernels round, and
# (GPU) the frame-interpolation scan's heads (16 in one group) over hundreds of chunks.
if INTERPRET:
    SHAPES = [
        (1, 1, 2, 4, 1, 8, 64),
        (2, 37, 4, 8, 2, 16, 16),
        (1, 20, 2, 3, 1, 5, 5),
        (1, 70, 3, 16, 3, 32, 64),
    ]
else:
    SHAPES = [
        (1, 1, 2, 16, 1, 16, 64),
        (2, 37, 4, 8, 2, 16, 16),
        (3, 300, 4, 3, 2, 5, 32),
        (2, 100, 6, 64, 3, 32, 64),
        (1, 257, 4, 64, 1, 128, 256),
        (2, 130, 24, 64, 1, 64, 64),
        (2, 2048, 8, 64, 2, 128, 64),
        (1, 1000, 2, 128, 1, 64, 100),
        (1, 64 * 200 + 5, 16, 16, 1, 64, 256),  # the interpolation backbone's scan: many chunks, 16 heads a group
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("full", [True, False], ids=["z-D-bias-softplus-h0", "bare"])
def test_ssd_scan_float32(shape, full):
    *dims, chunk_size = shape
    inputs = ssd_inputs(*dims, torch.float32, full=full)
    outs = run_both(inputs, chunk_size=chunk_size, dt_softplus=full)
    assert_close(*outs, torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape", SHAPES[1:4] if INTERPRET else SHAPES[1:], ids=str)
def test_ssd_scan_half(shape, dtype):
    *dims, chunk_size = shape
    inputs = ssd_inputs(*dims, dtype, seed=1)
    outs = run_both(inputs, chunk_size=chunk_size, dt_softplus=True)
    assert_close(*outs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_ssd_scan_per_channel_D_and_dt_limit(dtype):
    shape = (2, 45, 4, 8, 2, 16) if INTERPRET else (2, 333, 8, 64, 2, 64)
    inputs = ssd_inputs(*shape, dtype, D_per_channel=True, seed=2)
    outs = run_both(inputs, chunk_size=64, dt_softplus=True, dt_limit=(0.2, 0.9))
    assert_close(*outs, dtype)


def test_ssd_scan_strided_views():
    """x, B, C and z as views into one projection (Mamba-2's layout), dt float32 with bfloat16 x."""
    batch, length, heads, headdim, n = (2, 40, 2, 8, 16) if INTERPRET else (2, 300, 4, 64, 64)
    dtype = torch.float16 if INTERPRET else torch.bfloat16
    g = torch.Generator(device=DEVICE).manual_seed(3)
    d_inner = heads * headdim
    projection = torch.randn(batch, length, 2 * d_inner + 2 * n, generator=g, device=DEVICE).to(dtype)
    z, x, B, C = projection.split([d_inner, d_inner, n, n], dim=-1)
    inputs = ssd_inputs(batch, length, heads, headdim, 1, n, dtype, seed=3)
    inputs.update(
        x=x.unflatten(-1, (heads, headdim)),
        z=z.unflatten(-1, (heads, headdim)),
        B=B.unflatten(-1, (1, n)),
        C=C.unflatten(-1, (1, n)),
        dt=inputs["dt"].float(),
    )
    assert not inputs["x"].is_contiguous()
    outs = run_both(inputs, chunk_size=64, dt_softplus=True)
    assert_close(*outs, dtype)


@pytest.mark.parametrize("tile", [2, 4, 32], ids=lambda t: f"tile{t}")
def test_ssd_scan_state_passing_tiles(tile, monkeypatch):
    """The state passing walks the chunks a tile at a time: many tiles, a last tile cut short, and programs
    that each own a part of a head's state, forward and backward (initial and final states included)."""
    monkeypatch.setitem(CONFIG, "state_tile", tile)
    monkeypatch.setitem(CONFIG, "state_block", 16)
    shape = (1, 16 * 9 + 5, 2, 4, 1, 8) if INTERPRET else (2, 64 * 70 + 7, 4, 16, 1, 64)
    chunk_size = 16 if INTERPRET else 64
    inputs = ssd_inputs(*shape, torch.float32, seed=7)
    outs = run_both(inputs, chunk_size=chunk_size, dt_softplus=True)
    assert_close(*outs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("shape", [(2, 37, 4, 8, 1, 16), (1, 70, 6, 16, 2, 32)], ids=str)
def test_ssd_scan_group_heads_in_one_program(shape, dtype, monkeypatch):
    """The output kernel runs a whole group's heads in one program (sharing C B^T) when the launch has
    programs enough: 4 heads of one group, and 3 heads in each of 2 groups."""
    monkeypatch.setitem(CONFIG, "min_programs", 1)
    inputs = ssd_inputs(*shape, dtype, seed=8)
    outs = run_both(inputs, chunk_size=16, dt_softplus=True)
    assert_close(*outs, dtype)


SPLITS = [(1, 20, 49), (16, 16, 38), (69, 1)] if INTERPRET else [(1, 99, 200), (64, 64, 172), (257, 43)]


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_ssd_scan_chunks_equal_offline(split):
    """Running the sequence in pieces with the carried state gives the offline output and final state."""
    shape = (2, sum(split), 4, 8, 2, 16)
    inputs = ssd_inputs(*shape, torch.float32, seed=4)
    with torch.no_grad():
        y, final = ssd_scan_triton(**inputs, chunk_size=64, dt_softplus=True, return_final_states=True)
        state, pieces, start = inputs["initial_states"], [], 0
        for size in split:
            part = {k: v[:, start : start + size] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}
            part["initial_states"] = state
            piece, state = ssd_scan_triton(**part, chunk_size=64, dt_softplus=True, return_final_states=True)
            pieces.append(piece)
            start += size
    # Chunk boundaries move with the pieces, so roundings differ: the float32 tolerance applies.
    assert rel_error(torch.cat(pieces, dim=1), y) < TOLERANCE[torch.float32]
    assert rel_error(state, final) < TOLERANCE[torch.float32]


def test_ssd_scan_final_state_gradient_alone():
    """A loss on the final state only (no output gradient) reaches every input."""
    inputs = ssd_inputs(1, 50, 2, 8, 1, 16, torch.float32, seed=5)
    fast = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    exact = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    ssd_scan_triton(**fast, dt_softplus=True, return_final_states=True)[1].sum().backward()
    ssd_scan_reference(**exact, dt_softplus=True, return_final_states=True)[1].sum().backward()
    for k in ("x", "dt", "A", "B", "initial_states"):
        assert rel_error(fast[k].grad, exact[k].grad) < TOLERANCE[torch.float32], k
    assert fast["z"].grad.abs().max() == 0 and fast["C"].grad.abs().max() == 0


def test_ssd_scan_float64_runs_the_reference():
    inputs = {k: v.double() for k, v in ssd_inputs(2, 30, 2, 4, 1, 8, torch.float32, seed=6).items()}
    y, final = ssd_scan_triton(**inputs, chunk_size=16, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = ssd_scan_reference(**inputs, chunk_size=16, dt_softplus=True, return_final_states=True)
    assert y.dtype == torch.float64 and torch.equal(y, y_ref) and torch.equal(final, final_ref)


@pytest.mark.skipif(INTERPRET, reason="the triton backend is registered for CUDA devices")
def test_ssd_scan_auto_backend_is_triton_on_cuda():
    assert dispatch.resolve("ssd_scan", "auto", DEVICE) is ssd_scan_triton
