import pytest
import torch

from tests.training.tiny import DIM, tiny_model
from videostate.ssm import Block
from videostate.training import disable_gradient_checkpointing, enable_gradient_checkpointing


def test_checkpointed_blocks_give_the_same_gradients_and_recompute():
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    model = tiny_model(dtype=torch.float64)
    model(x).pow(2).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    keys = list(model.state_dict())
    assert enable_gradient_checkpointing(model, Block) == 2
    assert enable_gradient_checkpointing(model, Block) == 2  # a second call does not wrap twice
    calls = []
    model.layers[0].mixer.register_forward_pre_hook(lambda *a: calls.append(1))
    model(x).pow(2).sum().backward()
    assert len(calls) == 2  # forward, then again during backward
    assert list(model.state_dict()) == keys
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-12, atol=1e-12)
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 1
    disable_gradient_checkpointing(model)
    calls.clear()
    model(x).sum().backward()
    assert len(calls) == 1


def test_no_matching_module_is_an_error():
    with pytest.raises(ValueError, match=r"no submodule of Linear"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), Block)
