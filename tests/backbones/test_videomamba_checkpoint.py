import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.backbones.helpers import TINY, randomize, video
from videostate.backbones.videomamba import (
    VideoMambaEncoder,
    VisionMamba,
    build_videomamba,
    load_checkpoint,
    videomamba_tiny,
)
from videostate.backbones.videomamba_checkpoint import interpolate_spatial

OFFICIAL = json.loads((Path(__file__).parent / "videomamba_tiny_official_keys.json").read_text())


def random_state_dict(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items() if not k.startswith("_")}


def assert_loaded(model, state_dict, skip=()):
    for key, value in model.state_dict().items():
        if key not in skip:
            torch.testing.assert_close(value, state_dict[key], msg=key)


@pytest.fixture(scope="module")
def tiny_classifier():
    return videomamba_tiny(num_classes=400, num_frames=8)


def test_official_classifier_keys_load_strictly(tiny_classifier, tmp_path):
    shapes = OFFICIAL["video_sm_tiny_k400_f8"]
    assert {k: list(v.shape) for k, v in tiny_classifier.state_dict().items()} == shapes
    state_dict = random_state_dict(shapes)
    tiny_classifier.load_state_dict(state_dict, strict=True)
    torch.save(random_state_dict(shapes, seed=1), tmp_path / "videomamba_t16_k400_f8_res224.pth")
    report = load_checkpoint(tiny_classifier, tmp_path / "videomamba_t16_k400_f8_res224.pth", ckpt_num_frame=8)
    assert report.resized == {} and report.dropped == [] and report.initialised == []
    assert_loaded(tiny_classifier, random_state_dict(shapes, seed=1))


def test_official_pretraining_checkpoint_builds_the_encoder(tmp_path):
    shapes = OFFICIAL["video_sm_tiny_mask_pretrain_f8"]
    state_dict = random_state_dict(shapes)
    path = tmp_path / "videomamba_t16_mask_pt_f8.pth"
    torch.save(state_dict, path)
    config = SimpleNamespace(
        vision_encoder=SimpleNamespace(channels=3, pretrained=str(path), ckpt_num_frame=8, num_frames=8)
    )
    with pytest.warns(UserWarning, match="pool_norm"):
        model = build_videomamba(config)
    expected = {k for k in shapes if not k.startswith("clip_decoder.")} | {"pool_norm.weight", "pool_norm.bias"}
    assert set(model.state_dict()) == expected
    assert_loaded(model, state_dict, skip=("pool_norm.weight", "pool_norm.bias"))


def test_temporal_table_is_interpolated_linearly(tmp_path):
    source = randomize(VideoMambaEncoder(**{**TINY, "num_frames": 3}, pool_type="avg"))
    state_dict = source.state_dict()
    model = VideoMambaEncoder(**{**TINY, "num_frames": 5}, pool_type="avg")
    report = load_checkpoint(model, state_dict, ckpt_num_frame=3)
    assert report.resized == {"temporal_pos_embedding": "linear 3 -> 5 positions"}
    old, new = state_dict["temporal_pos_embedding"][0], model.temporal_pos_embedding[0].detach()
    for i in range(5):  # align_corners=False: source coordinate (i + 0.5) * 3 / 5 - 0.5, clamped to [0, 2]
        pos = min(max((i + 0.5) * 3 / 5 - 0.5, 0.0), 2.0)
        lo = int(pos)
        hi = min(lo + 1, 2)
        torch.testing.assert_close(new[i], old[lo] * (1 - (pos - lo)) + old[hi] * (pos - lo))


def test_spatial_positions_are_resized_row_major():
    rows = torch.arange(4.0).repeat_interleave(4)  # a 4x4 grid whose value depends on the row only
    pos_embed = torch.cat([torch.full((1,), -7.0), rows])[None, :, None].repeat(1, 1, 3)
    resized = interpolate_spatial(pos_embed, (2, 6))
    assert resized.shape == (1, 13, 3)
    assert torch.all(resized[0, 0] == -7.0)
    grid = resized[0, 1:, 0].reshape(2, 6)
    torch.testing.assert_close(grid, grid[:, :1].expand(2, 6))  # still constant along each row
    assert grid[1, 0] > grid[0, 0]


