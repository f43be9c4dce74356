import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.ssm.oracles import chunk_bounds, selective_scan_loop
from videostate.ssm import selective_scan, selective_state_update
from videostate.ssm.selective_scan import (
    CHUNK_ELEMENTS,
    default_chunk_size,
    recur_in_place,
    scan_within_chunk,
    selective_scan_reference,
)


def make_inputs(batch=2, dim=6, length=37, n=5, groups=None, dtype=torch.float64, seed=0, full=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    bc_shape = (batch, groups, n, length) if groups else (batch, n, length)
    inputs = {
        "u": rnd(batch, dim, length),
        "delta": (torch.rand(batch, dim, length, generator=g) * 0.5).to(dtype),
        "A": -(torch.rand(dim, n, generator=g) * 2 + 0.1).to(dtype),
        "B": rnd(*bc_shape),
        "C": rnd(*bc_shape),
    }
    if full:
        inputs.update(
            D=rnd(dim),
            z=rnd(batch, dim, length),
            delta_bias=rnd(dim, scale=0.5),
            delta_softplus=True,
            initial_state=rnd(batch, dim, n),
        )
    return inputs


@pytest.mark.parametrize("groups", [None, 1, 2, 3])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("differentiable", [False, True])
def test_matches_loop_oracle_float64(groups, full, differentiable):
    inputs = make_inputs(groups=groups, full=full, seed=3)
    inputs["u"].requires_grad_(differentiable)
    y, last = selective_scan(**inputs, return_final_state=True)
    y_ref, last_ref = selective_scan_loop(**inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16, 64])
@pytest.mark.parametrize("differentiable", [False, True])
def test_internal_chunk_size_does_not_change_result(chunk_size, differentiable):
    inputs = make_inputs(length=50, seed=4)
    inputs["delta"].requires_grad_(differentiable)
    y_ref, last_ref = selective_scan_loop(**inputs)
    y, last = selective_scan_reference(**inputs, return_final_state=True, chunk_size=chunk_size)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


def test_within_chunk_scan_is_the_recurrence():
    g = torch.Generator().manual_seed(5)
    decay = torch.rand(11, 3, 4, generator=g, dtype=torch.float64)
    inputs = torch.randn(11, 3, 4, generator=g, dtype=torch.float64)
    start = torch.randn(3, 4, generator=g, dtype=torch.float64)
    carry, h = scan_within_chunk(decay, inputs)
    in_place = recur_in_place(decay, inputs.clone(), start)
    state, prod, from_start = (
        torch.zeros(3, 4, dtype=torch.float64),
        torch.ones(3, 4, dtype=torch.float64),
        start,
    )
    for t in range(11):
        state = decay[t] * state + inputs[t]
        from_start = decay[t] * from_start + inputs[t]
        prod = prod * decay[t]
        torch.testing.assert_close(h[t], state, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(carry[t], prod, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(in_place[t], from_start, rtol=1e-12, atol=1e-12)


def test_float32_and_half_inputs_accumulate_in_float32():
    inputs = make_inputs(dtype=torch.float64, seed=6)
    y64, _ = selective_scan_loop(**inputs)
    y32 = selective_scan(**{k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()})
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)
    half = {
        k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else (v.float() if torch.is_tensor(v) else v)
        for k, v in inputs.items()
    }
    y16, last = selective_scan(**half, return_final_state=True)
    assert y16.dtype == torch.bfloat16 and last.dtype == torch.float32


def test_long_sequences_with_strong_decay_stay_finite():
    """Cumulative decay far below float32's range must not overflow (no exp of large positive sums)."""
    inputs = make_inputs(batch=1, dim=4, length=600, n=3, dtype=torch.float32, full=False, seed=7)
    inputs["delta"] = torch.full_like(inputs["delta"], 5.0)
    inputs["A"] = torch.full_like(inputs["A"], -8.0)
    y = selective_scan_reference(**inputs, chunk_size=64)
    y_ref, _ = selective_scan_loop(**{k: v.double() for k, v in inputs.items()})
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("batch", "dim", "n"), [(1, 8, 4), (2, 384, 16), (2, 1536, 16), (64, 4096, 16)])
def test_default_chunk_size_is_the_largest_power_of_two_within_budget(batch, dim, n):
    size, per_step = default_chunk_size(batch, dim, n), batch * dim * n
    assert size in (4, 8, 16, 32, 64)
    assert size == 4 or size * per_step <= CHUNK_ELEMENTS
    assert size == 64 or 2 * size * per_step > CHUNK_ELEMENTS


