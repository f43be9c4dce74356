import math

import pytest
import torch

from videostate.depth import VideoMambaDepth, VideoMambaDepthConfig
from videostate.depth.losses import scale_and_shift
from videostate.depth.streaming import (
    KeyframeBank,
    KeyframeConfig,
    KeyframeStreamer,
    ScaleShiftEMA,
    frame_descriptor,
    relative_state_change,
)
from videostate.ssm import MambaState

from .tiny import load_tiny_teacher


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def some_state(value):
    return MambaState(torch.full((1, 2, 3), value), torch.full((1, 2, 4), value))


def test_nearest_keyframe_is_the_highest_cosine_similarity():
    bank = KeyframeBank(KeyframeConfig(max_keyframes=5))
    descriptors = [unit(1, 0, 0), unit(1, 1, 0), unit(0, 0, 1)]
    for i, d in enumerate(descriptors):
        bank.add(i, d, some_state(float(i)), torch.zeros(1, 1, 2, 2))
    query = unit(0.9, 1.2, 0.1)
    best, sim = bank.nearest(query)
    sims = [float(query @ d) for d in descriptors]
    assert best.id == max(range(3), key=sims.__getitem__)
    assert sim == pytest.approx(max(sims), rel=1e-6)


def test_reset_rule():
    bank = KeyframeBank(KeyframeConfig(similarity_threshold=0.9))
    bank.add(0, unit(1, 0), some_state(0.0), torch.zeros(1, 1, 2, 2))
    bank.add(10, unit(0, 1), some_state(1.0), torch.zeros(1, 1, 2, 2))
    assert bank.anchor == 1
    assert bank.reset_target(unit(0.1, 1)) is None  # nearest is the anchor
    assert bank.reset_target(unit(1, 1)) is None  # nothing above the threshold
    target = bank.reset_target(unit(1, 0.05))  # back to keyframe 0's view, away from the anchor's
    assert target is not None and target.id == 0
    bank.add(20, unit(1, 0.02), some_state(2.0), torch.zeros(1, 1, 2, 2))  # a new anchor similar to keyframe 0
    assert bank.reset_target(unit(1, 0.04)) is None  # the anchor still describes the view


def test_keyframes_are_evicted_oldest_first_and_stored_as_copies():
    bank = KeyframeBank(KeyframeConfig(max_keyframes=2))
    state = some_state(1.0)
    for i in range(4):
        bank.add(i, unit(1, i), state, torch.zeros(1, 1, 2, 2))
    assert [k.frame_index for k in bank.keyframes] == [2, 3]
    state.ssm_state.fill_(5.0)
    assert bank.keyframes[0].states.ssm_state.max() == 1.0


def test_scale_shift_ema_update():
    ema = ScaleShiftEMA(decay=0.75)
    raw = torch.rand(1, 1, 4, 5, dtype=torch.float64)
    ema.update(raw, 2 * raw + 1)
    assert ema.scale == pytest.approx(0.75 + 0.25 * 2)
    assert ema.shift == pytest.approx(0.25 * 1)
    torch.testing.assert_close(ema(raw), ema.scale * raw + ema.shift)
    ema.update(torch.ones(1, 1, 4, 5), raw)  # singular fit: no change
    assert ema.scale == pytest.approx(1.25)


def test_relative_state_change_formula():
    old, new = some_state(2.0), some_state(2.0)
    new.ssm_state[0, 0, 0] = 3.0
    expected = math.sqrt(1.0) / math.sqrt(4.0 * (6 + 8))
    assert relative_state_change(new, old) == pytest.approx(expected)
    assert relative_state_change(new, some_state(0.0)) == math.inf


