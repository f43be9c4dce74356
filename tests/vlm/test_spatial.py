import math
from pathlib import Path

import pytest
import torch

from videostate.vlm import SpatialFeatures, SpatialFusion
from videostate.vlm.spatial import (
    geometry_tokens_from_points,
    load_rgbd_sequence,
    load_vlm3r_features,
    points_from_depth,
    read_open3d_trajectory,
    sinusoidal_encoding,
    spatial_features_from_rgbd,
)

RGBD = Path("../shared/data/rgbd/icl_livingroom1")
ICL_INTRINSICS = torch.tensor([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]], dtype=torch.float64)


def _rotation(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def test_points_from_depth_matches_the_pinhole_formula_per_pixel():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) + 0.5
    depth[0, 1, 2] = 0.0  # a sensor hole
    depth[1, 0, 0] = float("nan")
    K = torch.tensor([[50.0, 0, 1.5], [0, 60.0, 1.0], [0, 0, 1]], dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    poses[1, :3, :3] = _rotation(0.7)
    poses[1, :3, 3] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    points = points_from_depth(depth, K, poses)
    for n in range(2):
        for v in range(3):
            for u in range(4):
                z = float(depth[n, v, u])
                if not math.isfinite(z) or z <= 0:
                    assert torch.isnan(points[n, v, u]).all()
                    continue
                cam = torch.tensor([(u - 1.5) * z / 50.0, (v - 1.0) * z / 60.0, z], dtype=torch.float64)
                world = poses[n, :3, :3] @ cam + poses[n, :3, 3]
                torch.testing.assert_close(points[n, v, u], world)


def test_points_from_depth_errors():
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        points_from_depth(torch.ones(4, 4), torch.eye(3), torch.eye(4)[None])
    with pytest.raises(ValueError, match="n=2"):
        points_from_depth(torch.ones(2, 4, 4), torch.eye(3), torch.eye(4)[None])


def test_read_open3d_trajectory(tmp_path):
    poses = torch.randn(3, 4, 4, dtype=torch.float64)
    text = ""
    for i, pose in enumerate(poses):
        text += f"{i} {i} {i + 1}\n" + "\n".join(" ".join(f"{x:.17g}" for x in row) for row in pose.tolist()) + "\n"
    (tmp_path / "trajectory.log").write_text(text)
    torch.testing.assert_close(read_open3d_trajectory(tmp_path / "trajectory.log"), poses, rtol=0, atol=0)
    (tmp_path / "bad.log").write_text("0 0 1\n1 0 0 0\n")
    with pytest.raises(ValueError, match="blocks of 5 lines"):
        read_open3d_trajectory(tmp_path / "bad.log")


def test_load_vlm3r_features_selects_frames(tmp_path):
    data = {
        "camera_tokens": torch.randn(6, 1, 8),
        "patch_tokens": torch.randn(6, 9, 8),
        "pts3d": torch.randn(6, 6, 6, 3),
        "conf": torch.rand(6, 6, 6),
    }
    torch.save(data, tmp_path / "scene.pt")
    features = load_vlm3r_features(tmp_path / "scene.pt", [0, 2, 5])
    assert features.shape == (1, 3)
    torch.testing.assert_close(features.patch_tokens[0], data["patch_tokens"][[0, 2, 5]])
    torch.testing.assert_close(features.confidence[0], data["conf"][[0, 2, 5]])
    torch.save({"camera_tokens": torch.randn(6, 1, 8), "patch_tokens": torch.randn(6, 9, 8)}, tmp_path / "tok.pt")
    assert load_vlm3r_features(tmp_path / "tok.pt").points is None
    with pytest.raises(IndexError, match=r"frame indices \[6\] are out of range"):
        load_vlm3r_features(tmp_path / "scene.pt", [0, 6])
    torch.save({"patch_tokens": torch.randn(6, 9, 8)}, tmp_path / "partial.pt")
    with pytest.raises(KeyError, match=r"missing keys \['camera_tokens'\]"):
        load_vlm3r_features(tmp_path / "partial.pt")


def test_spatial_features_validation():
    with pytest.raises(ValueError, match="same batch, frames and d"):
        SpatialFeatures(camera_tokens=torch.zeros(1, 2, 1, 8), patch_tokens=torch.zeros(1, 3, 9, 8))
    with pytest.raises(ValueError, match=r"points must have shape \(batch, frames, H, W, 3\)"):
        SpatialFeatures(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 9, 8), points=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="confidence must have the points' shape"):
        SpatialFeatures(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 9, 8), confidence=torch.zeros(1, 2, 4, 4))
    a = SpatialFeatures(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 9, 8))
    assert SpatialFeatures.stack([a, a]).shape == (2, 2)
    with pytest.raises(ValueError, match="points is given for some videos"):
        SpatialFeatures.stack([a, SpatialFeatures(a.camera_tokens, a.patch_tokens, torch.zeros(1, 2, 4, 4, 3))])


