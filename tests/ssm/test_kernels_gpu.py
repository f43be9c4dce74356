"""The Triton kernels against the reference ops computed in float64 (forward and gradients).

Every run starts from a poisoned allocator (freed memory filled with NaN), so an output element a
kernel fails to write shows up as NaN. Tolerances (relative norm error): float32 1e-5, half types
1e-2.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import output_cotangents
from tests.ssm.test_mamba_kernels_path import check_mamba_against_reference
from videostate.ssm import dispatch
from videostate.ssm.causal_conv import causal_conv1d, causal_conv1d_update
from videostate.ssm.mamba import Mamba, selective_scan_bidirectional
from videostate.ssm.norm import rms_norm, rms_norm_gated
from videostate.ssm.selective_scan import selective_scan, selective_state_update
from videostate.ssm.ssd import ssd_state_update

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
CUDA = torch.device("cuda")


def poison_allocator() -> None:
    """Fill the caching allocator's free memory with NaN so that torch.empty hands out NaN."""
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    block = torch.full((min(free // 4, 1 << 28) // 4,), float("nan"), device=CUDA)
    del block


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|``; the absolute error where the exact value is zero (e.g. the
    gradient of A over one step from a zero state), where rounding cannot be measured relatively."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values: an element was left unwritten"
    diff = (actual.double() - expected.double()).norm()
    scale = expected.double().norm()
    return (diff / scale if scale > 0 else diff).item()


def run_both(fn, inputs: dict, dtype: torch.dtype, **kwargs):
    """``fn`` on the kernels (``inputs`` cast to ``dtype`` where floating and not marked fp32) and on
    the reference in float64 from the same values; returns outputs and input gradients of both."""
    fast = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    exact = {k: None if v is None else v.detach().double().requires_grad_(True) for k, v in fast.items()}
    poison_allocator()
    out_fast = fn(**fast, **kwargs, backend="triton")
    out_exact = fn(**exact, **kwargs, backend="reference")
    out_fast = out_fast if isinstance(out_fast, tuple) else (out_fast,)
    out_exact = out_exact if isinstance(out_exact, tuple) else (out_exact,)
    cotangents = output_cotangents(out_fast, out_exact)
    poison_allocator()
    torch.autograd.backward([o.double() for o in out_fast], cotangents)
    torch.autograd.backward(list(out_exact), cotangents)
    grads_fast = {k: v.grad for k, v in fast.items() if v is not None}
    grads_exact = {k: v.grad for k, v in exact.items() if v is not None}
    return out_fast, out_exact, grads_fast, grads_exact


def assert_close(out_fast, out_exact, grads_fast, grads_exact, dtype, tol=None):
    tol = tol or TOLERANCE[dtype]
    errors = {f"out{i}": rel_error(a, b) for i, (a, b) in enumerate(zip(out_fast, out_exact, strict=True))}
    errors.update({f"d{k}": rel_error(grads_fast[k], grads_exact[k]) for k in grads_exact})
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


def scan_inputs(batch, dim, length, n, groups, dtype, *, full=True, seed=0):
    g = torch.Generator(device=CUDA).manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=CUDA) * scale + shift).to(dt)

    bc_shape = (batch, n, length) if groups == 0 else (batch, groups, n, length)
    inputs = {
        "u": randn(batch, dim, length),
        # With softplus any delta works; without it keep delta positive as a discretised step is.
        "delta": randn(batch, dim, length, scale=0.5) if full else (randn(batch, dim, length).abs() * 0.3 + 0.01),
        "A": -(torch.rand(dim, n, generator=g, device=CUDA) * 2 + 0.1),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim, dt=torch.float32),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim, scale=0.3, shift=-1.0, dt=torch.float32),
        "initial_state": randn(batch, dim, n, dt=torch.float32),
    }
    if not full:
        for name in ("D", "z", "delta_bias", "initial_state"):
            inputs[name] = None
    return inputs


@pytest.fixture(params=["state", "step"])
def forward_kernel(request, monkeypatch):
    """Runs a test with each selective-scan forward kernel: the state kernel (the default) and the step one."""
    from videostate.ssm.kernels import selective_scan as scan

    settings = {"state": scan.FORWARD_STATE, "step": scan.FORWARD_STEP}[request.param]
    monkeypatch.setitem(scan.CONFIG, "forward", dict(settings))
    return request.param