@given(cuts=st.lists(st.integers(1, 40), min_size=1, max_size=6), grouped=st.booleans())
def test_chunk_invariance_float64(cuts, grouped):
    inputs = make_inputs(length=41, groups=2 if grouped else None, seed=8)
    y_full, last_full = selective_scan(**inputs, return_final_state=True)
    state, pieces = inputs["initial_state"], []
    for start, end in chunk_bounds(41, cuts):
        part = {k: (v[..., start:end] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
        part["initial_state"] = state
        y, state = selective_scan(**part, return_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, -1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, last_full, rtol=1e-10, atol=1e-10)


@given(cuts=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_chunk_invariance_float32(cuts):
    inputs = {k: v.float() if torch.is_tensor(v) else v for k, v in make_inputs(length=41, seed=9).items()}
    y_full = selective_scan(**inputs)
    state, pieces = inputs["initial_state"], []
    for start, end in chunk_bounds(41, cuts):
        part = {k: (v[..., start:end] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
        part["initial_state"] = state
        y, state = selective_scan(**part, return_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, -1), y_full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_steps_equal_the_scan(groups):
    inputs = make_inputs(length=9, groups=groups, seed=10)
    y_full, last_full = selective_scan(**inputs, return_final_state=True)
    state = inputs["initial_state"]
    for t in range(9):
        y_t, state = selective_state_update(
            state,
            inputs["u"][..., t],
            inputs["delta"][..., t],
            inputs["A"],
            inputs["B"][..., t],
            inputs["C"][..., t],
            inputs["D"],
            inputs["z"][..., t],
            inputs["delta_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(y_t, y_full[..., t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, last_full, rtol=1e-10, atol=1e-10)


def test_gradcheck_through_all_inputs_and_initial_state():
    inputs = make_inputs(batch=1, dim=3, length=7, n=2, seed=11)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    tensors = [inputs[k].requires_grad_() for k in names]

    def fn(*args):
        y, last = selective_scan_reference(
            **dict(zip(names, args, strict=True)), delta_softplus=True, return_final_state=True, chunk_size=4
        )
        return y, last

    assert torch.autograd.gradcheck(fn, tensors)


def test_gradcheck_grouped_state_update():
    g = torch.Generator().manual_seed(12)
    args = [
        torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
        for s in [(2, 4, 3), (2, 4), (2, 4), (4, 3), (2, 2, 3), (2, 2, 3)]
    ]
    assert torch.autograd.gradcheck(lambda *a: selective_state_update(*a, dt_softplus=True), args)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"u": torch.randn(2, 6)}, ValueError, r"u must have shape \(batch, dim, L\)"),
        (
            {"delta": torch.rand(2, 6, 36)},
            ValueError,
            r"delta must have shape \(batch, dim, L\)=\(2, 6, 37\); got \(2, 6, 36\)",
        ),
        ({"A": torch.randn(5, 5)}, ValueError, r"A must have shape \(dim, N\)=\(6, \*\); got \(5, 5\)"),
        (
            {"B": torch.randn(2, 4, 37)},
            ValueError,
            r"B must have shape \(batch, N, L\) or \(batch, G, N, L\)",
        ),
        (
            {"B": torch.randn(2, 4, 5, 37), "C": torch.randn(2, 4, 5, 37)},
            ValueError,
            "G=4 groups, which must divide dim=6",
        ),
        (
            {"initial_state": torch.randn(2, 6, 4)},
            ValueError,
            r"initial_state must have shape \(batch, dim, N\)",
        ),
        (
            {"u": torch.randn(2, 6, 37).long()},
            TypeError,
            "u must be a floating-point tensor; got dtype torch.int64",
        ),
        ({"u": torch.randn(2, 6, 0), "delta": torch.rand(2, 6, 0)}, ValueError, "at least one step"),
        ({"D": [1.0] * 6}, TypeError, "D must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, message):
    inputs = make_inputs(dtype=torch.float32, seed=13)
    inputs.update(change)
    with pytest.raises(error, match=message):
        selective_scan(**inputs)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match=r"backend for selective_scan must be 'auto' or one of \['reference'"):
        selective_scan(**make_inputs(seed=14), backend="nope")


def test_inputs_on_different_devices_are_an_error():
    inputs = make_inputs(dtype=torch.float32, seed=15)
    inputs["B"] = inputs["B"].to("meta")
    with pytest.raises(ValueError, match=r"all tensors must be on one device; got u on cpu, .*B on meta"):
        selective_scan(**inputs)
