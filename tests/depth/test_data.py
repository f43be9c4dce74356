"""Frame reading and clip drawing of the depth data: equal to the shared video reader and clip sampler, and usable
without PyAV."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from videostate.data.clips import ClipSampler
from videostate.data.clips import video_ids as shared_video_ids
from videostate.data.video import VideoReader, VideoWriter
from videostate.depth.data import FrameSource, frame_files, random_clip_indices, video_ids

ROOT = Path(__file__).resolve().parents[2]


def write_frames(folder: Path, count: int, size=(20, 30), names="{:d}.jpg"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / names.format(i)), rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return folder


def test_frame_folder_reads_as_the_shared_reader(tmp_path):
    folder = write_frames(tmp_path / "frames", 12)  # 2.jpg before 10.jpg: natural order
    indices = [11, 2, 2, 10, 0]
    with FrameSource(folder) as source, VideoReader(folder, format="tensor") as reader:
        assert len(source) == len(reader) == 12 and (source.height, source.width) == (20, 30)
        assert torch.equal(source.read_clip(indices), reader.read_clip(indices))
        assert torch.equal(torch.stack(list(source)), reader.read_clip(range(12)))
    assert [p.name for p in frame_files(folder)][:3] == ["0.jpg", "1.jpg", "2.jpg"]


def test_video_file_reads_through_the_shared_reader(tmp_path):
    rng = np.random.default_rng(2)
    with VideoWriter(tmp_path / "v.mp4", 10) as writer:
        for _ in range(4):
            writer.write(rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8))
    with FrameSource(tmp_path / "v.mp4") as source, VideoReader(tmp_path / "v.mp4", format="tensor") as reader:
        assert len(source) == 4 and (source.height, source.width) == (16, 24)
        assert torch.equal(source.read_clip([3, 1]), reader.read_clip([3, 1]))


def test_frame_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FrameSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images ending in \.png"):
        FrameSource(tmp_path / "empty")
    folder = write_frames(tmp_path / "mixed", 2)
    cv2.imwrite(str(folder / "2.jpg"), np.zeros((8, 8, 3), np.uint8))
    with FrameSource(folder) as source, pytest.raises(ValueError, match=r"2\.jpg is 8x8; the folder's frames are 30x"):
        source.read_clip([2])
    with FrameSource(folder) as source, pytest.raises(IndexError, match="frame 3 out of range"):
        source.read_clip([3])


@pytest.mark.parametrize(("length", "clip_length", "stride"), [(60, 16, 1), (30, 4, 3), (5, 8, 1), (9, 3, 4)])
def test_random_clip_indices_draw_as_the_shared_sampler(length, clip_length, stride):
    sampler = ClipSampler(clip_length, stride, mode="random")
    for seed in range(5):
        ours = random_clip_indices(length, clip_length, stride, torch.Generator().manual_seed(seed))
        shared = sampler.indices(length, None, torch.Generator().manual_seed(seed))
        assert ours == shared


def test_video_ids_as_the_shared_ones(tmp_path):
    paths = [tmp_path / "a" / "x.mp4", tmp_path / "a" / "b" / "frames", tmp_path / "c.mkv"]
    assert video_ids(paths) == shared_video_ids(paths) == ["a/x", "a/b/frames", "c"]
    assert video_ids([tmp_path / "one.mp4"]) == shared_video_ids([tmp_path / "one.mp4"]) == ["one"]


def test_training_data_and_evaluation_of_frame_folders_run_without_pyav(tmp_path, teacher_dir):
    """With ``import av`` failing, depth clips are read, trained on, and ``videostate depth-eval`` runs."""
    write_frames(tmp_path / "seq" / "image", 4, size=(28, 42), names="{:05d}.png")
    (tmp_path / "seq" / "depth").mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        cv2.imwrite(str(tmp_path / "seq" / "depth" / f"{i:05d}.png"), rng.integers(500, 4000, (28, 42), np.uint16))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["av"] = None  # import av now fails, as where PyAV is not installed
        import torch
        from videostate.cli import main
        from videostate.depth.data import DepthDataConfig, DepthVideoDataset, collate_depth
        from videostate.depth.training import DepthModelConfig, build_model, make_train_step

        seq = {str(tmp_path / "seq")!r}
        data = DepthDataConfig(sources=(seq + "/image",), depth_sources=(seq + "/depth",), clip_length=3,
                               chunk_size=2, p_single_frame=0.0, crop_size=(28, 28), flow_preset="ultrafast")
        batch = collate_depth([DepthVideoDataset(data)[0]])
        model_config = DepthModelConfig(teacher={str(teacher_dir)!r}, input_size=28)
        logs = make_train_step(model_config, data)(build_model(model_config), batch, lambda l: l.backward())
        status = main(["depth-eval", seq + "/image", "--teacher", {str(teacher_dir)!r}, "--input-size", "28",
                       "--gt-depth", seq + "/depth", "--device", "cpu", "--json", seq + "/metrics.json"])
        print(json.dumps({{"status": status, "loss": float(logs["loss"]), "clip": list(batch["clip"].shape)}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 0 and result["clip"] == [1, 3, 3, 28, 28] and np.isfinite(result["loss"])
    metrics = json.loads((tmp_path / "seq" / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "model"} and "abs_rel_gt" in metrics["model"]
