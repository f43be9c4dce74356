import json

import pytest
import torch

from videostate.interpolation import HybridVFI, HybridVFIConfig, warp
from videostate.interpolation.model import centred_padding
from videostate.ssm import Mamba2

from .tiny import random_pair, tiny_config


@pytest.fixture(scope="module")
def phase1():
    torch.manual_seed(0)
    return HybridVFI(tiny_config()).eval()


@pytest.fixture(scope="module")
def phase2():
    torch.manual_seed(1)
    return HybridVFI(tiny_config(phase=2)).eval()


def test_phase1_output_is_the_blend_plus_residual(phase1):
    img0, img1 = random_pair(2, 16, 16)
    out = phase1.predict(img0, img1, 0.5)
    assert out.frame.shape == (2, 3, 16, 16) and out.flow is None
    expected = torch.clamp(out.mask * img0 + (1 - out.mask) * img1 + out.residual, 0, 1)
    torch.testing.assert_close(out.frame, expected)
    assert out.residual.abs().max() < 1 and 0 < out.mask.min() and out.mask.max() < 1


def test_phase2_output_blends_the_warped_frames(phase2):
    img0, img1 = random_pair(1, 16, 16, seed=1)
    out = phase2.predict(img0, img1, 0.3)
    assert out.flow.shape == (1, 4, 16, 16)
    warped0, warped1 = warp(img0, out.flow[:, :2]), warp(img1, out.flow[:, 2:])
    expected = torch.clamp(out.mask * warped0 + (1 - out.mask) * warped1 + out.residual, 0, 1)
    torch.testing.assert_close(out.frame, expected)


@pytest.mark.parametrize("model_name", ["phase1", "phase2"])
def test_any_size_is_padded_by_replication_and_cropped(model_name, request):
    model = request.getfixturevalue(model_name)
    img0, img1 = random_pair(1, 13, 21, seed=2)
    multiple = model.config.pad_multiple()
    left, right, top, bottom = centred_padding(13, 21, multiple)
    assert (13 + top + bottom) % multiple == 0 and (21 + left + right) % multiple == 0
    rows = torch.arange(-top, 13 + bottom).clamp(0, 12)
    cols = torch.arange(-left, 21 + right).clamp(0, 20)
    padded0, padded1 = img0[:, :, rows][..., cols], img1[:, :, rows][..., cols]
    with torch.no_grad():
        full = model(padded0, padded1, 0.5)
        cropped = model(img0, img1, 0.5)
    assert cropped.shape == (1, 3, 13, 21)
    torch.testing.assert_close(cropped, full[:, :, top : top + 13, left : left + 21])


def test_timestep_forms_and_per_sample_timesteps(phase2):
    img0, img1 = random_pair(2, 16, 16, seed=3)
    with torch.no_grad():
        scalar = phase2(img0, img1, 0.25)
        torch.testing.assert_close(phase2(img0, img1, torch.tensor([0.25, 0.25])), scalar)
        torch.testing.assert_close(phase2(img0, img1, torch.full((2, 1, 1, 1), 0.25)), scalar)
        mixed = phase2(img0, img1, torch.tensor([0.25, 0.75]))
        torch.testing.assert_close(mixed[1:], phase2(img0[1:], img1[1:], 0.75))
    assert (phase2(img0, img1, 0.75) - scalar).abs().max() > 1e-5


@pytest.mark.parametrize("timestep", [0.0, 1.0, -0.2, torch.tensor([0.5, 0.5, 0.5])])
def test_bad_timesteps_are_rejected(phase1, timestep):
    img0, img1 = random_pair(2, 16, 16)
    with pytest.raises(ValueError, match="timestep"):
        phase1(img0, img1, timestep)


def test_bad_images_are_rejected(phase1):
    with pytest.raises(ValueError, match=r"img0 must be a tensor \(B, 3, H, W\)"):
        phase1(torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        phase1(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24))
    with pytest.raises(TypeError, match="floating point"):
        phase1(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="flow_scale applies to the flow estimator"):
        phase1(*random_pair(1, 16, 16), flow_scale=0.5)


def test_flow_scale_estimates_flow_at_lower_resolution(phase2):
    img0, img1 = random_pair(1, 24, 24, seed=4)
    assert phase2.config.pad_multiple(0.5) == 2 * phase2.config.pad_multiple(1.0)
    with torch.no_grad():
        half = phase2.predict(img0, img1, 0.5, flow_scale=0.5)
        full = phase2.predict(img0, img1, 0.5)
    assert half.frame.shape == full.frame.shape == (1, 3, 24, 24)
    assert (half.flow - full.flow).abs().max() > 1e-6
    with pytest.raises(ValueError, match=r"flow_scale=0\.3"):
        phase2(img0, img1, flow_scale=0.3)


@pytest.mark.parametrize("phase", [1, 2])
def test_every_parameter_receives_a_gradient(phase):
    torch.manual_seed(2)
    model = HybridVFI(tiny_config(phase=phase, use_mhc=True))
    img0, img1 = random_pair(2, 16, 16, seed=5)
    out = model.predict(img0, img1, 0.5)
    loss = out.frame.square().mean() + (0 if out.flow is None else out.flow.square().mean())
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_save_and_load_roundtrip(tmp_path, phase2):
    phase2.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["phase"] == 2
    loaded = HybridVFI.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == phase2.config
    img0, img1 = random_pair(1, 16, 16, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(img0, img1), phase2(img0, img1), rtol=0, atol=0)


