import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import videostate.ssm.ssd as ssd_module
from tests.ssm.oracles import chunk_bounds, ssd_loop
from videostate.ssm import ssd_scan, ssd_state_update
from videostate.ssm.ssd import segment_sums

SEQ = ("x", "dt", "B", "C", "z")


def make_inputs(
    batch=2, length=29, heads=4, headdim=3, groups=2, n=5, dtype=torch.float64, seed=0, D_per_channel=False
):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    return {
        "x": rnd(batch, length, heads, headdim),
        "dt": rnd(batch, length, heads, scale=0.5),
        "A": -(torch.rand(heads, generator=g) * 3 + 0.2).to(dtype),
        "B": rnd(batch, length, groups, n),
        "C": rnd(batch, length, groups, n),
        "D": rnd(heads, headdim) if D_per_channel else rnd(heads),
        "z": rnd(batch, length, heads, headdim),
        "dt_bias": rnd(heads, scale=0.5),
        "initial_states": rnd(batch, heads, headdim, n),
    }


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("D_per_channel", [False, True])
def test_matches_loop_oracle_float64(chunk_size, groups, D_per_channel):
    inputs = make_inputs(groups=groups, D_per_channel=D_per_channel, seed=1)
    y, last = ssd_scan(**inputs, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    y_ref, last_ref = ssd_loop(**inputs, dt_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks_per_block", [1, 2, 3])
def test_blocks_of_chunks_match_loop_oracle_float64(monkeypatch, chunks_per_block):
    """The reference solves blocks of chunks at once; blocks of 1, 2 and 3 chunks (the last one partial)
    give the loop's outputs, final states and gradients."""
    monkeypatch.setattr(ssd_module, "CHUNK_BLOCK_ELEMENTS", chunks_per_block * 2 * 4 * 4 * 4)
    inputs = {k: v.requires_grad_() for k, v in make_inputs(seed=7).items()}
    y, last = ssd_scan(**inputs, chunk_size=4, dt_softplus=True, return_final_states=True, backend="reference")
    y_ref, last_ref = ssd_loop(**inputs, dt_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    cot_y, cot_last = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * cot_y).sum() + (last * cot_last).sum(), list(inputs.values()))
    grads_ref = torch.autograd.grad((y_ref * cot_y).sum() + (last_ref * cot_last).sum(), list(inputs.values()))
    for name, g, g_ref in zip(inputs, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10, msg=name)


def test_dt_limit_and_no_optional_inputs():
    inputs = make_inputs(seed=2)
    for key in ("D", "z", "dt_bias", "initial_states"):
        inputs.pop(key)
    inputs["dt"] = inputs["dt"].abs()
    y = ssd_scan(**inputs, chunk_size=8, dt_limit=(0.05, 0.3))
    y_ref, _ = ssd_loop(**inputs, dt_limit=(0.05, 0.3))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


def test_segment_sums_formula():
    log_decay = torch.randn(2, 6, dtype=torch.float64)
    out = segment_sums(log_decay)
    for i in range(6):
        for j in range(6):
            expected = (
                log_decay[:, j + 1 : i + 1].sum(-1) if i >= j else torch.full((2,), -math.inf, dtype=torch.float64)
            )
            torch.testing.assert_close(out[:, i, j], expected)


def test_strong_decay_stays_finite_in_float32():
    inputs = {k: v.float() for k, v in make_inputs(length=300, seed=3).items()}
    inputs["dt"] = torch.full_like(inputs["dt"], 4.0)
    inputs["A"] = torch.full_like(inputs["A"], -10.0)
    y = ssd_scan(**inputs, chunk_size=128)
    y_ref, _ = ssd_loop(**{k: v.double() for k, v in inputs.items()})
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)


def _run_in_chunks(inputs, cuts, length, **kw):
    state, pieces = inputs["initial_states"], []
    for start, end in chunk_bounds(length, cuts):
        part = {k: (v[:, start:end] if k in SEQ else v) for k, v in inputs.items()}
        part["initial_states"] = state
        y, state = ssd_scan(**part, return_final_states=True, **kw)
        pieces.append(y)
    return torch.cat(pieces, 1), state


@given(cuts=st.lists(st.integers(1, 28), min_size=1, max_size=5), chunk_size=st.sampled_from([4, 7, 16]))
def test_chunk_invariance_float64(cuts, chunk_size):
    inputs = make_inputs(seed=4)
    y_full, last_full = ssd_scan(**inputs, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    y, last = _run_in_chunks(inputs, cuts, 29, chunk_size=chunk_size, dt_softplus=True)
    torch.testing.assert_close(y, y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_full, rtol=1e-10, atol=1e-10)


@given(cuts=st.lists(st.integers(1, 28), min_size=1, max_size=5))
def test_chunk_invariance_float32(cuts):
    inputs = {k: v.float() for k, v in make_inputs(seed=5).items()}
    y_full = ssd_scan(**inputs, chunk_size=8, dt_softplus=True)
    y, _ = _run_in_chunks(inputs, cuts, 29, chunk_size=8, dt_softplus=True)
    torch.testing.assert_close(y, y_full, rtol=1e-5, atol=1e-5)


def test_state_update_steps_equal_the_scan():
    inputs = make_inputs(length=7, seed=6, D_per_channel=True)
    y_full, last_full = ssd_scan(**inputs, chunk_size=4, dt_softplus=True, return_final_states=True)
    state = inputs["initial_states"]
    for t in range(7):
        y_t, state = ssd_state_update(
            state,
            inputs["x"][:, t],
            inputs["dt"][:, t],
            inputs["A"],
            inputs["B"][:, t],
            inputs["C"][:, t],
            inputs["D"],
            inputs["z"][:, t],
            inputs["dt_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(y_t, y_full[:, t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, last_full, rtol=1e-10, atol=1e-10)


def test_gradcheck_including_initial_states():
    inputs = make_inputs(batch=1, length=6, heads=2, headdim=2, groups=1, n=2, seed=7)
    names = list(inputs)
    tensors = [inputs[k].requires_grad_() for k in names]

    def fn(*args):
        return ssd_scan(**dict(zip(names, args, strict=True)), chunk_size=4, dt_softplus=True, return_final_states=True)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": torch.randn(2, 29, 4)}, r"x must have shape \(batch, L, heads, headdim\)"),
        (
            {"dt": torch.randn(2, 29, 3)},
            r"dt must have shape \(batch, L, heads\)=\(2, 29, 4\); got \(2, 29, 3\)",
        ),
        (
            {"B": torch.randn(2, 29, 3, 5), "C": torch.randn(2, 29, 3, 5)},
            "3 groups, which must divide heads=4",
        ),
        (
            {"D": torch.randn(3)},
            r"D must have shape \(heads,\)=\(4,\) or \(heads, headdim\)=\(4, 3\); got \(3,\)",
        ),
        (
            {"initial_states": torch.randn(2, 4, 3, 6)},
            r"initial_states must have shape \(batch, heads, headdim, N\)",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = {k: v.float() for k, v in make_inputs(seed=8).items()}
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        ssd_scan(**inputs)
