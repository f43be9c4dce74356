import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videostate.interpolation.loss import (
    CompositeLoss,
    FlowSmoothnessLoss,
    LapLoss,
    Ternary,
    VGGPerceptualLoss,
)
from videostate.interpolation.vgg import VGG19Features


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- Laplacian pyramid -----------------------------------------------------------------------------


def blur(img):
    """Separable [1 4 6 4 1] / 16 along both axes with reflect padding; img (..., H, W)."""
    k = np.array([1, 4, 6, 4, 1]) / 16.0
    pad = [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, [*pad, (2, 2), (0, 0)], mode="reflect")
    rows = sum(k[i] * p[..., i : i + img.shape[-2], :] for i in range(5))
    p = np.pad(rows, [*pad, (0, 0), (2, 2)], mode="reflect")
    return sum(k[i] * p[..., :, i : i + img.shape[-1]] for i in range(5))


def laplacian_oracle(img, levels):
    out, cur = [], img
    for _ in range(levels):
        down = blur(cur)[..., ::2, ::2]
        up = np.zeros((*down.shape[:-2], 2 * down.shape[-2], 2 * down.shape[-1]))
        up[..., ::2, ::2] = down
        up = 4 * blur(up)[..., : cur.shape[-2], : cur.shape[-1]]
        out.append(cur - up)
        cur = down
    return out


@pytest.mark.parametrize("size", [(40, 48), (37, 51)])
def test_laploss_matches_numpy_oracle(size):
    pred, target = rand(2, 3, *size, seed=1), rand(2, 3, *size, seed=2)
    expected = sum(
        np.abs(a - b).mean()
        for a, b in zip(laplacian_oracle(pred.numpy(), 5), laplacian_oracle(target.numpy(), 5), strict=True)
    )
    assert LapLoss()(pred, target).item() == pytest.approx(expected, rel=1e-10)


def test_laploss_is_zero_for_equal_images_and_rejects_tiny_ones():
    x = rand(1, 3, 48, 48)
    assert LapLoss()(x, x).item() == 0.0
    with pytest.raises(ValueError, match="side stays >= 3"):
        LapLoss(max_levels=5)(rand(1, 3, 20, 20), rand(1, 3, 20, 20))


# -- Ternary ---------------------------------------------------------------------------------------


def ternary_oracle(a, b, patch=7):
    def census(img):
        grey = 0.2989 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
        r = patch // 2
        padded = np.pad(grey, [(0, 0), (r, r), (r, r)])
        h, w = grey.shape[-2:]
        out = []
        for dy in range(patch):
            for dx in range(patch):
                d = padded[:, dy : dy + h, dx : dx + w] - grey
                out.append(d / np.sqrt(0.81 + d * d))
        return np.stack(out, axis=1)

    d = (census(a) - census(b)) ** 2
    dist = (d / (0.1 + d)).mean(axis=1)
    mask = np.zeros_like(dist)
    mask[:, 1:-1, 1:-1] = 1
    return (dist * mask).mean()


def test_ternary_matches_loop_oracle():
    a, b = rand(2, 3, 12, 15, seed=3), rand(2, 3, 12, 15, seed=4)
    assert Ternary()(a, b).item() == pytest.approx(ternary_oracle(a.numpy(), b.numpy()), rel=1e-10)


def test_ternary_of_equal_images_is_zero():
    a = rand(1, 3, 16, 16, seed=5)
    assert Ternary()(a, a).item() == 0.0


# -- flow smoothness -------------------------------------------------------------------------------


def test_flow_smoothness_matches_formula():
    flow, img = rand(2, 4, 6, 7, seed=6) * 3, rand(2, 3, 6, 7, seed=7)
    f, i = flow.numpy(), img.numpy()
    wx = np.exp(-10 * np.abs(np.diff(i, axis=3)).mean(1, keepdims=True))
    wy = np.exp(-10 * np.abs(np.diff(i, axis=2)).mean(1, keepdims=True))
    expected = (wx * np.abs(np.diff(f, axis=3))).mean() + (wy * np.abs(np.diff(f, axis=2))).mean()
    assert FlowSmoothnessLoss()(flow, img).item() == pytest.approx(expected, rel=1e-10)


# -- VGG -------------------------------------------------------------------------------------------


