import pytest
import torch
import torch.nn.functional as F
from transformers import DepthAnythingForDepthEstimation

from videostate.depth import DepthAnythingTeacher
from videostate.depth.teacher import network_size

from .tiny import INPUT_SIZE, load_tiny_teacher, save_tiny_teacher


def reference_pixel_values(rgb, size):
    """The official recipe written out: bicubic resize to ``size``, clamp, ImageNet normalisation."""
    x = F.interpolate(rgb, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=rgb.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def test_loaded_teacher_is_frozen_and_in_eval(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir)
    teacher.train()
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(480, 640, (518, 686)), (518, 518, (518, 518)), (540, 960, (518, 924)), (1080, 1920, (518, 924))],
)
def test_network_size_matches_depth_anything_lower_bound(height, width, expected):
    assert network_size(height, width, 518, 14) == expected


def test_network_size_is_a_multiple_keeping_aspect():
    for h, w in [(100, 333), (333, 100), (57, 57)]:
        nh, nw = network_size(h, w, 28, 14)
        assert nh % 14 == 0 and nw % 14 == 0 and min(nh, nw) >= 28
        assert abs(nh / nw - h / w) < 14 / min(nh, nw) * 2


def test_predict_depth_equals_transformers_then_resized(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir, torch.float64)
    hf = DepthAnythingForDepthEstimation.from_pretrained(teacher_dir).double().eval()
    rgb = torch.rand(2, 3, 31, 47, dtype=torch.float64)
    size = network_size(31, 47, INPUT_SIZE, 14)
    with torch.no_grad():
        expected = hf(pixel_values=reference_pixel_values(rgb, size)).predicted_depth[:, None]
    expected = F.interpolate(expected, size=(31, 47), mode="bilinear", align_corners=True)
    got = teacher.predict_depth(rgb)
    assert got.shape == (2, 1, 31, 47)
    assert got.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_encode_frame_gives_the_reassembled_neck_maps(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir, torch.float64)
    hf = DepthAnythingForDepthEstimation.from_pretrained(teacher_dir).double().eval()
    rgb = torch.rand(1, 3, 28, 42, dtype=torch.float64)
    feats = teacher.encode_frame(rgb)
    assert sorted(feats) == [0, 1, 2, 3]
    assert [tuple(f.shape) for f in feats.values()] == [(1, 4, 8, 12), (1, 8, 4, 6), (1, 8, 2, 3), (1, 16, 1, 2)]
    with torch.no_grad():
        fused = hf.neck(list(hf.backbone(reference_pixel_values(rgb, (28, 42))).feature_maps), 2, 3)
        via_feats = hf.neck.fusion_stage([conv(feats[i]) for i, conv in enumerate(hf.neck.convs)])
    for a, b in zip(fused, via_feats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rgb_validation(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        teacher.predict_depth(torch.rand(3, 28, 28))
    with pytest.raises(TypeError, match="floating"):
        teacher.encode_frame(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="DepthAnythingForDepthEstimation"):
        DepthAnythingTeacher(torch.nn.Linear(2, 2))


def test_metric_teacher_round_trip(tmp_path):
    save_tiny_teacher(tmp_path, depth_estimation_type="metric")
    teacher = load_tiny_teacher(tmp_path)
    depth = teacher.predict_depth(torch.rand(1, 3, 28, 28))
    assert (depth > 0).all() and (depth < 20).all()
