"""Training losses for frame interpolation: Laplacian-pyramid L1, ternary (census), VGG perceptual,
edge-aware flow smoothness, and :class:`CompositeLoss`, which weights them by training phase.

Formulas follow RIFE (``model/laplacian.py``, ``model/loss.py``):

- :class:`LapLoss`: 5x5 binomial kernel ``/256`` with reflect padding, decimation by 2, upsampling
  by zero insertion and the same kernel times 4; the L1 of the band-pass images summed over levels.
- :class:`Ternary`: grey image ``0.2989 R + 0.587 G + 0.114 B``; 7x7 census ``d / sqrt(0.81 + d^2)``
  with ``d`` the neighbour minus the centre (zero padding); distance ``mean_k(e^2 / (0.1 + e^2))``
  over the 49 neighbours; a 1-pixel border is masked out; averaged over all pixels.
- :class:`VGGPerceptualLoss`: ``0.1 * sum_i w_i mean|phi_i(pred) - phi_i(target)|`` over relu1_1 ..
  relu5_1 with ``w = (1/2.6, 1/4.8, 1/3.7, 1/5.6, 10/1.5)``.
- :class:`FlowSmoothnessLoss`: ``mean(exp(-a |dI/dx|) |dF/dx|) + mean(exp(-a |dI/dy|) |dF/dy|)``.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .vgg import VGG19Features

BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, channels: int | None = 3) -> None:
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or (channels is not None and t.shape[1] != channels):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor (B, {channels or 'C'}, H, W); got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {tuple(pred.shape)} and {tuple(target.shape)}")


def gauss_kernel(channels: int, device=None, dtype=None) -> torch.Tensor:
    """Depthwise 5x5 binomial kernel ``(channels, 1, 5, 5)`` summing to 1."""
    k = torch.tensor(BINOMIAL_5, device=device, dtype=dtype)
    k2 = torch.outer(k, k) / 256.0
    return k2.expand(channels, 1, 5, 5).contiguous()


def conv_gauss(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(image, (2, 2, 2, 2), mode="reflect"), kernel, groups=image.shape[1])


def upsample_zero_insert(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w) -> (B, C, 2h, 2w)``: samples at even positions, zeros between, then 4x the blur."""
    b, c, h, w = image.shape
    up = image.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = image
    return conv_gauss(up, 4 * kernel)


