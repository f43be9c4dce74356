import torch
from transformers import DepthAnythingForDepthEstimation

from .tiny import load_tiny_teacher


def test_decoder_copied_from_teacher_reproduces_transformers(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir, torch.float64)
    hf = DepthAnythingForDepthEstimation.from_pretrained(teacher_dir).double().eval()
    decoder = teacher.build_decoder()
    assert all(p.requires_grad for p in decoder.parameters())
    pixel_values = torch.randn(2, 3, 42, 28, dtype=torch.float64)
    with torch.no_grad():
        expected = hf(pixel_values=pixel_values).predicted_depth
        maps = hf.neck.reassemble_stage(list(hf.backbone(pixel_values).feature_maps), 3, 2)
        got = decoder(maps, (42, 28))
    assert got.shape == (2, 1, 42, 28)
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-12, atol=1e-12)


def test_decoder_is_a_copy(teacher_dir):
    teacher = load_tiny_teacher(teacher_dir)
    decoder = teacher.build_decoder()
    with torch.no_grad():
        decoder.head.conv3.bias.add_(1.0)
    assert not torch.equal(decoder.head.conv3.bias, teacher.model.head.conv3.bias)
