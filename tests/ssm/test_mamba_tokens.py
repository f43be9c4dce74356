"""Mamba's token-major inference path (:mod:`videostate.ssm.kernels.mamba_tokens`) against the written formulas.

The oracle is the plain-loop convolution and scan of :mod:`tests.ssm.oracles` in float64, from the input
projection's rows through ``x_proj`` and ``dt_proj``. On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1``
and no GPU the kernel tests run on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, MARKS, RUNS
from tests.ssm.oracles import causal_conv_loop, selective_scan_loop
from videostate.ssm import Mamba

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import mamba_tokens

# Interpreted bfloat16 matrix products are wrong in Triton's interpreter; the path's products are PyTorch's, but
# bfloat16 runs on the GPU only to keep the interpreter's runs short.
DTYPES = [torch.float32] + ([] if INTERPRET else [torch.bfloat16, torch.float16])
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
# (batch, L, d_model, d_state): L of one step, odd, a power of two, and the depth model's 32 frames; d_inner of at
# most FOLD_DT_MAX_INNER (dt_proj folded into x_proj) and one wider.
SHAPES = [(3, 1, 16, 16), (2, 7, 24, 8), (4, 16, 32, 16), (2, 32, 48, 16), (1, 5, 200, 16)]


def make_mamba(d_model, d_state, seed=0):
    torch.manual_seed(seed)
    mamba = Mamba(d_model, d_state=d_state).double()
    with torch.no_grad():  # away from the initialisation's constants: every parameter takes part
        for p in mamba.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return mamba


def formula(mamba, xz, conv_state=None, ssm_state=None):
    """``y (batch, L, d_inner)``, the next conv state and the final scan state, from loops in float64."""
    d, n, r = mamba.d_inner, mamba.d_state, mamba.dt_rank
    x, z = xz.double().mT.split(d, dim=1)
    u, next_conv = causal_conv_loop(x, mamba.conv1d.weight[:, 0], mamba.conv1d.bias, "silu", conv_state)
    dt, B, C = (u.mT @ mamba.x_proj.weight.T).split([r, n, n], dim=-1)
    delta = (dt @ mamba.dt_proj.weight.T).mT
    A = -torch.exp(mamba.A_log)
    y, h = selective_scan_loop(u, delta, A, B.mT, C.mT, mamba.D, z, mamba.dt_proj.bias, True, ssm_state)
    return y.mT, next_conv, h


def run_kernel(mamba, xz, dtype, conv_state=None, ssm_state=None, final_state=True):
    fast = mamba.to(device=DEVICE, dtype=dtype)  # the scan takes A_log, D and the dt bias in the model's dtype
    return mamba_tokens.mamba_scan_tokens(
        xz.to(DEVICE, dtype),
        fast.conv1d.weight[:, 0],
        fast.conv1d.bias,
        fast.x_proj.weight,
        fast.dt_proj.weight,
        fast.dt_proj.bias,
        fast.A_log,
        fast.D,
        None if conv_state is None else conv_state.to(DEVICE, dtype),
        None if ssm_state is None else ssm_state.to(DEVICE, torch.float32),
        final_state=final_state,
    )


def rel_error(actual, expected):
    assert actual.shape == expected.shape and torch.isfinite(actual).all()
    return ((actual.cpu().double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_path_matches_formula(shape, dtype, carried):
    batch, length, d_model, d_state = shape
    mamba = make_mamba(d_model, d_state)
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(batch, length, 2 * mamba.d_inner, generator=g, dtype=torch.float64)
    conv_state = ssm_state = None
    if carried:  # a stream's state: inputs before the chunk and a scan state
        conv_state = torch.randn(batch, mamba.d_inner, mamba.d_conv, generator=g, dtype=torch.float64)
        ssm_state = torch.randn(batch, mamba.d_inner, d_state, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_exact, conv_exact, h_exact = formula(mamba, xz, conv_state, ssm_state)
        # the oracle takes the weights and inputs as the kernels do: rounded to the compute dtype
        y, next_conv, h = run_kernel(mamba, xz, dtype, conv_state, ssm_state)
    assert y.shape == (batch, length, mamba.d_inner) and y.dtype == dtype and y.is_contiguous()
    assert rel_error(y, y_exact) < TOLERANCE[dtype]
    assert rel_error(h, h_exact) < TOLERANCE[dtype]
    if carried:
        assert next_conv.dtype == dtype and next_conv.is_contiguous()  # holds no view of the projection
        assert rel_error(next_conv, conv_exact) < TOLERANCE[dtype]
    else:
        assert next_conv is None


@pytest.fixture
def scan_launches(monkeypatch):
    """The constexprs of every launch of the token-major scan kernel; the kernel still runs."""
    seen = []
    kernel = mamba_tokens.scan_tokens_kernel

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(kwargs) or kernel[grid](*args, **kwargs)

    monkeypatch.setattr(mamba_tokens, "scan_tokens_kernel", Spy())
    return seen


# (batch, L, d_model, bfloat16 tolerance): the depth model's finest scale of DA2-S (dt_rank 3, d_inner 96: dt_proj
# folded into x_proj, B and C after the 96 delta columns) and a wider layer (dt_rank 13, d_inner 400: x_proj's rows
# led by 3 zero rows), whose bfloat16 roundings of u, dt and delta compound to about 2% (float32: 5e-7, in
# test_path_matches_formula).
PACKED_CASES = [(2, 32, 48, TOLERANCE[torch.bfloat16]), (1, 9, 200, 3e-2)]


@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda case: str(case[:3]))
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_path_reads_bfloat16_states_packed(scan_launches, carried, case):
    """In bfloat16 the product's rows put B and C at multiples of 8 elements, with ``dt_proj`` folded into
    ``x_proj`` or not, and the scan reads them four states to a 64-bit word (``PACKED``), equal to the float64
    formula. The fresh (offline) run asks for no final state: the kernel does not write one (``STORE_HT``)."""
    batch, length, d_model, tolerance = case
    d_state = 16
    mamba = make_mamba(d_model, d_state, seed=3).bfloat16().double()  # weights the kernels hold exactly
    folded = mamba_tokens.folds_dt_proj(mamba.d_inner)
    assert folded == (d_model == 48)
    if not folded:
        assert mamba_tokens.aligned_lead(mamba.dt_rank, d_state) == 3
    g = torch.Generator().manual_seed(4)
    xz = torch.randn(batch, length, 2 * mamba.d_inner, generator=g, dtype=torch.float64).bfloat16().double()
    ssm_state = torch.randn(batch, mamba.d_inner, d_state, generator=g, dtype=torch.float64) if carried else None
    with torch.no_grad():
        y_exact, _, h_exact = formula(mamba, xz, ssm_state=ssm_state)
        y, _, h = run_kernel(mamba, xz, torch.bfloat16, ssm_state=ssm_state, final_state=carried)
    assert [(launch["PACKED"], launch["STORE_HT"]) for launch in scan_launches] == [(True, carried)]
    assert rel_error(y, y_exact) < tolerance
    if carried:
        assert rel_error(h, h_exact) < tolerance
    else:
        assert h is None


@pytest.mark.parametrize("d_model", [48, 200])
def test_delta_and_states_fold_dt_proj_up_to_the_rule(d_model):
    """Up to ``FOLD_DT_MAX_INNER`` inner channels delta, B and C are views of one product's rows (delta first, B at a
    multiple of 8); wider layers keep x_proj's rows and a separate dt_proj product. Both equal
    ``dt_proj(x_proj(u)[:dt_rank])`` and ``x_proj``'s B and C in float64 to float32 rounding."""
    mamba = make_mamba(d_model, 16, seed=5)
    g = torch.Generator().manual_seed(6)
    u = torch.randn(2, 7, mamba.d_inner, generator=g, dtype=torch.float64)
    dt, B_exact, C_exact = (u @ mamba.x_proj.weight.detach().T).split([mamba.dt_rank, 16, 16], dim=-1)
    delta_exact = dt @ mamba.dt_proj.weight.detach().T
    with torch.no_grad():
        delta, B, C = mamba_tokens.delta_and_states(
            u.float().to(DEVICE), mamba.x_proj.weight.float().to(DEVICE), mamba.dt_proj.weight.float().to(DEVICE), 16
        )
    folded = mamba_tokens.folds_dt_proj(mamba.d_inner)
    assert folded == (d_model == 48)
    width = mamba.d_inner + 32 if folded else 8 * -(-(mamba.dt_rank + 32) // 8)  # one row of the product
    assert B.stride(1) == C.stride(1) == width and B.storage_offset() % 8 == 0
    assert delta.untyped_storage().data_ptr() == B.untyped_storage().data_ptr() if folded else delta.is_contiguous()
    for actual, expected in ((delta, delta_exact), (B, B_exact), (C, C_exact)):
        assert rel_error(actual, expected) < 1e-5


def test_packed_state_rule():
    """Packed reads need bfloat16, contiguous states and 8-byte aligned rows; a view that breaks any is read per
    state."""
    rows = torch.randn(3, 32, 40, device=DEVICE, dtype=torch.bfloat16)  # (batch, L, width) token-major rows
    odd_rows = torch.randn(3, 32, 38, device=DEVICE, dtype=torch.bfloat16)
    B = rows[..., 8:24]
    assert mamba_tokens._packed(B, rows[..., 24:40])
    assert not mamba_tokens._packed(B, rows[..., 6:22])  # a row starts 12 bytes in
    assert not mamba_tokens._packed(B.half(), B.half())
    assert not mamba_tokens._packed(B, odd_rows[..., 8:24])  # rows 76 bytes apart
    assert not mamba_tokens._packed(B[..., :6], B[..., :6])  # N not a multiple of 4
    assert mamba_tokens.aligned_lead(24, 16) == 0 and mamba_tokens.aligned_lead(6, 16) == 2
    assert mamba_tokens.aligned_lead(3, 4) == 0  # B and C cannot both be aligned: no lead


def test_scan_checks_layouts():
    u = torch.randn(2, 5, 8, device=DEVICE)
    B = torch.randn(2, 5, 4, device=DEVICE)
    A_log, D = torch.randn(8, 4, device=DEVICE), torch.randn(8, device=DEVICE)
    with pytest.raises(ValueError, match=r"z must have shape \(2, 5, 8\) with channels at stride 1"):
        mamba_tokens.scan_tokens(u, u, u.mT.contiguous().mT, B, B, A_log, D, D)
    with pytest.raises(ValueError, match=r"B, C \(2, 5, 4\)"):
        mamba_tokens.scan_tokens(u, u, u, B[:, :4], B, A_log, D, D)


def test_path_checks_the_projection_width():
    mamba = make_mamba(16, 8)
    with pytest.raises(ValueError, match=r"xz must have shape \(batch, L, 64\)"):
        run_kernel(mamba, torch.randn(2, 5, 63, dtype=torch.float64), torch.float32)


def test_path_covers_short_sequences_only():
    assert mamba_tokens.applies(32) and mamba_tokens.applies(1)
    assert not mamba_tokens.applies(4096)


@pytest.mark.skipif(INTERPRET, reason="Mamba takes the path on CUDA tensors only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mamba_takes_the_path_for_inference_and_streams(monkeypatch, dtype):
    """Without gradients on CUDA a short-sequence Mamba runs the path (a spy counts the calls), equal to the
    float64 reference; chunks with a carried state equal the whole clip; with gradients it keeps autograd's ops."""
    calls = []
    real = mamba_tokens.mamba_scan_tokens
    monkeypatch.setattr(mamba_tokens, "mamba_scan_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    mamba = make_mamba(32, 16)
    x = torch.randn(6, 24, 32, dtype=torch.float64)
    with torch.no_grad():
        exact = mamba(x)
        fast = mamba.to(DEVICE, dtype)
        offline = fast(x.to(DEVICE, dtype))
        state = fast.init_state(6, device=DEVICE)
        chunks = []
        for start, end in [(0, 5), (5, 6), (6, 24)]:
            y, state = fast(x[:, start:end].to(DEVICE, dtype), state)
            chunks.append(y)
    assert len(calls) == 4
    assert rel_error(offline, exact) < TOLERANCE[dtype]
    assert rel_error(torch.cat(chunks, dim=1), exact) < TOLERANCE[dtype]
    fast(x.to(DEVICE, dtype).requires_grad_()).sum().backward()
    assert len(calls) == 4
