"""``videostate segment``: overlay video at the input's frame rate; --json equals the offline clip's tracks."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from tests.data.synthetic import write_video
from videostate.data.cli import describe
from videostate.data.video import VideoReader
from videostate.segmentation import instance_tracks, rle
from videostate.segmentation.cli import add_arguments
from videostate.segmentation.inference import overlay, preprocess_frames, track_colors

from .tiny import tiny_model


def test_segment_command_streams_and_exports_the_offline_tracks(tmp_path):
    write_video(tmp_path / "in.mp4", num_frames=5, height=20, width=24, fps=12, audio=True)
    model = tiny_model(dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            str(tmp_path / "in.mp4"),
            "-o",
            str(tmp_path / "out.mp4"),
            "--model",
            str(tmp_path / "model"),
            "--json",
            str(tmp_path / "res.json"),
            "--top-k",
            "3",
            "--threshold",
            "0.0",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    source, written = VideoReader(tmp_path / "in.mp4", format="tensor"), VideoReader(tmp_path / "out.mp4")
    assert len(written) == len(source) == 5 and written.fps == source.fps == 12
    assert (written.width, written.height) == (24, 20)
    assert describe(str(tmp_path / "out.mp4"))["audio"] is not None

    frames = torch.stack(list(source))
    with torch.no_grad():
        clip = model(preprocess_frames(frames, 16)[None])
    tracks = instance_tracks(clip.class_queries_logits[0], clip.masks_queries_logits[0], 3, output_size=(20, 24))
    results = json.loads((tmp_path / "res.json").read_text())
    assert [(r["category_id"], r["video_id"]) for r in results] == [(t.label + 1, 1) for t in tracks]
    for result, track in zip(results, tracks, strict=True):
        assert result["score"] == pytest.approx(track.score, abs=1e-6)
        decoded = np.stack([rle.decode(s) for s in result["segmentations"]])
        assert np.array_equal(decoded, track.masks.numpy())


def test_overlay_and_colors():
    colors = track_colors(5)
    assert colors.shape == (5, 3) and len({tuple(c) for c in colors}) == 5
    frame = np.full((2, 3, 3), 100, dtype=np.uint8)
    track_map = np.array([[-1, 0, 4], [-1, -1, 0]])
    out = overlay(frame, track_map, colors, alpha=0.5)
    assert np.array_equal(out[0, 0], frame[0, 0])
    assert np.array_equal(out[0, 2], np.round(0.5 * 100 + 0.5 * colors[4].astype(float)).astype(np.uint8))


def test_preprocess_normalises_with_imagenet_statistics():
    frames = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    out = preprocess_frames(frames, 8)
    torch.testing.assert_close(out[:, 1], (frames[:, 1] - 0.456) / 0.224)
