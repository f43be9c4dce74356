"""The fast online step: same values as the eager ``step``, state handling, errors, no host syncs, CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from videostate.segmentation import VideomtFastStep

from .tiny import random_video, tiny_model

OUTPUT_FIELDS = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
# ops whose result the host must wait for (a scalar read back, or an output size that depends on values)
SYNC_OPS = {
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",
    "aten.masked_select",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.unique_dim",
    "aten.repeat_interleave",
}


class SyncRecorder(TorchDispatchMode):
    """Records every op that makes the host wait for the device, including boolean-mask indexing."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket._qualified_op_name.replace("::", ".")
        if name in SYNC_OPS:
            self.syncs.append(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.syncs.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


def assert_same_step(fast, eager, state_fast, state_eager, atol=0.0, rtol=0.0):
    for name in OUTPUT_FIELDS:
        torch.testing.assert_close(getattr(fast, name), getattr(eager, name), atol=atol, rtol=rtol)
    torch.testing.assert_close(state_fast.propagated, state_eager.propagated, atol=atol, rtol=rtol)
    assert torch.equal(state_fast.started, state_eager.started)
    assert fast.next_state is state_fast


def run_both(model, fast, video, reset_at: int):
    """Eager and fast steps over ``video (B, T, ...)`` from fresh states; stream 0 restarts at ``reset_at``."""
    state_eager = model.init_state(video.shape[0], device=video.device, dtype=video.dtype)
    state_fast = model.init_state(video.shape[0], device=video.device, dtype=video.dtype)
    restart = torch.zeros(video.shape[0], dtype=torch.bool, device=video.device)
    restart[0] = True
    steps = []
    with torch.no_grad():
        for t in range(video.shape[1]):
            if t == reset_at:
                state_eager, state_fast = state_eager.reset(restart), state_fast.reset(restart)
            eager, state_eager = model.step(video[:, t], state_eager)
            out, state_fast = fast(video[:, t], state_fast)
            steps.append((out, eager, state_fast, state_eager))
    return steps


def test_fast_step_equals_eager_step_with_reset():
    model = tiny_model(num_hidden_layers=4, num_blocks=2)
    fast = model.fast_step()
    assert isinstance(fast, VideomtFastStep)
    steps = run_both(model, fast, random_video(2, 5), reset_at=3)
    assert not fast.cuda_graph  # CPU: the same buffered step, run eagerly
    # checked after the last call: earlier outputs and states were not overwritten by later frames
    for out, eager, state_fast, state_eager in steps:
        assert_same_step(out, eager, state_fast, state_eager)
    # the reset stream's frame 3 is a first frame again: different from carrying its queries
    _, eager3, _, _ = steps[3]
    assert (eager3.masks_queries_logits[0] - steps[2][1].masks_queries_logits[0]).abs().max() > 1e-6


def test_fast_step_takes_the_state_as_an_input():
    model = tiny_model()
    video = random_video(2, 3)
    fast = model.fast_step()
    with torch.no_grad():
        _, state = fast(video[:, 0], model.init_state(2))
        once, after_once = fast(video[:, 1], state)
        twice, _ = fast(video[:, 1], state)  # the same state again: the same frame
        eager, _ = model.step(video[:, 1], state)
        resumed = model.init_state(2)
        resumed.load_state_dict(after_once.state_dict())
        from_resumed, _ = fast(video[:, 2], resumed)
        from_carried, _ = fast(video[:, 2], after_once)
        fresh, _ = fast(video[:, 2], model.init_state(2))
        eager_fresh, _ = model.step(video[:, 2], model.init_state(2))
    assert torch.equal(once.masks_queries_logits, twice.masks_queries_logits)
    assert torch.equal(once.masks_queries_logits, eager.masks_queries_logits)
    assert torch.equal(from_resumed.masks_queries_logits, from_carried.masks_queries_logits)
    assert torch.equal(fresh.masks_queries_logits, eager_fresh.masks_queries_logits)
    assert (fresh.masks_queries_logits - from_carried.masks_queries_logits).abs().max() > 1e-6


def test_fast_step_errors():
    model = tiny_model()
    video = random_video(2, 2)
    fast = model.fast_step()
    model.train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fast(video[:, 0], model.init_state(2))
    model.eval()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\); got \(2, 2, 3, 16, 16\)"):
        fast(video, model.init_state(2))
    with pytest.raises(ValueError, match="init_state"):
        fast(video[:, 0], None)
    with pytest.raises(ValueError, match=r"got \(2, 1, 3, 16, 8\)"):
        fast(video[:, 0, :, :, :8], model.init_state(2))
    with pytest.raises(ValueError, match=r"started \(2,\)"):
        fast(video[:, 0], model.init_state(3))
    with pytest.raises(ValueError, match=r"state\.propagated must be on the frames' device cpu; got meta"):
        fast(video[:, 0], model.init_state(2, device="meta"))
    fast(video[:, 0], model.init_state(2))  # sets the step up for (2, 3, 16, 16) float64 frames on cpu
    with pytest.raises(ValueError, match=r"set up for .*\(2, 3, 16, 16\), torch.float64.*got \(\(1, 3, 16, 16\)"):
        fast(video[:1, 0], model.init_state(1))
    with pytest.raises(ValueError, match=r"got \(\(2, 3, 16, 16\), torch.float32"):
        fast(video[:, 0].float(), model.init_state(2))
    with pytest.raises(ValueError, match=r"got \(\(2, 3, 16, 16\), torch.float64, device\(type='cpu'\), torch.float32"):
        fast(video[:, 0], model.init_state(2, dtype=torch.float32))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(ValueError, match=r"autocast\) = .*False\); got .*True\)"),
    ):
        fast(video[:, 0], model.init_state(2))
    kept = [p.detach() for p in model.parameters()]  # the old storage stays, so new weights cannot reuse it
    model.float().double()  # same dtype again, but every weight now lives elsewhere
    with pytest.raises(RuntimeError, match="moved or cast"):
        fast(video[:, 0], model.init_state(2))
    del kept
    again = model.fast_step()
    with torch.no_grad():
        out, _ = again(video[:, 0], model.init_state(2))
        eager, _ = model.step(video[:, 0], model.init_state(2))
    assert torch.equal(out.masks_queries_logits, eager.masks_queries_logits)


