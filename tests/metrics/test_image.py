import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from videostate.metrics import psnr, ssim, ssim_matlab


def _pair(seed, shape=(2, 3, 24, 31), noise=0.1):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = (target + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_matches_skimage_and_formula(seed):
    pred, target = _pair(seed)
    per_image = psnr(pred, target, reduction="none")
    for i in range(pred.shape[0]):
        p, t = pred[i].numpy(), target[i].numpy()
        assert per_image[i].item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), abs=1e-10)
        mse = sum(float(v) ** 2 for v in (p - t).ravel()) / p.size
        assert per_image[i].item() == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    assert psnr(pred, target).item() == pytest.approx(per_image.mean().item())


def test_psnr_uint8_range_and_identical_images():
    pred, target = _pair(2)
    p8, t8 = (pred * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8)
    expected = peak_signal_noise_ratio(t8[0].numpy(), p8[0].numpy(), data_range=255)
    assert psnr(p8[0], t8[0], data_range=255).item() == pytest.approx(expected, abs=1e-10)
    assert math.isinf(psnr(target, target).item())


@pytest.mark.parametrize("seed,noise", [(0, 0.05), (1, 0.3)])
def test_ssim_matches_skimage_gaussian(seed, noise):
    pred, target = _pair(seed, noise=noise)
    values = ssim(pred, target, reduction="none")
    for i in range(pred.shape[0]):
        expected = structural_similarity(
            target[i].numpy(),
            pred[i].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        assert values[i].item() == pytest.approx(expected, abs=1e-9)
    assert ssim(target, target).item() == pytest.approx(1.0)


def test_ssim_float32_and_clip_batches_keep_leading_shape():
    pred, target = _pair(3, shape=(2, 4, 3, 16, 16))
    values = ssim(pred.float(), target.float(), reduction="none")
    assert values.shape == (2, 4) and values.dtype == torch.float64
    assert torch.allclose(values, ssim(pred, target, reduction="none"), atol=1e-6)


def _ssim_matlab_oracle(x: np.ndarray, y: np.ndarray) -> float:
    """scipy.ndimage on the (channels, H, W) volume; 'nearest' = replicate padding."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]

    def filt(z):
        return ndimage.correlate(z, w, mode="nearest")

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))))


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matlab_matches_volumetric_oracle(seed):
    pred, target = _pair(seed, shape=(2, 3, 20, 27))
    values = ssim_matlab(pred, target, reduction="none")
    for i in range(2):
        assert values[i].item() == pytest.approx(_ssim_matlab_oracle(pred[i].numpy(), target[i].numpy()), abs=1e-10)
    # differs from the 2D per-channel SSIM: it is a different metric
    assert abs(values[0].item() - ssim(pred[0], target[0]).item()) > 1e-4


def test_metric_errors_name_shapes():
    a = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 16, 16\).*\(3, 16, 15\)"):
        psnr(a, torch.rand(3, 16, 15))
    with pytest.raises(ValueError, match=r"at least 11x11"):
        ssim(torch.rand(3, 8, 20), torch.rand(3, 8, 20))
    with pytest.raises(ValueError, match=r"channels, height, width"):
        ssim_matlab(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError, match=r"reduction"):
        psnr(a, a.flip(-1), reduction="sum")


UCF = Path(__file__).resolve().parents[2] / "../shared/data/vfi/ucf101"  # beside the repository


@pytest.mark.skipif(not UCF.is_dir(), reason="sample data ../shared/data absent")
def test_real_frames_match_skimage():
    from videostate.data.video import VideoReader

    first, middle, last = (torch.from_numpy(f).permute(2, 0, 1).double() for f in VideoReader(UCF / "1"))
    average = ((first + last) / 2).round()
    expected_psnr = peak_signal_noise_ratio(middle.numpy(), average.numpy(), data_range=255)
    assert psnr(average, middle, data_range=255).item() == pytest.approx(expected_psnr, abs=1e-9)
    expected_ssim = structural_similarity(
        middle.numpy(),
        average.numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=0,
    )
    assert ssim(average, middle, data_range=255).item() == pytest.approx(expected_ssim, abs=1e-9)
