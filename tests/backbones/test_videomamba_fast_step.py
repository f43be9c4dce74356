import pytest
import torch

from tests.backbones.helpers import TINY, randomize, video
from videostate.backbones.videomamba import VideoMambaEncoder

CHUNKS = [2, 1, 1, 2]  # 6 frames: the last chunk runs past the table of 4 (clamped)


def encoder(dtype=torch.float64, **kwargs):
    model = VideoMambaEncoder(**TINY, pool_type="avg", clamp_temporal_pos=True, **kwargs)
    return randomize(model.to(dtype)).eval()


def stream(step, model, x, keep_temporal=(False, True, False, True)):
    """Every chunk's outputs (the state left out, cloned) and the state the step returned after each chunk."""
    state = model.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    outputs, states, start = [], [], 0
    for frames, keep in zip(CHUNKS, keep_temporal, strict=True):
        *out, state = step(x[:, :, start : start + frames], state, start, keep)
        outputs.append([o.clone() for o in out])
        states.append(state)
        start += frames
    return outputs, states


def eager(model):
    return lambda x, state, offset, keep: model(x, ssm_state=state, temporal_pos_offset=offset, keep_temporal=keep)


def assert_same_stream(got, expected, tol):
    for a_chunk, b_chunk in zip(got[0], expected[0], strict=True):
        for a, b in zip(a_chunk, b_chunk, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(got[1][-1].tensors().values(), expected[1][-1].tensors().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("bimamba", [True, False])
def test_fast_step_streams_the_values_of_the_model(bimamba):
    """Chunks of 2, 1, 1 and 2 frames (the first with the cls token, the last past the temporal table), per-frame
    pooling on and off: outputs and the carried state equal the eager stream's; the returned state is the step's
    own buffer, advanced in place."""
    model = encoder(bimamba=bimamba)
    x = video(2, sum(CHUNKS), seed=21)
    fast = model.fast_step()
    got = stream(fast, model, x)
    expected = stream(eager(model), model, x)
    assert_same_stream(got, expected, 1e-12)
    assert all(state is got[1][0] for state in got[1]) and not fast.cuda_graph
    assert got[0][1][1].shape == (2, 1, 16) and got[0][0][1].shape == (2, 1, 16)


def test_fast_step_copies_other_states_in_and_leaves_them_alone():
    model = encoder()
    x = video(2, sum(CHUNKS), seed=22)
    fast = model.fast_step()
    stream(fast, model, x)
    # a fresh state restarts the stream
    *restarted, _ = fast(x[:, :, :2], model.init_state(2, dtype=torch.float64), 0)
    *first, eager_state = model(x[:, :, :2], ssm_state=model.init_state(2, dtype=torch.float64))
    for a, b in zip(restarted, first, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a state from elsewhere continues from it and is not modified
    saved = eager_state.clone()
    *continued, _ = fast(x[:, :, 2:3], eager_state, 2)
    *expected, _ = model(x[:, :, 2:3], ssm_state=saved, temporal_pos_offset=2)
    for a, b in zip(continued, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(eager_state.tensors().values(), saved.tensors().values(), strict=True):
        assert torch.equal(a, b)


def test_fast_step_errors():
    model = encoder()
    fast = model.fast_step()
    x = video(2, 1, seed=23)
    state = model.init_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="carries a state"):
        fast(x, None)
    with pytest.raises(ValueError, match="must hold 2 streams"):
        fast(x, model.init_state(3, dtype=torch.float64))
    *_, state = fast(x, state)
    with pytest.raises(ValueError, match=r"set up for chunks of \(batch, dtype, device\) = \(2, torch.float64"):
        fast(video(3, 1, seed=23), model.init_state(3, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match=r"set up for chunks .* got \(2, torch.float32"):
        fast(x.float(), state, 1)
    with pytest.raises(ValueError, match=r"does not match this fast step's first state \(layers.0.conv_state"):
        fast(x, model.init_state(2, dtype=torch.float32), 1)
    with pytest.raises(ValueError, match="x must have shape"):
        fast(x[:, :2], state, 1)
    unclamped = randomize(VideoMambaEncoder(**TINY, pool_type="avg").double()).eval().fast_step()
    with pytest.raises(ValueError, match=r"temporal positions 4\.\.4 .* table of 4 entries"):
        unclamped(x, unclamped.model.init_state(2, dtype=torch.float64), 4)
    cls_pooled = randomize(VideoMambaEncoder(**TINY).double()).eval().fast_step()
    with pytest.raises(ValueError, match="only the first chunk"):
        cls_pooled(x, cls_pooled.model.init_state(2, dtype=torch.float64), 1)
    model.train()
    with pytest.raises(ValueError, match=r"call model\.eval"):
        fast(x, state, 1)
    model.eval().float()
    with pytest.raises(RuntimeError, match=r"model\.fast_step\(\)"):
        fast(x, state, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("bimamba", [True, False])
def test_fast_step_replays_the_stream_from_cuda_graphs(bimamba):
    """On CUDA: one graph per (chunk shape, first chunk, keep_temporal), the values of the eager stream, the
    recording's warm-up runs leaving no trace in the state; a cast model asks for a new fast step."""
    torch.manual_seed(0)
    model = encoder(torch.float32, bimamba=bimamba).cuda()
    x = video(2, sum(CHUNKS), seed=24, dtype=torch.float32).cuda()
    fast = model.fast_step()
    with torch.no_grad():
        expected = stream(eager(model), model, x)
    for _ in range(2):  # recorded, then replayed from a fresh state
        got = stream(fast, model, x)
        assert_same_stream(got, expected, 1e-5)
    assert fast.cuda_graph and len(fast._graphs) == 4
    model.half()
    with pytest.raises(RuntimeError, match=r"model\.fast_step\(\)"):
        fast(x[:, :, :1].half(), got[1][-1], 1)
