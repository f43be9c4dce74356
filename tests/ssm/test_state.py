import gc

import pytest
import torch

from videostate.ssm import MambaStack, StackState


def make_stack():
    torch.manual_seed(0)
    return MambaStack(
        16, ["mamba", "mamba2"], mamba_cfg={"d_state": 4}, mamba2_cfg={"d_state": 8, "headdim": 8}
    ).double()


def seq(batch=3, length=12, seed=0):
    return torch.randn(batch, length, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_stack_chunks_and_steps_equal_offline():
    model, x = make_stack(), seq()
    offline = model(x)
    state, pieces = model.init_state(3), []
    for start, end in [(0, 5), (5, 6), (6, 12)]:
        y, state = model(x[:, start:end], state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), offline, rtol=1e-10, atol=1e-10)
    state, steps = model.init_state(3), []
    for t in range(12):
        y, state = model.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), offline, rtol=1e-10, atol=1e-10)


def test_reset_starts_a_new_stream_for_the_masked_rows_only():
    model, x, other = make_stack(), seq(seed=1), seq(seed=2)
    _, state = model(x[:, :6], model.init_state(3))
    state = state.reset(torch.tensor([False, True, False]))
    y, _ = model(other[:, 6:], state)
    torch.testing.assert_close(y[1], model(other[1:2, 6:])[0], rtol=1e-10, atol=1e-10)
    _, unreset = model(x[:, :6], model.init_state(3))
    y_keep, _ = model(other[:, 6:], unreset)
    torch.testing.assert_close(y[[0, 2]], y_keep[[0, 2]])


def test_index_select_keeps_and_reorders_streams():
    model, x = make_stack(), seq(seed=3)
    _, state = model(x[:, :7], model.init_state(3))
    full, _ = model(x[:, 7:], state)
    idx = torch.tensor([2, 0])
    part, _ = model(x[idx, 7:], state.index_select(idx))
    torch.testing.assert_close(part, full[idx])
    with pytest.raises(TypeError, match="batch_idx must be a 1-D long tensor"):
        state.index_select(torch.tensor([0.0]))


def test_state_dict_round_trip_resumes_the_stream(tmp_path):
    model, x = make_stack(), seq(seed=4)
    _, state = model(x[:, :5], model.init_state(3))
    names = set(state.state_dict())
    assert names == {"layers.0.conv_state", "layers.0.ssm_state", "layers.1.conv_state", "layers.1.ssm_state"}
    torch.save(state.state_dict(), tmp_path / "stream.pt")
    resumed = model.init_state(3)
    resumed.load_state_dict(torch.load(tmp_path / "stream.pt"))
    torch.testing.assert_close(model(x[:, 5:], resumed)[0], model(x[:, 5:], state)[0], rtol=0, atol=0)
    with pytest.raises(KeyError, match=r"missing keys \['layers.1.ssm_state'\]"):
        resumed.load_state_dict({k: v for k, v in state.state_dict().items() if k != "layers.1.ssm_state"})
    bad = state.state_dict() | {"layers.0.ssm_state": torch.zeros(3, 32, 5)}
    with pytest.raises(ValueError, match=r"layers.0.ssm_state must have shape \(3, 32, 4\); got \(3, 32, 5\)"):
        resumed.load_state_dict(bad)


def test_detach_to_and_batch_size():
    model, x = make_stack(), seq(seed=5).requires_grad_()
    _, state = model(x, model.init_state(3))
    assert all(t.requires_grad for t in state.tensors().values())
    detached = state.detach()
    assert not any(t.requires_grad for t in detached.tensors().values())
    assert detached.to(torch.float32).layers[0].ssm_state.dtype == torch.float32
    assert state.batch_size == 3
    with pytest.raises(ValueError, match=r"batch_mask must be a bool tensor of shape \(batch,\)=\(3,\)"):
        state.reset(torch.tensor([True, False]))


def test_stack_errors():
    model = make_stack()
    with pytest.raises(ValueError, match="state must be a StackState with 2 layers"):
        model(seq(), StackState([]))
    with pytest.raises(ValueError, match="mixers must be 'mamba' or 'mamba2'; got \\['lstm'\\]"):
        MambaStack(16, ["mamba", "lstm"])


def test_carried_states_own_compact_storage():
    """A stream's state must not pin the chunk's larger buffers (memory stays O(state))."""
    model, x = make_stack(), seq(length=40, seed=6)
    _, state = model(x, model.init_state(3))
    for name, tensor in state.tensors().items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name


def test_tensors_leaves_no_reference_cycle():
    """Listing a state's tensors must not tie them into garbage that only the cycle collector frees."""
    state = make_stack().init_state(2)
    gc.collect()
    gc.disable()
    try:
        names = state.tensors()
        assert len(names) == 4 and all(isinstance(t, torch.Tensor) for t in names.values())
        del names
        assert gc.collect() == 0
    finally:
        gc.enable()