# (batch, dim, L, N, groups: 0 = B/C (batch, N, L)); L = 1, odd, not a multiple of any chunk, long, large dim; few
# channels over many chunks, which the lane kernels run in time-parallel segments both ways (also at 2500 steps),
# grouped B/C among them.
SCAN_SHAPES = [
    (1, 4, 1, 16, 0),
    (2, 24, 37, 16, 0),
    (2, 32, 100, 8, 2),
    (3, 6, 17, 5, 3),
    (1, 1536, 129, 16, 0),
    (2, 16, 2500, 16, 0),
    (2, 40, 300, 16, 4),
    (1, 12, 4000, 16, 3),
]


@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=str)
@pytest.mark.parametrize("full", [True, False], ids=["z-D-bias-softplus-h0", "bare"])
def test_selective_scan_float32(shape, full, forward_kernel):
    inputs = scan_inputs(*shape, torch.float32, full=full)
    outs = run_both(selective_scan, inputs, torch.float32, delta_softplus=full, return_final_state=True)
    assert_close(*outs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 24, 37, 16, 0), (2, 64, 1025, 16, 0), (2, 32, 100, 8, 2), (1, 32, 3000, 16, 0)], ids=str
)
def test_selective_scan_half(shape, dtype, forward_kernel):
    inputs = scan_inputs(*shape, dtype)
    outs = run_both(selective_scan, inputs, dtype, delta_softplus=True, return_final_state=True)
    assert_close(*outs, dtype)


@pytest.mark.parametrize("split", [(1, 99, 200), (64, 64, 172), (257, 43)], ids=str)
def test_selective_scan_chunks_equal_offline(split, forward_kernel):
    inputs = scan_inputs(2, 48, 300, 16, 0, torch.float32)
    with torch.no_grad():
        y, final = selective_scan(**inputs, delta_softplus=True, return_final_state=True, backend="triton")
        state, pieces, start = inputs["initial_state"], [], 0
        for size in split:
            part = {
                k: v[..., start : start + size] if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()
            }
            part["initial_state"] = state
            piece, state = selective_scan(**part, delta_softplus=True, return_final_state=True, backend="triton")
            pieces.append(piece)
            start += size
    assert rel_error(torch.cat(pieces, dim=-1), y) < 1e-6
    assert rel_error(state, final) < 1e-6


def bidirectional_inputs(batch, dim, length, n, dtype, seed=0):
    forward = scan_inputs(batch, dim, length, n, 0, dtype, seed=seed)
    backward = scan_inputs(batch, dim, length, n, 0, dtype, seed=seed + 1)
    inputs = {k: forward[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")}
    for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
        inputs[f"{k}_b"] = backward[k]
    return inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 24, 37), (2, 64, 700)], ids=str)
def test_selective_scan_bidirectional(shape, dtype, forward_kernel):
    inputs = bidirectional_inputs(*shape, 16, dtype)
    outs = run_both(selective_scan_bidirectional, inputs, dtype, delta_softplus=True, return_final_state=True)
    assert_close(*outs, dtype)


CONV_SHAPES = [(2, 5, 1, 4), (2, 24, 3, 4), (3, 64, 301, 4), (1, 1536, 130, 3), (2, 8, 77, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero-state"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_causal_conv1d(shape, with_state, dtype):
    batch, dim, length, width = shape
    g = torch.Generator(device=CUDA).manual_seed(1)
    inputs = {
        "x": torch.randn(batch, dim, length, generator=g, device=CUDA).to(dtype),
        "weight": torch.randn(dim, width, generator=g, device=CUDA),
        "bias": torch.randn(dim, generator=g, device=CUDA),
        "conv_state": torch.randn(batch, dim, width, generator=g, device=CUDA).to(dtype) if with_state else None,
    }
    for activation in ("silu", None):
        outs = run_both(causal_conv1d, inputs, dtype, activation=activation, return_final_state=True)
        assert_close(*outs, dtype)


def test_causal_conv1d_chunks_equal_offline():
    g = torch.Generator(device=CUDA).manual_seed(2)
    x = torch.randn(2, 32, 50, generator=g, device=CUDA)
    weight, bias = torch.randn(32, 4, generator=g, device=CUDA), torch.randn(32, generator=g, device=CUDA)
    y, final = causal_conv1d(x, weight, bias, "silu", return_final_state=True, backend="triton")
    state, pieces = torch.zeros(2, 32, 4, device=CUDA), []
    for part in x.split([1, 2, 30, 17], dim=-1):
        piece, state = causal_conv1d(part, weight, bias, "silu", conv_state=state, backend="triton")
        pieces.append(piece)
    assert rel_error(torch.cat(pieces, dim=-1), y) < 1e-6
    assert rel_error(state, final) == 0.0
    state, steps = torch.zeros(2, 32, 4, device=CUDA), []
    with torch.no_grad():
        for t in range(x.shape[-1]):
            step, state = causal_conv1d_update(x[..., t], state, weight, bias, "silu", backend="triton")
            steps.append(step)
    assert rel_error(torch.stack(steps, dim=-1), y) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_causal_conv1d_update(dtype):
    g = torch.Generator(device=CUDA).manual_seed(3)
    x = torch.randn(3, 200, generator=g, device=CUDA).to(dtype)
    state = torch.randn(3, 200, 4, generator=g, device=CUDA).to(dtype)
    weight, bias = torch.randn(200, 4, generator=g, device=CUDA), torch.randn(200, generator=g, device=CUDA)
    poison_allocator()
    with torch.no_grad():
        y, next_state = causal_conv1d_update(x, state, weight, bias, "silu", backend="triton")
    y_ref, next_ref = causal_conv1d_update(
        x.double(), state.double(), weight.double(), bias.double(), "silu", backend="reference"
    )
    assert rel_error(y, y_ref) < TOLERANCE[dtype]
    assert torch.equal(next_state, next_ref.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 37, 192), (4, 129, 768), (3, 5, 1000)], ids=str)
