import pytest
import torch

from tests.training.tiny import DIM, tiny_model
from videostate.training import truncated_bptt


def _data(seed=0, batch=2, length=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, DIM, generator=g, dtype=torch.float64)
    y = torch.randn(batch, length, DIM, generator=g, dtype=torch.float64)
    return x, y


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _loss_fn(y):
    return lambda out, span: (out - y[:, span]).pow(2).mean()


def test_one_chunk_is_full_bptt():
    x, y = _data()
    model = tiny_model(dtype=torch.float64)
    full = (model(x) - y).pow(2).mean()
    full.backward()
    expected = _grads(model)
    model.zero_grad()
    result = truncated_bptt(model, x, _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=8)
    assert result.loss.item() == pytest.approx(full.item(), rel=1e-12)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [3, 1])
def test_chunks_match_a_plain_loop_with_detached_state(chunk):
    x, y = _data(1)
    model = tiny_model(dtype=torch.float64)
    # oracle: one graph, the state detached by hand at every chunk boundary, one backward of the sum
    state, total = model.init_state(2, dtype=torch.float64), 0.0
    for start in range(0, 8, chunk):
        stop = min(start + chunk, 8)
        out, state = model(x[:, start:stop], state)
        total = total + (out - y[:, start:stop]).pow(2).mean() * (stop - start) / 8
        state = state.detach()
    total.backward()
    expected = _grads(model)
    model.zero_grad()
    calls = []

    def backward(loss):
        calls.append(loss.item())
        loss.backward()

    result = truncated_bptt(
        model, x, _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=chunk, backward=backward
    )
    assert len(calls) == -(-8 // chunk)
    assert result.loss.item() == pytest.approx(total.item(), rel=1e-12)
    assert all(t.grad_fn is None and not t.requires_grad for t in result.state.tensors().values())
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-10, atol=1e-12)


def test_truncation_changes_the_gradient_and_final_state_matches_offline():
    x, y = _data(2)
    model = tiny_model(dtype=torch.float64)
    truncated_bptt(model, x, _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=8)
    full = _grads(model)
    model.zero_grad()
    result = truncated_bptt(model, x, _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=3)
    diff = max((g - full[n]).abs().max().item() for n, g in _grads(model).items())
    assert diff > 1e-6  # gradients through earlier chunks are cut
    _, offline_state = model(x, model.init_state(2, dtype=torch.float64))
    for name, t in offline_state.tensors().items():
        torch.testing.assert_close(result.state.tensors()[name], t.detach(), rtol=1e-9, atol=1e-10)


def test_bptt_rejects_bad_arguments():
    x, y = _data()
    model = tiny_model(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"chunk_size must be >= 1"):
        truncated_bptt(model, x, _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=0)
    with pytest.raises(ValueError, match=r"at least one step"):
        truncated_bptt(model, x[:, :0], _loss_fn(y), model.init_state(2, dtype=torch.float64), chunk_size=2)
