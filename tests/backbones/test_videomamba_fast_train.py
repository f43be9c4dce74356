"""``model.fast_train()``: the training pass with its forward and backward replayed from CUDA graphs. Off CUDA it is
the eager model; on the GPU its outputs, the gradients it leaves in ``.grad`` (accumulated over passes too) and the
weights after optimiser steps equal the eager model's, and random ops draw anew at every replay."""

import copy

import pytest
import torch

from tests.backbones.helpers import TINY, randomize, video
from videostate.backbones.videomamba import VideoMambaEncoder, VisionMamba

# without stochastic depth (the classifier's default rate is 0.1), so that two passes draw nothing at random
MODELS = pytest.mark.parametrize(
    "make",
    [VideoMambaEncoder, lambda **kw: VisionMamba(num_classes=5, **{"drop_path_rate": 0.0, **kw})],
    ids=["encoder", "classifier"],
)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def loss_of(outputs):
    """A loss that weights every output element differently (cotangents not all equal)."""
    return sum((out.float() * torch.linspace(-1, 2, out.numel(), device=out.device).view_as(out)).sum().square()
               for out in as_tuple(outputs))  # fmt: skip


def twins(device, dtype=torch.float32, make=VideoMambaEncoder, **kwargs):
    model = randomize(make(**TINY, **kwargs)).to(device, dtype).train()
    return model, copy.deepcopy(model)


def assert_same_grads(model, reference, tol):
    """Each gradient equal up to ``tol`` of its largest element: sums in atomic adds (the scan's B and C gradients)
    and cuDNN's weight gradients may add in another order from run to run."""
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol, atol=tol * want.grad.abs().max(), msg=name)


@MODELS
def test_fast_train_off_cuda_runs_the_model(make):
    model, reference = twins("cpu", torch.float64, make)
    train = model.fast_train()
    x = video(2, 4)
    got, want = train(x), reference(x)
    for a, b in zip(as_tuple(got), as_tuple(want), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loss_of(got).backward()
    loss_of(want).backward()
    assert_same_grads(model, reference, 0)
    assert not train.cuda_graph  # the recorded path is tested on the GPU


@pytest.mark.gpu
@MODELS
def test_fast_train_gradients_equal_the_eager_ones(make, monkeypatch):
    """Two clips' gradients accumulated in ``.grad``, then a clip of another shape (a new recording): outputs (the
    encoder's tokens and pooled features, the classifier's logits) and gradients equal the eager model's (float32,
    TF32 off)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, reference = twins("cuda", make=make)
    train = model.fast_train()
    clips = [video(2, 4, seed=s, dtype=torch.float32).cuda() for s in (1, 2)]
    for clip in clips:
        got, want = as_tuple(train(clip)), as_tuple(reference(clip))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        loss_of(got).backward()
        loss_of(want).backward()
    assert train.cuda_graph
    assert_same_grads(model, reference, 1e-5)
    model.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    other = video(3, 2, seed=3, dtype=torch.float32).cuda()
    loss_of(train(other)).backward()
    loss_of(reference(other)).backward()
    assert_same_grads(model, reference, 1e-5)


@pytest.mark.gpu
def test_fast_train_optimiser_steps_follow_the_eager_ones():
    """Three AdamW steps under bfloat16 autocast (its weight cache on, as by default) leave the weights the eager
    steps leave."""
    model, reference = twins("cuda")
    train = model.fast_train()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, reference)]
    for seed in range(3):
        clip = video(2, 4, seed=seed, dtype=torch.float32).cuda()
        for forward, optimizer in zip((train, reference), optimizers, strict=True):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_of(forward(clip))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
    assert train.cuda_graph


@pytest.mark.gpu
def test_fast_train_draws_new_random_values_at_every_replay():
    model, _ = twins("cuda", drop_path_rate=0.5)
    train = model.fast_train()
    clip = video(16, 4, dtype=torch.float32).cuda()  # 16 clips: equal masks twice by chance with p = 2 ** -16
    first, second = as_tuple(train(clip))[0], as_tuple(train(clip))[0]
    assert train.cuda_graph and not torch.equal(first, second)


@pytest.mark.gpu
def test_fast_train_runs_eagerly_without_gradients_and_asks_for_a_new_one_after_a_cast():
    model, _ = twins("cuda")
    train = model.fast_train()
    clip = video(2, 4, dtype=torch.float32).cuda()
    with torch.no_grad():
        train(clip)
    assert not train.cuda_graph
    train(clip)
    model.half()
    with pytest.raises(RuntimeError, match=r"model\.fast_train\(\)"):
        train(clip)  # the recorded signature, its graphs reading the weights where they were
