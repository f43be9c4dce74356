"""Checks on the real sample data in ../shared/data (skipped when it is absent)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from videostate.data.video import frame_files
from videostate.depth.data import DepthDataConfig, DepthVideoDataset, read_depth_png
from videostate.depth.evaluation import load_trajectory_log
from videostate.depth.flow import static_mask
from videostate.depth.metrics import temporal_alignment_error

DATA = Path("../shared/data")
RGBD = DATA / "rgbd" / "icl_livingroom1"
K_ICL = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])

needs_rgbd = pytest.mark.skipif(not RGBD.is_dir(), reason="sample RGB-D data absent")


@needs_rgbd
def test_ground_truth_is_temporally_consistent_under_its_poses():
    """The TAE of the ground truth with the camera-to-world poses is small; with the poses inverted it is not."""
    poses = load_trajectory_log(RGBD / "trajectory.log")[:8]
    depth = np.stack([read_depth_png(f, 1000.0) for f in frame_files(RGBD / "depth")[:8]])
    consistent = temporal_alignment_error(depth, poses, K_ICL)
    assert consistent < 1.0
    assert temporal_alignment_error(depth, np.linalg.inv(poses), K_ICL) > 5 * consistent


@needs_rgbd
def test_rgbd_clips_have_valid_metric_depth():
    config = DepthDataConfig(
        sources=(str(RGBD / "image"),),
        depth_sources=(str(RGBD / "depth"),),
        clip_length=2,
        crop_size=(224, 294),
        static_masks=False,
    )
    sample = DepthVideoDataset(config)[0]
    depth = sample["depth"][sample["valid"]]
    assert sample["valid"].float().mean() > 0.9 and 0.5 < depth.min() and depth.max() < 10


@pytest.mark.skipif(not (DATA / "videos" / "davis_rollercoaster.mp4").is_file(), reason="sample video absent")
def test_static_mask_on_a_moving_camera_video():
    from videostate.data.video import VideoReader

    with VideoReader(DATA / "videos" / "davis_rollercoaster.mp4") as reader:
        f0, f1 = (cv2.resize(reader[i], (480, 270)) for i in (0, 1))
    mask = static_mask(f0, f1)
    assert 0.2 < mask.mean() < 0.95  # camera motion removed: much of the scene is static, not all of it