@pytest.mark.parametrize("prenorm", [True, False], ids=["prenorm", "norm"])
def test_rms_norm(shape, prenorm, dtype):
    g = torch.Generator(device=CUDA).manual_seed(4)
    hidden = shape[-1]
    inputs = {
        "x": torch.randn(*shape, generator=g, device=CUDA).to(dtype),
        "weight": torch.randn(hidden, generator=g, device=CUDA),
        "bias": torch.randn(hidden, generator=g, device=CUDA) if prenorm else None,
        "residual": torch.randn(*shape, generator=g, device=CUDA).to(dtype),
    }
    outs = run_both(rms_norm, inputs, dtype, eps=1e-5, prenorm=prenorm, residual_in_fp32=True)
    assert_close(*outs, dtype)
    if prenorm:
        assert outs[0][1].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group_size", [None, 64], ids=["whole", "groups"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm-gate", "gate-norm"])
def test_rms_norm_gated(group_size, norm_before_gate, dtype):
    g = torch.Generator(device=CUDA).manual_seed(5)
    shape = (2, 33, 256)
    inputs = {
        "x": torch.randn(*shape, generator=g, device=CUDA).to(dtype),
        "weight": torch.randn(256, generator=g, device=CUDA),
        "z": torch.randn(*shape, generator=g, device=CUDA).to(dtype),
        "bias": None,
    }
    outs = run_both(rms_norm_gated, inputs, dtype, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    assert_close(*outs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group_size", [None, 64], ids=["whole", "groups"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm-gate", "gate-norm"])
def test_rms_norm_gated_inference_on_strided_views(group_size, norm_before_gate, dtype):
    """Without gradients the gated norm reads x and z in place as column slices of one wider projection (as
    Mamba-2 passes them) and writes every row (the allocator is poisoned), over more rows than one program."""
    g = torch.Generator(device=CUDA).manual_seed(6)
    projection = torch.randn(3, 700, 656, generator=g, device=CUDA).to(dtype)
    x, z = projection[..., 10:266], projection[..., 300:556]
    weight = torch.randn(256, generator=g, device=CUDA)
    bias = torch.randn(256, generator=g, device=CUDA)
    poison_allocator()
    with torch.no_grad():
        fast = rms_norm_gated(x, weight, z, 1e-5, group_size, norm_before_gate, bias, backend="triton")
    exact = rms_norm_gated(
        x.double(), weight.double(), z.double(), 1e-5, group_size, norm_before_gate, bias.double(), backend="reference"
    )
    assert fast.dtype == dtype
    assert rel_error(fast, exact) < TOLERANCE[dtype]


def exact_pair(fn, args: dict, **kwargs):
    """``fn`` on the kernels (no gradients: the step kernels are forward-only) and in float64."""
    poison_allocator()
    with torch.no_grad():
        fast = fn(**args, **kwargs, backend="triton")
    exact = fn(**{k: None if v is None else v.double() for k, v in args.items()}, **kwargs, backend="reference")
    return fast, exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [0, 4], ids=["ungrouped", "grouped"])
def test_selective_state_update(groups, dtype):
    g = torch.Generator(device=CUDA).manual_seed(8)
    batch, dim, n = 3, 96, 16
    bc = (batch, n) if groups == 0 else (batch, groups, n)
    args = {
        "state": torch.randn(batch, dim, n, generator=g, device=CUDA),
        "x": torch.randn(batch, dim, generator=g, device=CUDA).to(dtype),
        "dt": torch.randn(batch, dim, generator=g, device=CUDA).to(dtype),
        "A": -torch.rand(dim, n, generator=g, device=CUDA),
        "B": torch.randn(*bc, generator=g, device=CUDA).to(dtype),
        "C": torch.randn(*bc, generator=g, device=CUDA).to(dtype),
        "D": torch.randn(dim, generator=g, device=CUDA),
        "z": torch.randn(batch, dim, generator=g, device=CUDA).to(dtype),
        "dt_bias": torch.randn(dim, generator=g, device=CUDA),
    }
    (y, state), (y_ref, state_ref) = exact_pair(selective_state_update, args, dt_softplus=True)
    assert rel_error(y, y_ref) < TOLERANCE[dtype]
    assert rel_error(state, state_ref) < 1e-5


