import gc
import math

import pytest
import torch

from videostate.depth import VideoMambaDepth, VideoMambaDepthConfig
from videostate.depth.streaming import KeyframeConfig, KeyframeStreamer

from .tiny import load_tiny_teacher


def make_model(teacher_dir, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir), VideoMambaDepthConfig(num_blocks=(1, 1, 2, 1), d_state=4))
    with torch.no_grad():
        for proj in model.temporal_out:
            proj.weight.normal_(0, 0.5 * proj.in_features)  # read-out multiplier 1 / C
            proj.bias.normal_(0, 0.1)
    return model.to(device=device, dtype=dtype).eval()


def assert_states_equal(a, b, **tol):
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], **tol, msg=k)


def check_fast_equals_eager(model, frames, **tol):
    """Steps from a fresh stream, then a jump back to a saved state: fast and eager give the same values."""
    fast = model.fast_step()
    eager_states, fast_states = model.init_states(1, device=frames.device), model.init_states(1, device=frames.device)
    saved = None
    for t, frame in enumerate(frames):
        with torch.no_grad():
            expected, eager_states = model.step(frame, eager_states)
        depth, fast_states = fast(frame, fast_states)
        torch.testing.assert_close(depth, expected, **tol)
        assert_states_equal(fast_states, eager_states, **tol)
        if t == 1:
            saved = fast_states.clone()
    # any other state is copied in, never written to
    before = saved.clone()
    with torch.no_grad():
        expected, eager_next = model.step(frames[0], saved)
    depth, fast_states = fast(frames[0], saved)
    torch.testing.assert_close(depth, expected, **tol)
    assert_states_equal(fast_states, eager_next, **tol)
    assert_states_equal(saved, before, rtol=0, atol=0)
    return fast


def test_fast_step_equals_the_eager_step_and_reuses_its_state_buffers(teacher_dir):
    model = make_model(teacher_dir)
    frames = torch.rand(4, 1, 3, 28, 42)
    fast = check_fast_equals_eager(model, frames, rtol=0, atol=0)
    assert not fast.cuda_graph  # on CPU the buffered step runs eagerly
    _, first = fast(frames[0], model.init_states(1))
    _, second = fast(frames[1], first)
    assert second is first  # the returned states are the buffers, advanced in place
    assert first.frame_index.tolist() == [2]


def test_fast_step_rejects_another_frame_size_dtype_or_state(teacher_dir):
    model = make_model(teacher_dir)
    fast = model.fast_step()
    states = model.init_states(1)
    _, states = fast(torch.rand(1, 3, 28, 42), states)
    with pytest.raises(ValueError, match=r"set up for frames of \(shape, dtype, device\)"):
        fast(torch.rand(1, 3, 28, 28), states)
    with pytest.raises(ValueError, match="set up for frames"):
        fast(torch.rand(1, 3, 28, 42, dtype=torch.float64), states)
    _, other = model.step(torch.rand(1, 3, 28, 28), model.init_states(1))
    with pytest.raises(ValueError, match="states do not match this fast step"):
        fast(torch.rand(1, 3, 28, 42), other)
    with pytest.raises(ValueError, match="states are for 2 streams"):
        fast(torch.rand(1, 3, 28, 42), model.init_states(2))
    model.train()
    with pytest.raises(ValueError, match="inference only"):
        fast(torch.rand(1, 3, 28, 42), states)


def test_fast_step_refuses_a_moved_or_cast_model(teacher_dir):
    model = make_model(teacher_dir)
    fast = model.fast_step()
    fast(torch.rand(1, 3, 28, 28), model.init_states(1))
    model.double()
    with pytest.raises(RuntimeError, match="moved or cast"):
        fast(torch.rand(1, 3, 28, 28, dtype=torch.float64), model.init_states(1))


def check_fast_streamer_equals_eager(model, frames, **tol):
    config = KeyframeConfig(interval=2, similarity_threshold=-2.0, state_change_threshold=math.inf, ema_decay=0.5)
    eager, fast = KeyframeStreamer(model, config), KeyframeStreamer(model, config, fast=True)
    for frame in frames:
        expected = eager(frame)
        torch.testing.assert_close(fast(frame), expected, **tol)
        assert fast.report.aligned == eager.report.aligned and fast.report.stored == eager.report.stored
        if math.isfinite(eager.report.state_change):
            assert fast.report.state_change == pytest.approx(eager.report.state_change, rel=1e-6)
        else:
            assert not math.isfinite(fast.report.state_change)
    assert eager.report.aligned
    return fast


def test_fast_streamer_equals_the_eager_streamer(teacher_dir):
    check_fast_streamer_equals_eager(make_model(teacher_dir), torch.rand(5, 1, 3, 28, 28), rtol=0, atol=0)


@pytest.mark.parametrize("fast", [False, True])
def test_streaming_leaves_no_tensor_in_reference_cycles(teacher_dir, fast):
    """States dropped by the streamer are freed at once, not when the cycle collector happens to run: cyclic
    garbage holding states is what made memory grow with the stream length on the GPU."""
    streamer = KeyframeStreamer(make_model(teacher_dir), KeyframeConfig(interval=2), fast=fast)
    frames = torch.rand(6, 1, 3, 28, 28)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for frame in frames:
            streamer(frame)
        gc.collect()
        leaked = [tuple(o.shape) for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


def cuda_model(teacher_dir, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return make_model(teacher_dir, "cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_step_equals_the_eager_step(teacher_dir, dtype):
    model = cuda_model(teacher_dir, dtype)
    frames = torch.rand(5, 1, 3, 28, 42, device="cuda", dtype=dtype)
    fast = check_fast_equals_eager(model, frames, rtol=1e-5, atol=1e-5)
    assert fast.cuda_graph


@pytest.mark.gpu
def test_cuda_graph_streamer_equals_the_eager_streamer(teacher_dir):
    model = cuda_model(teacher_dir, torch.float32)
    fast = check_fast_streamer_equals_eager(model, torch.rand(6, 1, 3, 28, 28, device="cuda"), rtol=1e-5, atol=1e-5)
    assert fast.fast.cuda_graph