def torchvision_vgg19_state(seed=0):
    """A state dict with torchvision's VGG-19 key names and shapes (features and classifier)."""
    g = torch.Generator().manual_seed(seed)
    layout = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
    state, index, cin = {}, 0, 3
    for item in layout:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(item, generator=g) * 0.01
        cin, index = item, index + 2
    state["classifier.0.weight"] = torch.randn(8, 4, generator=g)
    return state


def test_vgg_loads_torchvision_file_and_perceptual_loss_matches_manual_chain(tmp_path):
    state = torchvision_vgg19_state()
    torch.save(state, tmp_path / "vgg19.pth")
    vgg = VGG19Features.from_file(tmp_path / "vgg19.pth").double()
    pred, target = rand(1, 3, 16, 16, seed=8), rand(1, 3, 16, 16, seed=9)

    def features(x):
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1
        )
        out = []
        convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]
        for i in convs:
            if i in (5, 10, 19, 28):
                x = F.max_pool2d(x, 2)
            x = F.relu(
                F.conv2d(x, state[f"features.{i}.weight"].double(), state[f"features.{i}.bias"].double(), padding=1)
            )
            if i in (0, 5, 10, 19, 28):
                out.append(x)
        return out

    weights = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)
    expected = 0.1 * sum(
        w * (a - b).abs().mean() for w, a, b in zip(weights, features(pred), features(target), strict=True)
    )
    torch.testing.assert_close(VGGPerceptualLoss(vgg)(pred, target), expected)


def test_vgg_file_with_wrong_keys_is_an_error(tmp_path):
    state = torchvision_vgg19_state()
    del state["features.28.weight"]
    state["features.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ValueError, match=r"missing keys \['features.28.weight'\].*unexpected keys \['features.99.weight'\]"
    ):
        VGG19Features.from_file(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        VGG19Features.from_file(tmp_path / "absent.pth")


# -- composite -------------------------------------------------------------------------------------


def test_composite_phase1_is_weighted_sum_and_says_vgg_is_off():
    with pytest.warns(UserWarning, match="perceptual term is OFF"):
        loss = CompositeLoss(phase=1, lap_weight=0.7, ternary_weight=0.3, lap_levels=3)
    assert not loss.perceptual_enabled
    pred, target = rand(2, 3, 32, 32, seed=10), rand(2, 3, 32, 32, seed=11)
    total, logs = loss(pred, target)
    expected = 0.7 * LapLoss(3)(pred, target) + 0.3 * Ternary()(pred, target)
    torch.testing.assert_close(total, expected)
    assert set(logs) == {"loss_lap", "loss_ter", "loss_total"}
    with pytest.raises(ValueError, match="takes no flow"):
        loss(pred, target, flow=torch.zeros(2, 4, 32, 32))


def test_composite_phase2_adds_flow_and_vgg_terms(tmp_path):
    torch.save(torchvision_vgg19_state(), tmp_path / "vgg19.pth")
    loss = CompositeLoss(phase=2, vgg_weights_path=tmp_path / "vgg19.pth").double()
    pred, target, flow = rand(1, 3, 48, 48, seed=12), rand(1, 3, 48, 48, seed=13), rand(1, 4, 48, 48, seed=14)
    total, logs = loss(pred, target, flow)
    vgg = VGGPerceptualLoss(VGG19Features.from_file(tmp_path / "vgg19.pth").double())
    expected = (
        LapLoss()(pred, target)
        + Ternary()(pred, target)
        + 0.005 * vgg(pred, target)
        + 0.1 * FlowSmoothnessLoss()(flow, target)
    )
    torch.testing.assert_close(total, expected)
    assert set(logs) == {"loss_lap", "loss_ter", "loss_vgg", "loss_flow_smooth", "loss_total"}
    with pytest.raises(ValueError, match="needs the predicted flow"):
        loss(pred, target)


def test_composite_rejects_bad_arguments():
    with pytest.raises(ValueError, match="phase must be 1, 2 or 3"):
        CompositeLoss(phase=4, vgg_weight=0)
    with pytest.raises(ValueError, match="lap_weight must be >= 0"):
        CompositeLoss(lap_weight=-1, vgg_weight=0)
    with pytest.raises(ValueError, match=r"pred must be a tensor \(B, 3, H, W\)"):
        CompositeLoss(vgg_weight=0)(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