def test_image_checkpoint_is_inflated_and_its_head_dropped():
    model = VisionMamba(**TINY, kernel_size=2, num_classes=3)
    source = randomize(VisionMamba(**{**TINY, "img_size": 24}, num_classes=10))
    state_dict = {k: v for k, v in source.state_dict().items() if k != "temporal_pos_embedding"}
    state_dict["patch_embed.proj.weight"] = state_dict["patch_embed.proj.weight"][:, :, 0]  # 2D image kernel
    with pytest.warns(UserWarning, match="temporal_pos_embedding"):
        report = load_checkpoint(model, state_dict)
    assert set(report.resized) == {"patch_embed.proj.weight", "pos_embed"}
    assert report.dropped == ["head.weight", "head.bias"]
    assert report.initialised == ["temporal_pos_embedding", "head.weight", "head.bias"]
    weight = model.patch_embed.proj.weight.detach()
    torch.testing.assert_close(weight[:, :, 1], state_dict["patch_embed.proj.weight"])
    assert torch.all(weight[:, :, 0] == 0)


def test_final_norm_is_renamed_between_layouts():
    classifier = randomize(VisionMamba(**TINY, num_classes=3))
    encoder = VideoMambaEncoder(**TINY, add_pool_norm=False)
    report = load_checkpoint(encoder, classifier.state_dict(), ckpt_num_frame=4)
    assert report.renamed == {"norm_f.weight": "norm.weight"}
    assert report.dropped == ["head.weight", "head.bias"]
    torch.testing.assert_close(encoder.norm.weight, classifier.norm_f.weight)


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_wrapped_checkpoints_are_refused_with_the_fix(wrapper, tmp_path):
    model = VideoMambaEncoder(**TINY)
    torch.save({wrapper: model.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=rf"wrapped as \{{'{wrapper}'.*torch.load\(path\)\['{wrapper}'\]"):
        load_checkpoint(model, tmp_path / "wrapped.pth", ckpt_num_frame=4)


def test_mismatches_are_listed():
    model = VideoMambaEncoder(**TINY)
    state_dict = dict(model.state_dict())
    del state_dict["layers.1.mixer.D_b"]
    state_dict["layers.7.mixer.D"] = torch.zeros(3)
    state_dict["cls_token"] = torch.zeros(1, 1, 8)
    message = r"missing keys \['layers.1.mixer.D_b'\], unexpected keys \['layers.7.mixer.D'\].*cls_token: checkpoint"
    with pytest.raises(KeyError, match=message):
        load_checkpoint(model, state_dict, ckpt_num_frame=4)
    prefixed = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match=r"carry the prefix 'backbone.'"):
        load_checkpoint(model, prefixed, ckpt_num_frame=4)


def test_ckpt_num_frame_is_required_and_checked():
    model = VideoMambaEncoder(**TINY)
    with pytest.raises(ValueError, match=r"ckpt_num_frame is required.*4 entries"):
        load_checkpoint(model, model.state_dict())
    with pytest.raises(ValueError, match=r"ckpt_num_frame=8 gives 8 temporal positions.*has 4"):
        load_checkpoint(model, model.state_dict(), ckpt_num_frame=8)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_checkpoint(model, "no/such/checkpoint.pth", ckpt_num_frame=4)


def test_safetensors_checkpoint(tmp_path):
    source = randomize(VideoMambaEncoder(**TINY))
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    model = VideoMambaEncoder(**TINY)
    load_checkpoint(model, tmp_path / "weights.safetensors", ckpt_num_frame=4)
    assert_loaded(model, source.state_dict())


@pytest.mark.parametrize("cls", [VisionMamba, VideoMambaEncoder])
def test_save_and_load_pretrained_round_trip(cls, tmp_path):
    kwargs = {"num_classes": 3} if cls is VisionMamba else {"pool_type": "avg", "rms_norm": False}
    model = randomize(cls(**TINY, **kwargs)).eval()
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path / "model").eval()
    x = video(1, 4, dtype=torch.float32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    other = VideoMambaEncoder if cls is VisionMamba else VisionMamba
    with pytest.raises(ValueError, match=f"holds a {cls.__name__}"):
        other.from_pretrained(tmp_path / "model")


def test_from_pretrained_keeps_the_dtype_and_checks_files(tmp_path):
    randomize(VideoMambaEncoder(**TINY)).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert VideoMambaEncoder.from_pretrained(tmp_path / "bf16").cls_token.dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match=r"config.json and model.safetensors"):
        VideoMambaEncoder.from_pretrained(tmp_path)


def test_other_classifier_heads_and_non_tensor_entries():
    source = VisionMamba(**TINY, num_classes=5)
    with pytest.raises(
        KeyError, match=r"head.weight: checkpoint \(5, 16\), model \(3, 16\).*drop the checkpoint's head"
    ):
        load_checkpoint(VisionMamba(**TINY, num_classes=3), source.state_dict(), ckpt_num_frame=4)
    with pytest.raises(TypeError, match=r"not tensors: \['epoch'\]"):
        load_checkpoint(source, {**source.state_dict(), "epoch": 3}, ckpt_num_frame=4)
