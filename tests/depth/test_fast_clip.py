import pytest
import torch

from .test_fast_step import cuda_model, make_model


def check_fast_clip_equals_eager(model, clips, **tol):
    """Clips of one shape, then of another: the fast clip gives ``model(clip)``, a fresh tensor each time."""
    fast = model.fast_clip()
    outputs = []
    for clip in clips:
        with torch.no_grad():
            expected = model(clip)
        depth = fast(clip)
        torch.testing.assert_close(depth, expected, **tol)
        outputs.append(depth)
    assert outputs[0].data_ptr() != outputs[1].data_ptr()
    return fast


def test_fast_clip_checks_its_input_and_mode(teacher_dir):
    model = make_model(teacher_dir)
    fast = model.fast_clip()
    fast(torch.rand(1, 2, 3, 28, 28))
    assert not fast.cuda_graph  # off CUDA it runs the model eagerly; the recorded path is tested on the GPU
    with pytest.raises(ValueError, match=r"rgb_clip must have shape \(batch, frames, 3, height, width\)"):
        fast(torch.rand(3, 3, 28, 28))
    model.train()
    with pytest.raises(ValueError, match=r"call model\.eval"):
        fast(torch.rand(1, 2, 3, 28, 28))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_clip_equals_the_offline_pass(teacher_dir, dtype):
    model = cuda_model(teacher_dir, dtype)
    clips = [torch.rand(1, 4, 3, 28, 42, device="cuda", dtype=dtype) for _ in range(2)]
    clips.append(torch.rand(2, 3, 3, 28, 28, device="cuda", dtype=dtype))
    fast = check_fast_clip_equals_eager(model, clips, rtol=1e-5, atol=1e-5)
    assert fast.cuda_graph
    model.double()
    with pytest.raises(RuntimeError, match="moved or cast"):
        fast(clips[-1])