def laplacian_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass images of ``levels`` levels, finest first (the low-pass residual is not included).

    Odd sizes are handled by cropping the upsampled image to the current level's size.
    """
    kernel = gauss_kernel(image.shape[1], image.device, image.dtype)
    pyramid, current = [], image
    for level in range(levels):
        if min(current.shape[-2:]) < 3:
            raise ValueError(
                f"LapLoss with {levels} levels needs images whose side stays >= 3 pixels at every level; "
                f"level {level} is {tuple(current.shape[-2:])} (input {tuple(image.shape[-2:])})"
            )
        down = conv_gauss(current, kernel)[:, :, ::2, ::2]
        up = upsample_zero_insert(down, kernel)[:, :, : current.shape[-2], : current.shape[-1]]
        pyramid.append(current - up)
        current = down
    return pyramid


class LapLoss(nn.Module):
    """Laplacian-pyramid L1 loss: ``sum_l mean|L_l(pred) - L_l(target)|`` over ``max_levels`` levels."""

    def __init__(self, max_levels: int = 5):
        super().__init__()
        if max_levels < 1:
            raise ValueError(f"max_levels must be >= 1; got {max_levels}")
        self.max_levels = max_levels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, channels=None)
        pyr_pred = laplacian_pyramid(pred, self.max_levels)
        pyr_target = laplacian_pyramid(target, self.max_levels)
        return sum(F.l1_loss(a, b) for a, b in zip(pyr_pred, pyr_target, strict=True))


class Ternary(nn.Module):
    """Ternary census loss between two RGB images ``(B, 3, H, W)``; returns a scalar."""

    def __init__(self, patch_size: int = 7):
        super().__init__()
        if patch_size < 3 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be an odd integer >= 3; got {patch_size}")
        self.patch_size = patch_size
        n = patch_size * patch_size
        self.register_buffer("w", torch.eye(n).reshape(n, 1, patch_size, patch_size), persistent=False)

    def transform(self, grey: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W) -> (B, patch_size**2, H, W)`` soft census signatures."""
        patches = F.conv2d(grey, self.w.to(grey.dtype), padding=self.patch_size // 2)
        diff = patches - grey
        return diff / torch.sqrt(0.81 + diff * diff)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        if min(pred.shape[-2:]) < 3:
            raise ValueError(f"Ternary needs images of at least 3x3; got {tuple(pred.shape[-2:])}")
        weights = pred.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
        t_pred = self.transform((pred * weights).sum(1, keepdim=True))
        t_target = self.transform((target * weights).sum(1, keepdim=True))
        dist = (t_pred - t_target) ** 2
        dist = (dist / (0.1 + dist)).mean(dim=1, keepdim=True)
        mask = torch.zeros_like(dist)
        mask[:, :, 1:-1, 1:-1] = 1.0
        return (dist * mask).mean()


class VGGPerceptualLoss(nn.Module):
    """RIFE's VGG-19 perceptual loss; the target's features carry no gradient."""

    LAYER_WEIGHTS = (1.0 / 2.6, 1.0 / 4.8, 1.0 / 3.7, 1.0 / 5.6, 10.0 / 1.5)

    def __init__(self, features: VGG19Features):
        super().__init__()
        if not isinstance(features, VGG19Features):
            raise TypeError(f"features must be a VGG19Features; got {type(features).__name__}")
        self.vgg = features

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        with torch.no_grad():
            target_features = self.vgg(target)
        loss = pred.new_zeros(())
        for weight, a, b in zip(self.LAYER_WEIGHTS, self.vgg(pred), target_features, strict=True):
            loss = loss + weight * (a - b).abs().mean()
        return 0.1 * loss


class FlowSmoothnessLoss(nn.Module):
    """Edge-aware first-order smoothness of a flow field ``(B, K, H, W)`` guided by an image ``(B, 3, H, W)``.

    The penalty on a flow gradient is down-weighted by ``exp(-edge_factor * |image gradient|)`` (the
    image gradient averaged over colour channels), so flow may change across image edges.
    """

    def __init__(self, edge_factor: float = 10.0):
        super().__init__()
        if edge_factor < 0:
            raise ValueError(f"edge_factor must be >= 0; got {edge_factor}")
        self.edge_factor = edge_factor

    def forward(self, flow: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if flow.dim() != 4 or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(
                f"flow must be (B, K, H, W) and image (B, 3, H, W); got {tuple(flow.shape)} and {tuple(image.shape)}"
            )
        if flow.shape[0] != image.shape[0] or flow.shape[2:] != image.shape[2:]:
            raise ValueError(f"flow {tuple(flow.shape)} and image {tuple(image.shape)} must share batch and size")
        image_dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
        image_dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
        flow_dx = (flow[..., :, 1:] - flow[..., :, :-1]).abs()
        flow_dy = (flow[..., 1:, :] - flow[..., :-1, :]).abs()
        return (torch.exp(-self.edge_factor * image_dx) * flow_dx).mean() + (
            torch.exp(-self.edge_factor * image_dy) * flow_dy
        ).mean()


class CompositeLoss(nn.Module):
    """Phase-aware weighted sum of the losses above; every component is returned for logging.

    Args:
        phase: 1 (backbone + refine: no flow term), 2 or 3 (flow pipeline: flow smoothness on).
        lap_weight, ternary_weight, vgg_weight, flow_smooth_weight: component weights
            (seed defaults 1, 1, 0.005, 0.1).
        vgg_weights_path: torchvision VGG-19 weights file. Without it the perceptual term is off (a
            warning says so when ``vgg_weight > 0``) and ``perceptual_enabled`` is False.
        flow_edge_factor: ``edge_factor`` of :class:`FlowSmoothnessLoss`.
        lap_levels: pyramid levels of :class:`LapLoss` (5; images must keep a side of at least 3
            pixels at the coarsest level, so 3 levels for crops under 48 pixels).

    ``forward(pred, target, flow=None)`` returns ``(total, logs)`` with ``logs`` holding detached
    ``loss_lap``, ``loss_ter``, ``loss_vgg`` (when on), ``loss_flow_smooth`` (phases 2-3) and ``loss_total``.
    """

    def __init__(
        self,
        phase: int = 1,
        lap_weight: float = 1.0,
        ternary_weight: float = 1.0,
        vgg_weight: float = 0.005,
        flow_smooth_weight: float = 0.1,
        vgg_weights_path: str | os.PathLike | None = None,
        flow_edge_factor: float = 10.0,
        lap_levels: int = 5,
    ):
        super().__init__()
        if phase not in (1, 2, 3):
            raise ValueError(f"phase must be 1, 2 or 3; got {phase!r}")
        for name, value in (
            ("lap_weight", lap_weight),
            ("ternary_weight", ternary_weight),
            ("vgg_weight", vgg_weight),
            ("flow_smooth_weight", flow_smooth_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        self.phase = phase
        self.lap_weight, self.ternary_weight = lap_weight, ternary_weight
        self.vgg_weight, self.flow_smooth_weight = vgg_weight, flow_smooth_weight
        self.lap = LapLoss(lap_levels)
        self.ternary = Ternary()
        self.flow_smooth = FlowSmoothnessLoss(flow_edge_factor)
        self.perceptual = None
        if vgg_weights_path is not None:
            self.perceptual = VGGPerceptualLoss(VGG19Features.from_file(vgg_weights_path))
        elif vgg_weight > 0:
            warnings.warn(
                "CompositeLoss: VGG perceptual term is OFF (no vgg_weights_path given; VGG-19 weights are "
                "never downloaded); training uses the Laplacian and ternary terms"
                + (" and flow smoothness" if phase > 1 else ""),
                stacklevel=2,
            )

    @property
    def perceptual_enabled(self) -> bool:
        return self.perceptual is not None and self.vgg_weight > 0

    @property
    def uses_flow(self) -> bool:
        return self.phase > 1 and self.flow_smooth_weight > 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor, flow: torch.Tensor | None = None):
        _check_pair(pred, target)
        if self.uses_flow and flow is None:
            raise ValueError(f"phase {self.phase} loss needs the predicted flow (B, 4, H, W); got None")
        if not self.uses_flow and flow is not None:
            raise ValueError(f"phase {self.phase} loss with flow_smooth_weight={self.flow_smooth_weight} takes no flow")
        terms = {
            "loss_lap": (self.lap_weight, self.lap(pred, target)),
            "loss_ter": (self.ternary_weight, self.ternary(pred, target)),
        }
        if self.perceptual_enabled:
            terms["loss_vgg"] = (self.vgg_weight, self.perceptual(pred, target))
        if self.uses_flow:
            terms["loss_flow_smooth"] = (self.flow_smooth_weight, self.flow_smooth(flow, target))
        total = sum(weight * value for weight, value in terms.values())
        logs = {name: value.detach() for name, (_, value) in terms.items()}
        logs["loss_total"] = total.detach()
        return total, logs