def test_step_path_has_no_host_syncs():
    model = tiny_model(num_hidden_layers=4, num_blocks=2)
    video = random_video(2, 3)
    fast = model.fast_step()
    with torch.no_grad():
        state_eager, state_fast = model.init_state(2), model.init_state(2)
        fast(video[:, 0], state_fast)  # set-up outside the recorder
        recorder = SyncRecorder()
        with recorder:
            for t in range(3):
                _, state_eager = model.step(video[:, t], state_eager)
                _, state_fast = fast(video[:, t], state_fast)
                state_eager = state_eager.reset(torch.tensor([t == 1, False]))
        assert recorder.syncs == []
        # the recorder sees what it must: a scalar read and a boolean-mask index
        with recorder:
            state_eager.propagated.sum().item()
            state_eager.propagated[state_eager.started]
    assert recorder.syncs == ["aten._local_scalar_dense", "aten.index with a boolean mask"]


def gpu_model(dtype: torch.dtype):
    return tiny_model(dtype=dtype, num_hidden_layers=4, num_blocks=2).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)], ids=["float32", "bfloat16"])
def test_cuda_graph_step_equals_eager_step(dtype, tol):
    model = gpu_model(dtype)
    video = random_video(2, 6, dtype=dtype).cuda()
    fast = model.fast_step()
    steps = run_both(model, fast, video, reset_at=3)
    assert fast.cuda_graph
    for out, eager, state_fast, state_eager in steps:
        assert_same_step(out, eager, state_fast, state_eager, atol=tol, rtol=tol)


@pytest.mark.gpu
def test_cuda_graph_step_has_no_syncs_and_flat_memory():
    model = gpu_model(torch.bfloat16)
    video = random_video(1, 4, dtype=torch.bfloat16).cuda()
    fast = model.fast_step()
    with torch.no_grad():
        state_eager = state_fast = model.init_state(1, device="cuda", dtype=torch.bfloat16)
        fast(video[:, 0], state_fast)  # capture (it synchronizes once)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(4):
                _, state_eager = model.step(video[:, t], state_eager)
                _, state_fast = fast(video[:, t], state_fast)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        allocated = []
        for i in range(300):
            _, state_fast = fast(video[:, i % 4], state_fast)
            if i in (49, 299):
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated())
    assert allocated[0] == allocated[1]


@pytest.mark.gpu
def test_cuda_graph_step_rejects_another_device_or_batch():
    model = gpu_model(torch.float32)
    video = random_video(2, 2, dtype=torch.float32).cuda()
    fast = model.fast_step()
    with torch.no_grad():
        fast(video[:, 0], model.init_state(2, device="cuda"))
        with pytest.raises(ValueError, match=r"state\.propagated must be on the frames' device cuda"):
            fast(video[:, 1], model.init_state(2, device="cpu"))
        with pytest.raises(ValueError, match=r"got \(\(1, 3, 16, 16\)"):
            fast(video[:1, 1], model.init_state(1, device="cuda"))
        kept = [p.detach() for p in model.parameters()]  # the old memory stays, so new weights cannot reuse it
        model.cpu()
        with pytest.raises(ValueError, match=r"device\(type='cpu'\)"):
            fast(video[:, 1].cpu(), model.init_state(2))
        model.cuda()
        with pytest.raises(RuntimeError, match="moved or cast"):
            fast(video[:, 1], model.init_state(2, device="cuda"))
        del kept
