import numpy as np
import pytest
import torch

from videostate.depth.metrics import (
    abs_rel_delta1,
    depth_metrics_against_gt,
    depth_metrics_against_teacher,
    flicker,
    temporal_alignment_error,
    temporal_variance,
)


def loop_tae(depth, poses, K):
    """Oracle: per-pixel loops of the reprojection in both directions."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    def one(d1, d2, T):
        H, W = d1.shape
        proj = np.zeros((H, W))
        for y in range(H):
            for x in range(W):
                p = np.array([(x - cx) * d1[y, x] / fx, (y - cy) * d1[y, x] / fy, d1[y, x], 1.0])
                q = T @ p
                if q[2] <= 0:
                    continue
                u, v = round(q[0] * fx / q[2] + cx), round(q[1] * fy / q[2] + cy)
                if 0 <= u < W and 0 <= v < H:
                    proj[v, u] = q[2]
        errs = [
            abs(proj[y, x] - d2[y, x]) / d2[y, x] for y in range(H) for x in range(W) if proj[y, x] > 0 and d2[y, x] > 0
        ]
        return float(np.mean(errs)) if errs else 0.0

    total = 0.0
    for k in range(len(depth) - 1):
        T = np.linalg.inv(poses[k + 1]) @ poses[k]
        total += one(depth[k], depth[k + 1], T) + one(depth[k + 1], depth[k], np.linalg.inv(T))
    return 100 * total / (2 * (len(depth) - 1))


def poses_moving_forward(n, step):
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = step * np.arange(n)
    return poses


K = np.array([[10.0, 0, 4.5], [0, 10.0, 3.5], [0, 0, 1]])


def test_tae_is_zero_for_consistent_depth_of_a_plane():
    depth = np.stack([np.full((8, 10), 2.0 - 0.5 * k) for k in range(3)])
    assert temporal_alignment_error(depth, poses_moving_forward(3, 0.5), K) == pytest.approx(0.0, abs=1e-12)


def test_tae_equals_loops_on_random_depth_and_motion():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, size=(3, 8, 10))
    poses = poses_moving_forward(3, 0.2)
    angle = 0.05
    poses[1, :3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    poses[2, 0, 3] = 0.1
    got = temporal_alignment_error(depth, poses, K)
    assert got > 1.0
    assert got == pytest.approx(loop_tae(depth, poses, K), rel=1e-12)


def test_abs_rel_delta1_formula():
    ref = torch.tensor([1.0, 2.0, 4.0, 8.0])
    pred = torch.tensor([1.1, 1.0, 4.0, 10.5])
    mask = torch.tensor([True, True, True, False])
    abs_rel, delta1 = abs_rel_delta1(pred, ref, mask)
    assert abs_rel == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert delta1 == pytest.approx(2 / 3)


def test_metrics_against_gt_and_teacher_are_alignment_invariant():
    torch.manual_seed(0)
    gt = torch.rand(3, 6, 7, dtype=torch.float64) * 5 + 0.5
    gt[0, 0, 0] = 0.0  # invalid
    pred = 3.0 / gt.clamp_min(0.1) + 0.25
    m = depth_metrics_against_gt(pred, gt)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9) and m["delta1"] == 1.0
    teacher = torch.rand(3, 6, 7, dtype=torch.float64) + 0.5
    m = depth_metrics_against_teacher(2 * teacher + 1, teacher)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9) and m["delta1"] == 1.0
    noisy = depth_metrics_against_teacher(teacher + 0.3 * torch.rand_like(teacher), teacher)
    assert noisy["abs_rel"] > 0.01


def test_flicker_and_temporal_variance_formulas():
    torch.manual_seed(1)
    depth = torch.rand(4, 3, 5, dtype=torch.float64) + 1
    static = torch.rand(3, 3, 5) > 0.3
    num, count, level = 0.0, 0, 0.0
    for t in range(3):
        for y in range(3):
            for x in range(5):
                if static[t, y, x]:
                    num += abs(depth[t + 1, y, x] - depth[t, y, x]).item()
                    level += 0.5 * (depth[t + 1, y, x] + depth[t, y, x]).item()
                    count += 1
    assert flicker(depth, static) == pytest.approx((num / count) / (level / count))
    always = static.all(0)
    vals = depth[:, always]
    expected = np.mean([np.var(vals[:, i].numpy()) for i in range(vals.shape[1])]) / vals.mean().item() ** 2
    assert temporal_variance(depth, static) == pytest.approx(expected)
    still = torch.ones(4, 3, 5, dtype=torch.float64)
    assert flicker(still, static) == 0.0
    with pytest.raises(ValueError, match=r"\(N-1, H, W\)"):
        flicker(depth, static[:2])