@pytest.mark.parametrize("conv_dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_relative_state_change_of_random_states_in_mixed_dtypes(conv_dtype):
    """A model's states: conv states in the model's dtype, scan states in float32 (or float64), against the float64
    formula ``sqrt(sum |new - old|^2 / sum |old|^2)`` over every tensor."""
    g = torch.Generator().manual_seed(3)
    ssm_dtype = torch.promote_types(conv_dtype, torch.float32)

    def state(scale):
        conv = (scale * torch.randn(7, 24, 4, generator=g, dtype=torch.float64)).to(conv_dtype)
        return MambaState(conv, (scale * torch.randn(7, 24, 16, generator=g, dtype=torch.float64)).to(ssm_dtype))

    old, step = state(1.0), state(0.1)
    new = MambaState(old.conv_state + step.conv_state, old.ssm_state + step.ssm_state)
    pairs = [(n.double(), o.double()) for n, o in ((new.conv_state, old.conv_state), (new.ssm_state, old.ssm_state))]
    expected = math.sqrt(sum((n - o).square().sum() for n, o in pairs) / sum(o.square().sum() for _, o in pairs))
    assert relative_state_change(new, old) == pytest.approx(expected, rel=1e-6)


def make_model(teacher_dir):
    torch.manual_seed(0)
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir), VideoMambaDepthConfig(num_blocks=(1, 1, 1, 1), d_state=4))
    with torch.no_grad():
        for proj in model.temporal_out:
            proj.weight.normal_(0, 0.5 * proj.in_features)  # read-out multiplier 1 / C
    return model.eval()


def test_streamer_without_matches_equals_plain_steps_and_stores_every_interval(teacher_dir):
    model = make_model(teacher_dir)
    frames = torch.rand(7, 1, 3, 28, 28)
    streamer = KeyframeStreamer(model, KeyframeConfig(interval=3, similarity_threshold=1.5))
    states = model.init_states(1)
    stored = []
    for frame in frames:
        depth = streamer(frame)
        expected, states = model.step(frame, states)
        torch.testing.assert_close(depth, expected, rtol=0, atol=0)
        stored.append(streamer.report.stored is not None)
        assert streamer.report.reset_to is None and not streamer.report.aligned
    assert stored == [True, False, False, True, False, False, True]
    assert [k.frame_index for k in streamer.bank.keyframes] == [0, 3, 6]


def test_streamer_resets_to_a_returning_keyframe(teacher_dir):
    model = make_model(teacher_dir)
    streamer = KeyframeStreamer(model, KeyframeConfig(interval=100, similarity_threshold=0.99))
    frame = torch.rand(1, 3, 28, 28)
    for f in torch.rand(2, 1, 3, 28, 28):
        streamer(f)
    features = model.teacher.encode_frame(frame)
    descriptor = frame_descriptor([features[i] for i in range(4)])
    anchor = streamer.bank.keyframes[0]
    anchor.descriptor = -descriptor  # the stream's anchor no longer looks like the frame
    _, saved_states = model(torch.rand(1, 3, 3, 28, 28), model.init_states(1))
    keyframe = streamer.bank.add(50, descriptor, saved_states, torch.rand(1, 1, 28, 28))
    streamer.bank.anchor = anchor.id
    streamer(frame)
    assert streamer.report.reset_to == keyframe.id and streamer.bank.anchor == keyframe.id
    _, expected_states = model.step(frame, saved_states)
    for a, b in zip(streamer.states.tensors().values(), expected_states.tensors().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_streamer_aligns_to_the_matched_keyframe(teacher_dir):
    model = make_model(teacher_dir)
    config = KeyframeConfig(interval=100, similarity_threshold=-2.0, state_change_threshold=math.inf, ema_decay=0.5)
    streamer = KeyframeStreamer(model, config)
    frames = torch.rand(2, 1, 3, 28, 28)
    first = streamer(frames[0])
    assert not streamer.report.aligned  # no keyframe before the first frame
    second = streamer(frames[1])
    assert streamer.report.aligned and streamer.report.matched == 0
    with torch.no_grad():
        _, states = model.step(frames[0], model.init_states(1))
        raw, _ = model.step(frames[1], states)
    s, t = scale_and_shift(raw.double(), first.double())
    a, b = 0.5 + 0.5 * float(s), 0.5 * float(t)
    torch.testing.assert_close(second, a * raw + b)


def test_streamer_rejects_batches(teacher_dir):
    streamer = KeyframeStreamer(make_model(teacher_dir))
    with pytest.raises(ValueError, match="one stream"):
        streamer(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="interval"):
        KeyframeConfig(interval=0)
