import numpy as np
import pytest
import torch

from videostate.depth.evaluation import evaluate_sequence, format_table, load_trajectory_log, plot_curves
from videostate.depth.flow import clip_static_masks
from videostate.depth.metrics import align_sequence, flicker, metric_depth_for_tae, temporal_alignment_error


def test_load_trajectory_log(tmp_path):
    poses = np.random.default_rng(0).normal(size=(2, 4, 4))
    lines = []
    for i, p in enumerate(poses):
        lines.append(f"{i} {i} {i + 1}")
        lines += [" ".join(f"{v:.8f}" for v in row) for row in p]
    (tmp_path / "t.log").write_text("\n".join(lines) + "\n")
    np.testing.assert_allclose(load_trajectory_log(tmp_path / "t.log"), poses, atol=1e-8)
    (tmp_path / "bad.log").write_text("0 0 1\n1 0 0 0\n")
    with pytest.raises(ValueError, match="multiple of 5"):
        load_trajectory_log(tmp_path / "bad.log")


def test_evaluate_sequence_against_ground_truth(tmp_path):
    torch.manual_seed(0)
    N, H, W = 3, 24, 32
    frames = torch.rand(1, 3, H, W).repeat(N, 1, 1, 1)  # a still scene: static pixels everywhere
    gt = torch.rand(N, H, W, dtype=torch.float64) * 3 + 1
    exact = 2.0 / gt + 0.5  # an affine function of the true disparity
    noisy = exact + 0.05 * torch.rand(N, H, W, dtype=torch.float64)
    poses = np.repeat(np.eye(4)[None], N, axis=0)
    poses[:, 2, 3] = [0.0, 0.1, 0.2]
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    result = evaluate_sequence(
        {"teacher": exact, "model": noisy}, frames, gt.float(), poses, K, flow_preset="ultrafast"
    )
    teacher, model = result.metrics["teacher"], result.metrics["model"]
    assert teacher["abs_rel_gt"] == pytest.approx(0.0, abs=1e-6) and teacher["delta1_gt"] == 1.0
    assert teacher["abs_rel_teacher"] == pytest.approx(0.0, abs=1e-12)
    assert model["abs_rel_teacher"] > 0
    expected_tae = temporal_alignment_error(metric_depth_for_tae(noisy, gt.float()), poses, K)
    assert model["tae"] == pytest.approx(expected_tae)
    static = clip_static_masks(frames, preset="ultrafast")
    assert static.float().mean() > 0.9
    aligned = align_sequence(noisy, 1.0 / gt.float().double())
    assert model["flicker"] == pytest.approx(flicker(aligned, static))
    assert "teacher" in format_table(result) and "tae" in format_table(result)
    plot_curves(result, tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["abs_rel_teacher.png", "flicker.png"]
