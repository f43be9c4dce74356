import pytest
import torch

from videostate.depth import VideoMambaDepth, VideoMambaDepthConfig, VideoMambaDepthState

from .tiny import load_tiny_teacher

CONFIG = VideoMambaDepthConfig(num_blocks=(1, 1, 2, 2), d_state=4, expand=2)


def make_model(teacher_dir, dtype=torch.float64, perturb=True, seed=0):
    torch.manual_seed(seed)
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir, dtype), CONFIG)
    if perturb:  # leave the teacher-equivalent initialisation so the temporal path matters
        with torch.no_grad():
            for proj in model.temporal_out:
                proj.weight.normal_(0, 0.5 * proj.in_features)  # read-out multiplier 1 / C
                proj.bias.normal_(0, 0.1)
    return model.eval()


def test_student_at_initialisation_reproduces_the_teacher(teacher_dir):
    model = make_model(teacher_dir, perturb=False)
    clip = torch.rand(2, 3, 3, 30, 40, dtype=torch.float64)
    depth = model(clip)
    assert depth.shape == (2, 3, 1, 30, 40)
    expected = torch.stack([model.teacher.predict_depth(clip[:, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(depth, expected, rtol=1e-12, atol=1e-12)


def test_trainable_parameters_exclude_the_teacher(teacher_dir):
    model = make_model(teacher_dir)
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(id(p) in teacher_ids for p in trainable)
    clip = torch.rand(1, 2, 3, 28, 28, dtype=torch.float64)
    model(clip).sum().backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.temporal[3].blocks[0].mamba.A_log.grad is not None


def test_chunks_and_steps_equal_the_clip_forward(teacher_dir):
    model = make_model(teacher_dir)
    clip = torch.rand(2, 6, 3, 28, 42, dtype=torch.float64)
    offline = model(clip)
    with torch.no_grad():
        no_temporal = torch.stack([model.teacher.predict_depth(clip[:, t]) for t in range(6)], 1)
    assert (offline - no_temporal).abs().max() > 1e-3  # the temporal path changes the output

    states, chunks = model.init_states(2), []
    for lo, hi in [(0, 1), (1, 4), (4, 6)]:
        depth, states = model(clip[:, lo:hi], states)
        chunks.append(depth)
    torch.testing.assert_close(torch.cat(chunks, 1), offline, rtol=1e-10, atol=1e-10)
    assert states.frame_index.tolist() == [6, 6]

    states, frames = model.init_states(2), []
    for t in range(6):
        depth, states = model.step(clip[:, t], states)
        frames.append(depth)
    torch.testing.assert_close(torch.stack(frames, 1), offline, rtol=1e-10, atol=1e-10)


def test_run_output_agrees_with_the_forward(teacher_dir):
    """``run`` returns the temporal residuals and decodes features + residuals; ``forward`` adds them in the
    read-out's pass: both give the same depth, offline and from carried states."""
    model = make_model(teacher_dir)
    clip = torch.rand(2, 4, 3, 28, 42, dtype=torch.float64)
    with torch.no_grad():
        out = model.run(clip)
        torch.testing.assert_close(out.depth, model(clip), rtol=1e-12, atol=1e-12)
        assert max(r.abs().max().item() for r in out.temporal) > 1e-3  # the residuals take part
        states = model.init_states(2)
        _, states = model(clip[:, :2], states)
        torch.testing.assert_close(
            model.run(clip[:, 2:], states).depth, model(clip[:, 2:], states)[0], rtol=1e-12, atol=1e-12
        )


def test_output_depends_on_past_frames_only(teacher_dir):
    model = make_model(teacher_dir)
    clip = torch.rand(1, 4, 3, 28, 28, dtype=torch.float64)
    changed = clip.clone()
    changed[:, 2] = torch.rand(3, 28, 28, dtype=torch.float64)
    a, b = model(clip), model(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=0, atol=0)
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-6


def test_reset_stream_equals_a_fresh_stream(teacher_dir):
    model = make_model(teacher_dir)
    clip = torch.rand(2, 5, 3, 28, 28, dtype=torch.float64)
    _, states = model(clip[:, :3], model.init_states(2))
    states = states.reset(torch.tensor([False, True]))
    depth, _ = model(clip[:, 3:], states)
    fresh = model(clip[1:, 3:])
    torch.testing.assert_close(depth[1:], fresh, rtol=1e-10, atol=1e-10)
    only_first = states.index_select(torch.tensor([0]))
    first, _ = model(clip[:1, 3:], only_first)
    torch.testing.assert_close(first, depth[:1], rtol=1e-10, atol=1e-10)


def test_state_dict_resume(teacher_dir):
    model = make_model(teacher_dir)
    clip = torch.rand(1, 4, 3, 28, 28, dtype=torch.float64)
    _, states = model(clip[:, :2], model.init_states(1))
    saved = states.state_dict()
    _, fresh = model(torch.rand(1, 2, 3, 28, 28, dtype=torch.float64), model.init_states(1))
    fresh.load_state_dict(saved)
    torch.testing.assert_close(model(clip[:, 2:], fresh)[0], model(clip)[:, 2:], rtol=1e-10, atol=1e-10)
    rebuilt = model.load_states(saved)
    torch.testing.assert_close(model(clip[:, 2:], rebuilt)[0], model(clip)[:, 2:], rtol=1e-10, atol=1e-10)
    assert model.load_states(model.init_states(3).state_dict()).frame_index.tolist() == [0, 0, 0]
    del saved["scales.1.ssm_states.0"]
    with pytest.raises(KeyError, match=r"missing keys \['scales.1.ssm_states.0'\]"):
        model.load_states(saved)


def test_save_and_load_pretrained(teacher_dir, tmp_path):
    model = make_model(teacher_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VideoMambaDepth.from_pretrained(tmp_path / "student").eval()
    assert loaded.config == CONFIG
    clip = torch.rand(1, 3, 3, 28, 28)
    torch.testing.assert_close(loaded(clip), model(clip), rtol=0, atol=0)


def test_truncated_checkpoint_names_the_missing_keys(teacher_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_model(teacher_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["temporal_out.2.weight"]
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"missing keys \['temporal_out.2.weight'\].*unexpected keys \['extra.weight'\]"
    ):
        VideoMambaDepth.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        VideoMambaDepth.from_pretrained(tmp_path / "absent")


def test_bad_inputs(teacher_dir):
    model = make_model(teacher_dir)
    with pytest.raises(ValueError, match=r"\(batch, frames, 3, height, width\)"):
        model(torch.rand(2, 3, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 streams; the input has batch 1"):
        model(torch.rand(1, 1, 3, 28, 28, dtype=torch.float64), model.init_states(2))
    _, states = model(torch.rand(1, 1, 3, 28, 28, dtype=torch.float64), model.init_states(1))
    with pytest.raises(ValueError, match="keep one frame size"):
        model.step(torch.rand(1, 3, 28, 56, dtype=torch.float64), states)
    with pytest.raises(TypeError, match="VideoMambaDepthState"):
        model.step(torch.rand(1, 3, 28, 28, dtype=torch.float64), {})
    with pytest.raises(ValueError, match="one count per teacher scale"):
        VideoMambaDepth(model.teacher, VideoMambaDepthConfig(num_blocks=(1, 2)))
    with pytest.raises(ValueError, match="unknown VideoMambaDepthConfig keys"):
        VideoMambaDepthConfig.from_dict({"num_block": [1]})
    assert isinstance(model.init_states(), VideoMambaDepthState)


def test_without_temporal_blocks_the_student_is_the_teacher_frame_by_frame(teacher_dir):
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir, torch.float64), VideoMambaDepthConfig(use_temporal=False))
    assert len(model.temporal) == 0 and len(model.premix) == 0
    clip = torch.rand(1, 3, 3, 28, 28, dtype=torch.float64)
    expected = torch.stack([model.teacher.predict_depth(clip[:, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(model(clip), expected, rtol=1e-12, atol=1e-12)
    depth, states = model.step(clip[:, 0], model.init_states(1))
    torch.testing.assert_close(depth, expected[:, 0], rtol=1e-12, atol=1e-12)
    assert states.frame_index.tolist() == [1] and states.scales == []


def test_offline_position_encodings_are_computed_once(teacher_dir):
    """An offline pass keeps each scale's encoding of frames 0 .. N - 1 (equal to the formula) and reuses it; a clip
    of another length gets its own."""
    from videostate.depth.temporal import temporal_position_encoding

    model = make_model(teacher_dir)
    clip = torch.rand(1, 4, 3, 28, 28, dtype=torch.float64)
    first = model(clip)
    kept = dict(model._offline_encodings)
    assert sorted(key[1] for key in kept) == sorted(set(model.channels))
    for (frames, channels, max_period, dtype, _), pe in kept.items():
        expected = temporal_position_encoding(torch.arange(frames)[None], channels, max_period).to(dtype)
        torch.testing.assert_close(pe, expected, rtol=0, atol=0)
    torch.testing.assert_close(model(clip), first, rtol=0, atol=0)
    assert all(model._offline_encodings[key] is pe for key, pe in kept.items())
    torch.testing.assert_close(model(clip[:, :3]), first[:, :3], rtol=1e-12, atol=1e-12)
    assert len(model._offline_encodings) == 2 * len(kept)