def test_geometry_tokens_encode_cell_points_and_camera():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(2, 4, 4, 3, generator=g, dtype=torch.float64)
    points[0, :2, :2] = float("nan")  # one empty cell
    poses = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    poses[1, :3, 3] = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    camera, patch = geometry_tokens_from_points(points, poses, (2, 2), 12)
    assert camera.shape == (2, 1, 12) and patch.shape == (2, 4, 12)
    assert bool((patch[0, 0] == 0).all())
    mean = points[1, 2:, :2].reshape(-1, 3).mean(0)  # cell (1, 0) of frame 1
    freqs = torch.tensor([0.25, 0.5], dtype=torch.float64)
    angles = torch.cat([mean[0] * freqs, mean[1] * freqs, mean[2] * freqs])
    torch.testing.assert_close(patch[1, 2], torch.cat([angles.sin(), angles.cos()]))
    torch.testing.assert_close(
        camera[1, 0], sinusoidal_encoding(poses[1, :3, 3], 12) + sinusoidal_encoding(poses[1, :3, 2], 12)
    )
    with pytest.raises(ValueError, match="multiple of 6"):
        geometry_tokens_from_points(points, poses, (2, 2), 10)


@pytest.mark.skipif(not RGBD.is_dir(), reason="sample RGB-D data (../shared/data) is absent")
def test_rgbd_sample_points_are_consistent_across_views_and_feed_the_fusion():
    seq = load_rgbd_sequence(RGBD, ICL_INTRINSICS, frame_indices=[0, 10])
    points, depth = seq["points"], seq["depth"]
    assert seq["frames"].shape == (2, 3, 480, 640) and points.shape == (2, 480, 640, 3)
    assert torch.isnan(points[depth == 0]).all() and torch.isfinite(points[depth > 0]).all()
    # a world point seen in frame 0 projects into frame 10 with the depth frame 10 measures there
    world = points[0, 200:280:8, 280:360:8].reshape(-1, 3)
    world = world[torch.isfinite(world).all(-1)]
    to_cam = torch.linalg.inv(seq["cam_to_world"][1])
    cam = world @ to_cam[:3, :3].T + to_cam[:3, 3]
    pix = cam @ ICL_INTRINSICS.T
    u, v = (pix[:, 0] / pix[:, 2]).round().long(), (pix[:, 1] / pix[:, 2]).round().long()
    inside = (u >= 0) & (u < 640) & (v >= 0) & (v < 480) & (cam[:, 2] > 0)
    measured = depth[1, v[inside], u[inside]]
    agree = ((measured - cam[inside, 2]).abs() < 0.1 * cam[inside, 2]) & (measured > 0)
    assert inside.sum() > 20 and agree.float().mean() > 0.8
    features = spatial_features_from_rgbd(points.float(), seq["cam_to_world"].float(), 16, 24, frame_size=32)
    fusion = SpatialFusion(32, 24, num_heads=2, alignment_heads=2).eval()
    fused = fusion(torch.randn(2, 16, 32), features.patch_tokens[0], features.camera_tokens[0], features.points[0])
    assert torch.isfinite(fused).all()