def test_convolution_weights_are_channels_last_after_loading(tmp_path, phase2):
    """cuDNN runs a convolution channels-last when its weight is: every 4-D weight is, loaded ones too."""
    phase2.save_pretrained(tmp_path / "m")
    for model in (phase2, HybridVFI.from_pretrained(tmp_path / "m")):
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_loading_mismatched_weights_names_the_keys(tmp_path, phase1, phase2):
    phase2.save_pretrained(tmp_path / "p2")
    phase1.save_pretrained(tmp_path / "p1")
    (tmp_path / "p1" / "model.safetensors").replace(tmp_path / "p1" / "model.tmp")
    (tmp_path / "p2" / "model.safetensors").replace(tmp_path / "p1" / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys \['context0.conv0"):
        HybridVFI.from_pretrained(tmp_path / "p1")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        HybridVFI.from_pretrained(tmp_path / "p2")
    config = json.loads((tmp_path / "p1" / "config.json").read_text())
    (tmp_path / "p1" / "config.json").write_text(json.dumps({**config, "depth": 3}))
    with pytest.raises(ValueError, match=r"unknown HybridVFIConfig keys \['depth'\]"):
        HybridVFI.from_pretrained(tmp_path / "p1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phase": 4}, "phase must be 1, 2 or 3"),
        ({"embed_dims": (8, 16)}, "3 stages"),
        ({"num_heads": (3, 2, 2)}, "must divide embed_dims"),
        ({"backbone_mode": "mamba"}, "backbone_mode must be"),
        ({"mamba_headdim": 12}, "multiple of mamba_headdim"),
        ({"scan_from_stage": 3}, r"scan_from_stage must be a stage index in \[0, 3\); got 3"),
        ({"scan_from_stage": 1, "backbone_mode": "mamba2_only"}, "needs backbone_mode='hybrid'"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_default_sizes_match_the_seed():
    """Seed: phase 1 about 1.26M parameters, phase 2 about 9M more; both pad to 32."""
    p1 = sum(p.numel() for p in HybridVFI(HybridVFIConfig()).parameters())
    p2 = sum(p.numel() for p in HybridVFI(HybridVFIConfig(phase=2)).parameters())
    assert 1.0e6 < p1 < 1.6e6 and 6e6 < p2 - p1 < 10e6
    assert HybridVFIConfig().pad_multiple() == HybridVFIConfig(phase=2).pad_multiple() == 32


@pytest.mark.parametrize("scan_from_stage", [0, 1, 2])
def test_scan_from_stage_keeps_the_scan_off_the_large_maps(scan_from_stage):
    """Every Mamba-2 call sees the interleaved sequences (4 directions x B, 2 * h * w) of a stage at or
    after ``scan_from_stage`` only; earlier stages' blocks have the attention branch alone."""
    torch.manual_seed(3)
    model = HybridVFI(tiny_config(phase=2, scan_from_stage=scan_from_stage)).eval()
    lengths = []
    for module in model.modules():
        if isinstance(module, Mamba2):
            module.register_forward_hook(lambda mod, args, out: lengths.append(tuple(args[0].shape[:2])))
    img0, img1 = random_pair(2, 16, 32, seed=7)
    with torch.no_grad():
        frame = model(img0, img1)
    assert frame.shape == (2, 3, 16, 32)
    expected = [
        (4 * 2, 2 * (16 >> i) * (32 >> i))
        for i, depth in enumerate(model.config.depths)
        if i >= scan_from_stage
        for _ in range(depth)
    ]
    assert lengths == expected
    for i, blocks in enumerate(model.backbone.stages):
        for block in blocks:
            assert (block.ss2d is None) == (i < scan_from_stage)
            assert block.attn is not None and (block.fuse is None) == (i < scan_from_stage)


def test_scan_from_stage_save_load_roundtrip(tmp_path):
    torch.manual_seed(4)
    model = HybridVFI(tiny_config(phase=1, scan_from_stage=1)).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = HybridVFI.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.scan_from_stage == 1
    img0, img1 = random_pair(1, 16, 16, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(img0, img1), model(img0, img1), rtol=0, atol=0)
    reports = loaded.backbone.init_mamba_from_attention()
    assert [r.name for r in reports] == ["stages.1.0", "stages.1.1", "stages.2.0"]


def test_float_timestep_is_checked_on_the_host():
    """A float timestep (the video tool's case) never reads a device value back; a tensor one still is checked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from videostate.interpolation.model import as_timestep

    class HostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            HostReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    with HostReads():
        t = as_timestep(0.25, 3, "cpu", torch.float32)
    assert HostReads.count == 0 and torch.equal(t, torch.full((3,), 0.25))
    with HostReads():
        as_timestep(torch.tensor([0.25, 0.5, 0.75]), 3, "cpu", torch.float32)
    assert HostReads.count > 0