@pytest.mark.parametrize("D_shape", ["heads", "heads-headdim", "none"])
@pytest.mark.parametrize("dt_limit", [(0.0, float("inf")), (0.01, 0.5)], ids=["no-limit", "limit"])
def test_ssd_state_update(D_shape, dt_limit):
    g = torch.Generator(device=CUDA).manual_seed(9)
    batch, heads, headdim, n, groups = 2, 8, 64, 128, 2
    D = {
        "heads": torch.randn(heads, generator=g, device=CUDA),
        "heads-headdim": torch.randn(heads, headdim, generator=g, device=CUDA),
        "none": None,
    }[D_shape]
    args = {
        "state": torch.randn(batch, heads, headdim, n, generator=g, device=CUDA),
        "x": torch.randn(batch, heads, headdim, generator=g, device=CUDA),
        "dt": torch.randn(batch, heads, generator=g, device=CUDA),
        "A": -torch.rand(heads, generator=g, device=CUDA) * 4,
        "B": torch.randn(batch, groups, n, generator=g, device=CUDA),
        "C": torch.randn(batch, groups, n, generator=g, device=CUDA),
        "D": D,
        "z": torch.randn(batch, heads, headdim, generator=g, device=CUDA),
        "dt_bias": torch.randn(heads, generator=g, device=CUDA),
    }
    (y, state), (y_ref, state_ref) = exact_pair(ssd_state_update, args, dt_softplus=True, dt_limit=dt_limit)
    assert rel_error(y, y_ref) < 1e-5
    assert rel_error(state, state_ref) < 1e-5


def test_step_kernels_keep_gradients():
    """With gradients required the step ops run the differentiable reference."""
    x = torch.randn(2, 8, device=CUDA, requires_grad=True)
    state = torch.randn(2, 8, 4, device=CUDA)
    y, _ = causal_conv1d_update(x, state, torch.randn(8, 4, device=CUDA), None, "silu", backend="triton")
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_auto_dispatch_picks_triton_on_cuda(monkeypatch):
    from videostate.ssm.kernels import selective_scan_triton

    monkeypatch.delenv("VIDEOSTATE_DISABLE_FUSED", raising=False)
    monkeypatch.delenv("VIDEOMAMBA_DISABLE_FUSED", raising=False)
    assert dispatch.resolve("selective_scan", "auto", CUDA) is selective_scan_triton
    monkeypatch.setenv("VIDEOMAMBA_DISABLE_FUSED", "1")
    assert dispatch.resolve("selective_scan", "auto", CUDA) is not selective_scan_triton
    ops = ("selective_scan_bidirectional", "selective_state_update", "ssd_state_update", "causal_conv1d",
           "causal_conv1d_update", "rms_norm", "rms_norm_gated")  # fmt: skip
    for op in ops:
        assert "triton" in dispatch.backends(op)


@pytest.mark.parametrize("bimamba", [False, True], ids=["mamba", "bimamba"])
def test_mamba_fast_path_equals_reference(bimamba):
    torch.manual_seed(6)
    model = Mamba(64, d_state=16, bimamba=bimamba).to(CUDA)
    reference = Mamba(64, d_state=16, bimamba=bimamba, use_fast_path=False).to(CUDA)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 91, 64, device=CUDA)
    poison_allocator()
    check_mamba_against_reference(model, reference.double(), x)


def test_mamba_stream_equals_offline_on_kernels():
    torch.manual_seed(7)
    model = Mamba(32, d_state=16).to(CUDA)
    x = torch.randn(2, 60, 32, device=CUDA)
    with torch.no_grad():
        offline = model(x)
        state, pieces = model.init_state(2), []
        for part in x.split([7, 1, 40, 12], dim=1):
            piece, state = model(part, state=state)
            pieces.append(piece)
        state, steps = model.init_state(2), []
        for t in range(x.shape[1]):
            step, state = model.step(x[:, t], state)
            steps.append(step)
    assert rel_error(torch.cat(pieces, dim=1), offline) < 1e-5
    assert rel_error(torch.stack(steps, dim=1), offline) < 1e-5
