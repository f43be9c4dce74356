"""Image quality: PSNR, SSIM (2D, Gaussian window) and the volumetric ``ssim_matlab`` of VFI benchmarks.

All take images ``(..., channels, height, width)`` (a single image, a batch, or a batch of clips),
compute in float64, and return one value per image with ``reduction="none"`` or their mean with
``reduction="mean"`` (the default), as a float64 tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

Reduction = Literal["mean", "none"]


def _prepare(pred: torch.Tensor, target: torch.Tensor, min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.dim() < 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor (..., channels, height, width); got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    if min(pred.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}; got {tuple(pred.shape[-2:])}")
    return pred.double(), target.double()


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 * log10(data_range**2 / mse)`` in dB, mse over each image's
    channels and pixels. Identical images give ``inf``. ``data_range`` is 1 for ``[0, 1]`` images,
    255 for 8-bit ones."""
    pred, target = _prepare(pred, target)
    mse = (pred - target).pow(2).mean(dim=(-3, -2, -1))
    return _reduce(10.0 * torch.log10(data_range**2 / mse), reduction)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)``, float64, centred on ``size // 2``."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """SSIM of Wang et al. (2004) as their MATLAB code computes it: an 11x11 Gaussian window
    (sigma 1.5), population statistics, the map kept where the window fits (no padding), averaged
    over the map and then over channels. Equals scikit-image's ``structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range)``."""
    pred, target = _prepare(pred, target, min_size=window_size)
    lead, c = pred.shape[:-3], pred.shape[-3]
    x = rearrange(pred, "... c h w -> (...) c h w")
    y = rearrange(target, "... c h w -> (...) c h w")
    g = gaussian_window(window_size, sigma).to(x.device)
    window = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size)

    def filt(z):
        return F.conv2d(z, window, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    values = ssim_map.mean(dim=(-3, -2, -1)).reshape(lead)
    return _reduce(values, reduction)


def ssim_matlab(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """The ``ssim_matlab`` of video frame interpolation benchmarks (RIFE, EMA-VFI, VFIMamba).

    The colour channels are treated as a third spatial axis: an 11x11x11 Gaussian (sigma 1.5) runs
    over the ``(channels, height, width)`` volume with 5 replicated voxels of padding on every side,
    and the SSIM map (constants ``(0.01 L)^2``, ``(0.03 L)^2``, ``L = data_range``) is averaged over
    the whole volume. Benchmarks call it on RGB images in ``[0, 1]``.
    """
    pred, target = _prepare(pred, target, min_size=11)
    lead = pred.shape[:-3]
    x = rearrange(pred, "... c h w -> (...) 1 c h w")
    y = rearrange(target, "... c h w -> (...) 1 c h w")
    g = gaussian_window(11, 1.5).to(x.device)
    window = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]

    def filt(z):
        return F.conv3d(F.pad(z, (5, 5, 5, 5, 5, 5), mode="replicate"), window)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    values = ssim_map.mean(dim=(-4, -3, -2, -1)).reshape(lead)
    return _reduce(values, reduction)
