"""Depth metrics: per-sequence aligned AbsRel / delta1, temporal variance and flicker on static pixels, and
TAE (temporal alignment error) as Video Depth Anything's ``eval_tae.py`` computes it.

Relative (disparity-like) predictions are aligned once per sequence by least squares in disparity space, as
Video Depth Anything's evaluation does, before any comparison.
"""

from __future__ import annotations

import numpy as np
import torch

from .losses import scale_and_shift


def align_sequence(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One least-squares scale/shift for the whole sequence ``pred (N, H, W)`` onto ``target``: the aligned ``pred``."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (N, H, W); got {tuple(pred.shape)} and {tuple(target.shape)}")
    scale, shift = scale_and_shift(pred[None], target[None], None if mask is None else mask[None])
    return scale * pred + shift


def abs_rel_delta1(pred: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """``AbsRel = mean |p - r| / r`` and ``delta1 = mean(max(p/r, r/p) < 1.25)`` over ``mask`` (positive maps)."""
    if not mask.any():
        raise ValueError("abs_rel_delta1 needs at least one valid pixel")
    p, r = pred[mask], reference[mask]
    abs_rel = ((p - r).abs() / r).mean().item()
    delta1 = (torch.maximum(p / r, r / p) < 1.25).double().mean().item()
    return abs_rel, delta1


def depth_metrics_against_gt(
    pred_disparity: torch.Tensor, gt_depth: torch.Tensor, max_depth: float = 10.0, min_depth: float = 1e-3
) -> dict[str, float]:
    """AbsRel and delta1 of a relative prediction ``(N, H, W)`` against metric ``gt_depth`` (0 = invalid), as
    Video Depth Anything evaluates: align disparity to ``1/gt`` per sequence, invert, clip to
    ``[min_depth, max_depth]``; pixels with ``gt`` in ``(min_depth, max_depth]`` count."""
    valid = (gt_depth > min_depth) & (gt_depth <= max_depth)
    gt_disparity = torch.where(valid, 1.0 / gt_depth.clamp_min(min_depth), torch.zeros_like(gt_depth))
    aligned = align_sequence(pred_disparity, gt_disparity, valid)
    depth = (1.0 / aligned.clamp_min(1.0 / max_depth)).clamp(min_depth, max_depth)
    abs_rel, delta1 = abs_rel_delta1(depth, gt_depth, valid)
    return {"abs_rel": abs_rel, "delta1": delta1}


def depth_metrics_against_teacher(pred: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> dict[str, float]:
    """AbsRel and delta1 in disparity space of ``pred (N, H, W)`` aligned per sequence to the teacher's output."""
    valid = teacher > eps
    aligned = align_sequence(pred, teacher, valid).clamp_min(eps)
    abs_rel, delta1 = abs_rel_delta1(aligned, teacher, valid)
    return {"abs_rel": abs_rel, "delta1": delta1}


def _check_static(depth: torch.Tensor, static: torch.Tensor) -> None:
    if depth.dim() != 3 or static.dtype != torch.bool or tuple(static.shape) != (depth.shape[0] - 1, *depth.shape[1:]):
        raise ValueError(
            f"depth must be (N, H, W) and static a bool (N-1, H, W); got {tuple(depth.shape)} and "
            f"{static.dtype} {tuple(static.shape)}"
        )


def temporal_variance(depth: torch.Tensor, static: torch.Tensor) -> float:
    """Mean over pixels static in every frame pair of the variance over time of ``depth (N, H, W)`` divided by
    the squared mean depth there (scale-free; meaningful for a still camera, where static pixels keep their
    depth). ``static (N-1, H, W)`` bool."""
    _check_static(depth, static)
    always = static.all(dim=0)
    if not always.any():
        return float("nan")
    values = depth[:, always]
    return (values.var(dim=0, unbiased=False).mean() / values.mean() ** 2).item()


def flicker(depth: torch.Tensor, static: torch.Tensor) -> float:
    """Mean ``|d_{t+1} - d_t|`` over the static pixels of each pair, divided by the mean depth there: the
    relative frame-to-frame change of an (aligned) ``depth (N, H, W)`` where nothing moved by itself."""
    _check_static(depth, static)
    if not static.any():
        return float("nan")
    change = (depth[1:] - depth[:-1]).abs()[static]
    level = (0.5 * (depth[1:] + depth[:-1]))[static].abs().mean()
    return (change.mean() / level).item()


def _reprojection_abs_rel(depth1: np.ndarray, depth2: np.ndarray, T_2_1: np.ndarray, K: np.ndarray) -> float:
    """Back-project ``depth1`` with ``K``, move by ``T_2_1`` (4x4, camera 1 -> camera 2), project to the pixel grid
    (rounded), and take AbsRel against ``depth2`` where both are positive (``eval_tae.py``'s ``tae_torch``)."""
    H, W = depth1.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = np.mgrid[0:H, 0:W]
    points = np.stack([(xs - cx) * depth1 / fx, (ys - cy) * depth1 / fy, depth1], axis=-1).reshape(-1, 3)
    moved = points @ T_2_1[:3, :3].T + T_2_1[:3, 3]
    z = moved[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(moved[:, 0] * fx / z + cx)
        v = np.round(moved[:, 1] * fy / z + cy)
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    projected = np.zeros((H, W))
    projected[v[inside].astype(int), u[inside].astype(int)] = z[inside]
    valid = (projected > 0) & (depth2 > 0)
    if not valid.any():
        return 0.0
    return float(np.mean(np.abs(projected[valid] - depth2[valid]) / depth2[valid]))


def temporal_alignment_error(depth: np.ndarray, poses: np.ndarray, K: np.ndarray) -> float:
    """TAE (in percent) of metric-aligned depth ``(N, H, W)`` with camera-to-world ``poses (N, 4, 4)`` and
    intrinsics ``K (3, 3)``: for each consecutive pair, the AbsRel of frame ``k``'s depth reprojected into frame
    ``k+1`` against frame ``k+1``'s depth, and the reverse; ``100 * sum / (2 (N - 1))``."""
    depth, poses, K = np.asarray(depth, np.float64), np.asarray(poses, np.float64), np.asarray(K, np.float64)
    n = len(depth)
    if depth.ndim != 3 or poses.shape != (n, 4, 4) or K.shape != (3, 3) or n < 2:
        raise ValueError(
            f"depth must be (N>=2, H, W), poses (N, 4, 4), K (3, 3); got {depth.shape}, {poses.shape}, {K.shape}"
        )
    total = 0.0
    for k in range(n - 1):
        T_2_1 = np.linalg.inv(poses[k + 1]) @ poses[k]
        total += _reprojection_abs_rel(depth[k], depth[k + 1], T_2_1, K)
        total += _reprojection_abs_rel(depth[k + 1], depth[k], np.linalg.inv(T_2_1), K)
    return 100.0 * total / (2 * (n - 1))


def metric_depth_for_tae(
    pred_disparity: torch.Tensor, gt_depth: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0
) -> np.ndarray:
    """TAE's step 1: one disparity scale/shift per sequence fitted to ``1/gt`` (valid gt), converted to depth
    and clipped to ``[min_depth, max_depth]``: ``(N, H, W)`` numpy."""
    valid = gt_depth > min_depth
    gt_disparity = torch.where(valid, 1.0 / gt_depth.clamp_min(min_depth), torch.zeros_like(gt_depth))
    aligned = align_sequence(pred_disparity.double(), gt_disparity.double(), valid)
    return (1.0 / aligned.clamp_min(1.0 / max_depth)).clamp(min_depth, max_depth).cpu().numpy()
