import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.backbones import videomamba_oracle as oracle
from tests.backbones.helpers import PATCHES, TINY, float_state_dict, randomize, video
from videostate.backbones.videomamba import VideoMambaEncoder


def run_chunks(model, x, frame_chunks, **kwargs):
    """Stream ``x`` in chunks of the given frame counts; returns every output per chunk and the state."""
    state = model.init_state(x.shape[0], dtype=x.dtype)
    outputs, start = [], 0
    for frames in frame_chunks:
        *out, state = model(
            x[:, :, start : start + frames],
            ssm_state=state,
            temporal_pos_offset=start // model.patch_embed.tubelet_size,
            **kwargs,
        )
        outputs.append(out)
        start += frames
    return outputs, state


@pytest.mark.parametrize(("kernel_size", "chunks"), [(1, [1, 2, 1]), (1, [3, 1]), (2, [2, 2]), (1, [1, 1, 1, 1])])
def test_unidirectional_chunks_equal_offline(kernel_size, chunks):
    model = VideoMambaEncoder(**TINY, bimamba=False, kernel_size=kernel_size, add_pool_norm=False)
    model = randomize(model.double()).eval()
    x = video(2, 4, seed=7)
    offline = model(x)
    outputs, _ = run_chunks(model, x, chunks)
    torch.testing.assert_close(torch.cat([o[0] for o in outputs], dim=1), offline, rtol=1e-12, atol=1e-12)


def test_bidirectional_single_chunk_equals_offline():
    model = randomize(VideoMambaEncoder(**TINY).double()).eval()
    x = video(2, 4, seed=8)
    x_vis, x_pool = model(x)
    outputs, state = run_chunks(model, x, [4])
    torch.testing.assert_close(outputs[0][0], x_vis, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outputs[0][1], x_pool, rtol=1e-12, atol=1e-12)
    assert len(state.layers) == 2


def test_bidirectional_chunks_confine_the_backward_scan_to_each_chunk():
    """Chunked bimamba: the forward direction spans the stream, the backward one each chunk only."""
    model = randomize(VideoMambaEncoder(**TINY, add_pool_norm=False).double()).eval()
    x = video(1, 4, seed=9)
    outputs, _ = run_chunks(model, x, [2, 1, 1])
    streamed = torch.cat([o[0] for o in outputs], dim=1)
    sd = float_state_dict(model)
    seq = oracle.tokens(sd, x, patch=8, tubelet=1)
    segments = [(0, 1 + 2 * PATCHES), (1 + 2 * PATCHES, 1 + 3 * PATCHES), (1 + 3 * PATCHES, 1 + 4 * PATCHES)]
    expected = oracle.trunk(sd, seq, depth=2, final_norm="norm", segments=segments)
    torch.testing.assert_close(streamed, expected, rtol=1e-10, atol=1e-10)
    assert (streamed - model(x)).abs().max() > 1e-3  # and this is not the offline model


def test_average_pooling_per_frame_on_later_chunks():
    model = randomize(VideoMambaEncoder(**TINY, bimamba=False, pool_type="avg").double()).eval()
    x = video(2, 4, seed=10)
    _, offline_pool = model(x, keep_temporal=True)
    outputs, _ = run_chunks(model, x, [2, 2], keep_temporal=True)
    torch.testing.assert_close(torch.cat([o[1] for o in outputs], dim=1), offline_pool, rtol=1e-12, atol=1e-12)
    assert offline_pool.shape == (2, 4, 16)


@pytest.mark.parametrize("pool_type", ["cls", "cls+avg"])
def test_cls_pooling_on_a_later_chunk_is_an_error(pool_type):
    model = VideoMambaEncoder(**TINY, pool_type=pool_type)
    state = model.init_state(1)
    *_, state = model(video(1, 2, dtype=torch.float32), ssm_state=state)
    with pytest.raises(ValueError, match="only the first chunk"):
        model(video(1, 2, dtype=torch.float32), ssm_state=state, temporal_pos_offset=2, keep_temporal=True)


