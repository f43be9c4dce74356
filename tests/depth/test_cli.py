import argparse

import numpy as np
import torch

from videostate.data.video import VideoReader, VideoWriter
from videostate.depth import VideoMambaDepth, VideoMambaDepthConfig
from videostate.depth.cli import add_depth_arguments, add_depth_precompute_arguments
from videostate.depth.streaming import KeyframeConfig, KeyframeStreamer

from .tiny import load_tiny_teacher


def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def write_video(path, frames=5, fps=12):
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps) as writer:
        for _ in range(frames):
            writer.write(rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8))


def test_depth_command_writes_video_at_input_rate_and_raw_depth(teacher_dir, tmp_path):
    torch.manual_seed(0)
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir), VideoMambaDepthConfig(num_blocks=(1, 1, 1, 1), d_state=4))
    model.save_pretrained(tmp_path / "model")
    write_video(tmp_path / "in.mp4")
    args = parse(
        add_depth_arguments,
        [
            str(tmp_path / "in.mp4"),
            "-o",
            str(tmp_path / "out.mp4"),
            "--model",
            str(tmp_path / "model"),
            "--side-by-side",
            "--raw",
            str(tmp_path / "raw.npz"),
            "--keyframe-interval",
            "2",
            "--no-progress",
        ],
    )
    assert args.func(args) == 0
    with VideoReader(tmp_path / "out.mp4") as out, VideoReader(tmp_path / "in.mp4") as src:
        assert len(out) == len(src) == 5 and out.fps == src.fps
        assert (out.width, out.height) == (96, 32)
        frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in src]
    raw = np.load(tmp_path / "raw.npz")["depth"]
    assert raw.shape == (5, 32, 48) and raw.dtype == np.float16
    streamer = KeyframeStreamer(VideoMambaDepth.from_pretrained(tmp_path / "model").eval(), KeyframeConfig(interval=2))
    expected = np.stack([streamer(f)[0, 0].numpy() for f in frames]).astype(np.float16)
    np.testing.assert_allclose(raw.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_depth_command_png_output_and_precompute(teacher_dir, tmp_path):
    write_video(tmp_path / "in.mp4", frames=3)
    args = parse(
        add_depth_arguments,
        [
            *(str(tmp_path / "in.mp4"), "-o", str(tmp_path / "out.mp4"), "--teacher", str(teacher_dir)),
            *("--input-size", "28", "--raw", str(tmp_path / "png"), "--no-progress"),
        ],
    )
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
        "scale.json",
    ]
    args = parse(
        add_depth_precompute_arguments,
        [str(tmp_path / "in.mp4"), "-o", str(tmp_path / "cache"), "--teacher", str(teacher_dir), "--input-size", "28"],
    )
    assert args.func(args) == 0
    assert np.load(tmp_path / "cache" / "in.npy").shape == (3, 32, 48)
