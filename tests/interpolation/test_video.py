import argparse
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from videostate.data.cli import describe
from videostate.data.video import VideoReader, VideoWriter
from videostate.interpolation import HybridVFI
from videostate.interpolation.cli import add_interpolate_arguments
from videostate.interpolation.video import frame_plan, interpolate_video, is_scene_cut, output_rate

from ..data.synthetic import write_video
from .tiny import tiny_config

F = Fraction


def test_frame_plan_for_a_factor_and_for_a_target_rate():
    assert frame_plan(3, F(25), F(50)) == [(0, F(0)), (0, F(1, 2)), (1, F(0)), (1, F(1, 2)), (2, F(0)), (2, F(0))]
    plan = frame_plan(4, F(24), F(60))  # 4 frames of 1/24 s -> ceil(10) output frames of 1/60 s
    assert len(plan) == 10
    assert plan[:4] == [(0, F(0)), (0, F(2, 5)), (0, F(4, 5)), (1, F(1, 5))]
    assert plan[-1] == (3, F(0))
    with pytest.raises(ValueError, match="exactly one of factor and fps"):
        output_rate(F(25), 2, 30.0)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        output_rate(F(25), 1, None)


def test_scene_cut_detection():
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 64).expand(3, 64, 64)
    assert not is_scene_cut(smooth, smooth * 0.95 + 0.02, 0.2)
    assert is_scene_cut(smooth, torch.rand(3, 64, 64, generator=g), 0.2)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    HybridVFI(tiny_config(phase=2)).save_pretrained(path)
    return path


def test_cli_doubles_the_frame_rate_and_keeps_the_audio(tmp_path, tiny_model_dir):
    source = tmp_path / "in.mp4"
    write_video(source, num_frames=6, height=32, width=48, fps=F(25), audio=True)
    parser = argparse.ArgumentParser()
    add_interpolate_arguments(parser)
    args = parser.parse_args(
        [
            str(source),
            "-o",
            str(tmp_path / "out.mp4"),
            "--model",
            str(tiny_model_dir),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    info = describe(str(tmp_path / "out.mp4"))
    assert info["frames"] == 12 and info["fps"] == 50 and info["audio"] is not None
    with VideoReader(source) as a, VideoReader(tmp_path / "out.mp4") as b:
        inputs, outputs = list(a), list(b)
    for i, frame in enumerate(inputs):  # every second output frame is an input frame (up to the codec)
        assert np.abs(outputs[2 * i].astype(int) - frame.astype(int)).mean() < 3


def test_no_blending_across_a_scene_cut(tmp_path, tiny_model_dir):
    g = np.random.default_rng(0)
    smooth = np.repeat(np.linspace(40, 200, 48, dtype=np.uint8)[None, :, None], 32, 0).repeat(3, 2)
    noise = g.integers(0, 256, (4, 6, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 8x8 blocks survive yuv420p
    with VideoWriter(tmp_path / "cut.mp4", F(25), crf=0) as w:
        for frame in (smooth, smooth, noise, noise):
            w.write(frame)
    model = HybridVFI.from_pretrained(tiny_model_dir)
    summary = interpolate_video(model, tmp_path / "cut.mp4", tmp_path / "out.mp4", factor=4, progress=False)
    assert summary == {"frames_in": 4, "frames_out": 16, "fps_in": 25.0, "fps_out": 100.0, "scene_cuts": 1}
    with VideoReader(tmp_path / "out.mp4") as r, VideoReader(tmp_path / "cut.mp4") as source:
        out, frames = [f.astype(int) for f in r], [f.astype(int) for f in source]
    for k, nearest in ((5, 1), (6, 2), (7, 2)):  # between input 1 (smooth) and input 2 (blocks)
        assert np.abs(out[k] - frames[nearest]).mean() < 4
    assert json.dumps(summary)