def test_positions_past_the_temporal_table():
    model = VideoMambaEncoder(**TINY, add_pool_norm=False).eval()
    state = model.init_state(1)
    with pytest.raises(ValueError, match=r"temporal positions 3\.\.4 .* table of 4 entries"):
        model(video(1, 2, dtype=torch.float32), ssm_state=state, temporal_pos_offset=3)
    with pytest.raises(ValueError, match="needs ssm_state"):
        model(video(1, 2, dtype=torch.float32), temporal_pos_offset=1)
    with pytest.raises(ValueError, match="non-negative int"):
        model(video(1, 2, dtype=torch.float32), ssm_state=state, temporal_pos_offset=-1)
    with pytest.raises(ValueError, match="ssm_state must come from init_state"):
        model(video(1, 2, dtype=torch.float32), ssm_state=model.init_state(1).layers[0])


def test_clamped_positions_reuse_the_last_table_entry():
    model = randomize(VideoMambaEncoder(**TINY, add_pool_norm=False, clamp_temporal_pos=True).double())
    table = model.temporal_pos_embedding
    x = video(1, 3, seed=11)
    tokens = model.embed(x, temporal_pos_offset=3)
    reference = model.embed(x, temporal_pos_offset=1)  # rows 1, 2, 3 of the table
    per_frame = (tokens - reference).reshape(1, 3, PATCHES, 16)[:, :, 0]
    expected = table[:, [3, 3, 3]] - table[:, [1, 2, 3]]
    torch.testing.assert_close(per_frame, expected)


def test_state_saves_resumes_and_stays_bounded():
    model = randomize(VideoMambaEncoder(**TINY, bimamba=False, pool_type="avg").double()).eval()
    x = video(2, 4, seed=12)
    continuous, final = run_chunks(model, x, [1, 1, 1, 1])
    state = model.init_state(2, dtype=torch.float64)
    *_, state = model(x[:, :, :2], ssm_state=state)
    saved = state.state_dict()
    resumed = model.init_state(2, dtype=torch.float64)
    resumed.load_state_dict(saved)
    x_vis, _, _ = model(x[:, :, 2:], ssm_state=resumed, temporal_pos_offset=2)
    torch.testing.assert_close(x_vis, torch.cat([continuous[2][0], continuous[3][0]], dim=1))
    shapes = {name: tuple(t.shape) for name, t in final.tensors().items()}
    assert shapes == {name: tuple(t.shape) for name, t in state.tensors().items()}
    assert shapes["layers.0.conv_state"] == (2, 32, 4) and shapes["layers.1.ssm_state"] == (2, 32, 16)


def test_training_through_chunks_with_gradient_checkpointing():
    model = randomize(VideoMambaEncoder(**TINY, bimamba=False, pool_type="avg", checkpoint_num=2).double())
    x = video(1, 4, seed=13)

    def grads(use_checkpoint):
        model.zero_grad()
        model.use_checkpoint = use_checkpoint
        outputs, _ = run_chunks(model, x, [2, 2])
        sum(x_pool.sum() + x_vis.square().mean() for x_vis, x_pool in outputs).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain["layers.0.mixer.A_log"].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_bfloat16_model_streams_close_to_float32():
    model = randomize(VideoMambaEncoder(**TINY, bimamba=False, add_pool_norm=False)).eval()
    x = video(1, 4, seed=14, dtype=torch.float32)
    with torch.no_grad():
        reference = model(x)
        model.to(torch.bfloat16)
        outputs, state = run_chunks(model, x.to(torch.bfloat16), [2, 2])
    streamed = torch.cat([o[0] for o in outputs], dim=1)
    assert streamed.dtype == torch.bfloat16 and state.layers[0].ssm_state.dtype == torch.float32
    torch.testing.assert_close(streamed.float(), reference, rtol=0.05, atol=0.05)


UNIDIRECTIONAL = randomize(
    VideoMambaEncoder(**{**TINY, "num_frames": 6}, bimamba=False, pool_type="avg").double()
).eval()


@given(st.lists(st.integers(1, 3), min_size=1, max_size=6).filter(lambda c: sum(c) <= 6), st.integers(0, 2**16))
def test_any_split_of_a_unidirectional_stream_equals_offline(chunks, seed):
    x = video(1, sum(chunks), seed=seed)
    with torch.no_grad():
        x_vis, x_pool = UNIDIRECTIONAL(x, keep_temporal=True)
        outputs, _ = run_chunks(UNIDIRECTIONAL, x, chunks, keep_temporal=True)
    torch.testing.assert_close(torch.cat([o[0] for o in outputs], dim=1), x_vis, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([o[1] for o in outputs], dim=1), x_pool, rtol=1e-12, atol=1e-12)
