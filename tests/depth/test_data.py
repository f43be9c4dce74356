"""Depth data, training and evaluation on frame folders without PyAV."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def write_frames(folder: Path, count: int, size=(20, 30), names="{:d}.jpg"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / names.format(i)), rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return folder


def test_training_data_and_evaluation_of_frame_folders_run_without_pyav(tmp_path, teacher_dir):
    """With ``import av`` failing, frame folders are read, depth clips trained on, and ``videostate depth-eval``
    runs."""
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
        from videostate.data.video import VideoReader
        from videostate.depth.data import DepthDataConfig, DepthVideoDataset, collate_depth
        from videostate.depth.training import DepthModelConfig, build_model, make_train_step

        seq = {str(tmp_path / "seq")!r}
        with VideoReader(seq + "/image", format="tensor") as reader:
            frames = torch.stack(list(reader))
        data = DepthDataConfig(sources=(seq + "/image",), depth_sources=(seq + "/depth",), clip_length=3,
                               chunk_size=2, p_single_frame=0.0, crop_size=(28, 28), flow_preset="ultrafast")
        batch = collate_depth([DepthVideoDataset(data)[0]])
        model_config = DepthModelConfig(teacher={str(teacher_dir)!r}, input_size=28)
        logs = make_train_step(model_config, data)(build_model(model_config), batch, lambda l: l.backward())
        status = main(["depth-eval", seq + "/image", "--teacher", {str(teacher_dir)!r}, "--input-size", "28",
                       "--gt-depth", seq + "/depth", "--device", "cpu", "--json", seq + "/metrics.json"])
        print(json.dumps({{"status": status, "loss": float(logs["loss"]), "clip": list(batch["clip"].shape),
                          "frames": list(frames.shape)}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["frames"] == [4, 3, 28, 42]
    assert result["status"] == 0 and result["clip"] == [1, 3, 3, 28, 28] and np.isfinite(result["loss"])
    metrics = json.loads((tmp_path / "seq" / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "model"} and "abs_rel_gt" in metrics["model"]
