import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.ssm.oracles import causal_conv_loop, chunk_bounds
from videostate.ssm import causal_conv1d, causal_conv1d_update


def make_inputs(batch=2, dim=5, length=23, width=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, dim, length, generator=g, dtype=dtype),
        torch.randn(dim, width, generator=g, dtype=dtype),
        torch.randn(dim, generator=g, dtype=dtype),
        torch.randn(batch, dim, width, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_loop_oracle(activation, width, with_state):
    x, weight, bias, state = make_inputs(width=width, seed=1)
    history = state if with_state else None
    y, next_state = causal_conv1d(x, weight, bias, activation, conv_state=history, return_final_state=True)
    y_ref, next_ref = causal_conv_loop(x, weight, bias, activation, history)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(next_state, next_ref)


def test_zero_state_equals_padded_conv1d_as_in_mamba():
    x, weight, bias, _ = make_inputs(seed=2)
    conv = torch.nn.functional.conv1d(x, weight[:, None], bias, padding=3, groups=5)[..., :23]
    torch.testing.assert_close(causal_conv1d(x, weight, bias), conv)


def test_short_chunk_keeps_older_history_in_the_state():
    x, weight, bias, state = make_inputs(length=2, seed=3)
    _, next_state = causal_conv1d(x, weight, bias, conv_state=state)
    torch.testing.assert_close(next_state, torch.cat([state[..., 2:], x], -1))


@given(cuts=st.lists(st.integers(1, 22), min_size=1, max_size=6))
def test_chunk_invariance(cuts):
    x, weight, bias, _ = make_inputs(seed=4)
    y_full = causal_conv1d(x, weight, bias, "silu")
    state, pieces = torch.zeros(2, 5, 4, dtype=torch.float64), []
    for start, end in chunk_bounds(23, cuts):
        y, state = causal_conv1d(x[..., start:end], weight, bias, "silu", conv_state=state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, -1), y_full, rtol=1e-12, atol=1e-12)


def test_update_steps_equal_the_convolution():
    x, weight, bias, state = make_inputs(seed=5)
    y_full, last = causal_conv1d(x, weight, bias, "silu", conv_state=state)
    for t in range(23):
        y_t, state = causal_conv1d_update(x[..., t], state, weight, bias, "silu")
        torch.testing.assert_close(y_t, y_full[..., t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, last)


def test_gradcheck():
    x, weight, bias, state = (t.requires_grad_() for t in make_inputs(batch=1, dim=2, length=5, seed=6))
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a[:3], "silu", conv_state=a[3]), (x, weight, bias, state))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.randn(2, 5), torch.randn(5, 4)), {}, r"x must have shape \(batch, dim, L\)"),
        (
            (torch.randn(2, 5, 7), torch.randn(4, 4)),
            {},
            r"weight must have shape \(dim, width\)=\(5, \*\); got \(4, 4\)",
        ),
        ((torch.randn(2, 5, 7), torch.randn(5, 4)), {"activation": "relu"}, "activation must be one of"),
        (
            (torch.randn(2, 5, 7), torch.randn(5, 4)),
            {"conv_state": torch.randn(2, 5, 3)},
            r"conv_state must have shape \(batch, dim, width\)=\(2, 5, 4\); got \(2, 5, 3\)",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        causal_conv1d(*args, **kwargs)


def test_reverse_convolves_the_flipped_sequence_from_a_zero_state():
    x, weight, bias, state = make_inputs(seed=4)
    y, next_state = causal_conv1d(x, weight, bias, "silu", return_final_state=True, reverse=True)
    y_ref, next_ref = causal_conv_loop(x.flip(-1), weight, bias, "silu")
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(next_state, next_ref)
    with pytest.raises(ValueError, match="reversed convolution starts from a zero state"):
        causal_conv1d(x, weight, bias, conv_state=state, reverse=True)
