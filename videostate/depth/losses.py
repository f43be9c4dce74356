"""Distillation losses in disparity space: MiDaS scale-and-shift-invariant error with multi-scale gradient
matching, Video Depth Anything's temporal gradient matching, and state smoothing on static pixels.

Maps are ``(..., H, W)`` (any leading dimensions, e.g. ``(B, N, 1, H, W)``); masks are bool of the same
shape, ``None`` meaning every pixel. Reductions are "batch-based" as in MiDaS: sums over all images divided
by the number of valid pixels, so an empty mask gives a zero loss that still back-propagates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def _check_maps(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, min_dims: int = 2):
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"pred and target must be tensors; got {type(pred).__name__}, {type(target).__name__}")
    if pred.shape != target.shape or pred.dim() < min_dims:
        raise ValueError(
            f"pred and target must have one shape with at least {min_dims} dims; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if mask is None:
        return torch.ones_like(pred, dtype=torch.bool)
    if mask.dtype != torch.bool or mask.shape != pred.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(pred.shape)}; got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask


def _safe_divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count if count > 0 else total * 0.0


def scale_and_shift(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``(s, t)`` minimising ``sum(mask * (s * pred + t - target)^2)`` per sample.

    ``pred, target (batch, ...)``; returns ``scale, shift (batch,)``. Closed form from the normal equations
    (``a00 = sum(M p^2)``, ``a01 = sum(M p)``, ``a11 = sum(M)``, ``b0 = sum(M p g)``, ``b1 = sum(M g)``); a
    sample whose system is singular (fewer than two distinct valid values) gets ``s = t = 0``.
    """
    mask = _check_maps(pred, target, mask, min_dims=1)
    p, g, m = (x.flatten(1) for x in (pred, target, mask.to(pred.dtype)))
    a00, a01, a11 = (m * p * p).sum(1), (m * p).sum(1), m.sum(1)
    b0, b1 = (m * p * g).sum(1), (m * g).sum(1)
    det = a00 * a11 - a01 * a01
    valid = det.abs() > torch.finfo(det.dtype).eps * (a00 * a11).abs().clamp_min(torch.finfo(det.dtype).tiny)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    scale = torch.where(valid, (a11 * b0 - a01 * b1) / safe_det, torch.zeros_like(det))
    shift = torch.where(valid, (-a01 * b0 + a00 * b1) / safe_det, torch.zeros_like(det))
    return scale, shift


def gradient_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, scales: int = 4
) -> torch.Tensor:
    """MiDaS multi-scale gradient matching of the residual ``R = M (pred - target)`` on ``(..., H, W)`` maps:
    at each scale ``k`` (stride ``2^k``), ``sum |dx R| + |dy R|`` over pairs of valid pixels, divided by the
    number of valid pixels at that scale; summed over scales."""
    mask = _check_maps(pred, target, mask)
    if scales < 1:
        raise ValueError(f"scales must be >= 1; got {scales}")
    p, g, m = (rearrange(x, "... h w -> (...) h w") for x in (pred, target, mask))
    total = pred.new_zeros(())
    for k in range(scales):
        step = 2**k
        ps, gs, ms = p[:, ::step, ::step], g[:, ::step, ::step], m[:, ::step, ::step].to(pred.dtype)
        residual = ms * (ps - gs)
        grad_x = (residual[:, :, 1:] - residual[:, :, :-1]).abs() * ms[:, :, 1:] * ms[:, :, :-1]
        grad_y = (residual[:, 1:] - residual[:, :-1]).abs() * ms[:, 1:] * ms[:, :-1]
        total = total + _safe_divide(grad_x.sum() + grad_y.sum(), ms.sum())
    return total


def midas_se_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gradient_weight: float = 0.5,
    scales: int = 4,
) -> torch.Tensor:
    """MiDaS scale-and-shift-invariant squared error on disparity maps ``(..., H, W)``.

    Each image ``pred`` is aligned to ``target`` by :func:`scale_and_shift`; the data term is
    ``sum M (s p + t - g)^2 / (2 sum M)`` and ``gradient_weight`` times :func:`gradient_matching_loss` of the
    aligned prediction is added (``gradient_weight=0`` gives the data term alone).
    """
    mask = _check_maps(pred, target, mask)
    p, g, m = (rearrange(x, "... h w -> (...) h w") for x in (pred, target, mask))
    scale, shift = scale_and_shift(p, g, m)
    aligned = scale[:, None, None] * p + shift[:, None, None]
    mf = m.to(pred.dtype)
    loss = _safe_divide((mf * (aligned - g) ** 2).sum(), 2 * mf.sum())
    if gradient_weight:
        loss = loss + gradient_weight * gradient_matching_loss(aligned, g, m, scales)
    return loss


def temporal_gradient_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, threshold: float = 0.05
) -> torch.Tensor:
    """Video Depth Anything's temporal gradient matching on clips ``(B, N, [1,] H, W)``.

    One scale/shift per clip aligns ``pred`` to ``target``; the loss is the mean absolute difference of the
    frame-to-frame changes ``(p_{t+1} - p_t) - (g_{t+1} - g_t)`` over pixels valid at ``t`` and ``t+1`` where
    the target change is below ``threshold`` times the target's range (max - min over the valid pixels of frame
    ``t+1``): larger changes are motion, not flicker. Clips of one frame give zero.
    """
    mask = _check_maps(pred, target, mask, min_dims=4)
    if pred.dim() == 5:
        if pred.shape[2] != 1:
            raise ValueError(f"5-D clips must be (B, N, 1, H, W); got {tuple(pred.shape)}")
        pred, target, mask = pred[:, :, 0], target[:, :, 0], mask[:, :, 0]
    if pred.dim() != 4:
        raise ValueError(f"clips must be (B, N, H, W) or (B, N, 1, H, W); got {tuple(pred.shape)}")
    scale, shift = scale_and_shift(pred, target, mask)
    aligned = scale.view(-1, 1, 1, 1) * pred + shift.view(-1, 1, 1, 1)
    if pred.shape[1] < 2:
        return aligned.sum() * 0.0
    low = torch.where(mask, target, torch.inf).amin(dim=(-2, -1))
    high = torch.where(mask, target, -torch.inf).amax(dim=(-2, -1))
    limit = (high - low) * threshold  # (B, N)
    d_pred = aligned[:, 1:] - aligned[:, :-1]
    d_target = target[:, 1:] - target[:, :-1]
    valid = mask[:, 1:] & mask[:, :-1] & (d_target.abs() < limit[:, 1:, None, None])
    valid_f = valid.to(pred.dtype)
    return _safe_divide(((d_pred - d_target).abs() * valid_f).sum(), valid_f.sum())


def pool_states(temporal: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-frame state read-outs ``(B, N, C, h, w)`` pooled over ``mask (B, N, h, w)`` -> ``(B, N, C)``
    (plain means when ``mask`` is None; frames with an empty mask give zeros)."""
    if mask is None:
        return temporal.mean(dim=(-2, -1))
    weights = mask.to(temporal.dtype)[:, :, None]
    return (temporal * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1)).clamp_min(1.0)


def state_smooth_loss(temporal: list[torch.Tensor], static_mask: torch.Tensor | None = None) -> torch.Tensor:
    """State smoothing ``||s_{t+1} - s_t||^2`` averaged over frame pairs and scales.

    ``temporal``: per scale, the per-frame read-out of the temporal state ``(B, N, C_i, h_i, w_i)`` (the
    residual the temporal module adds, :attr:`VideoMambaDepthOutput.temporal`). ``static_mask (B, N-1, H, W)``
    bool marks pixels static between frames ``t`` and ``t+1`` (:func:`videostate.depth.flow.static_mask`); it is
    resized to each scale (a cell is static when at least half of it is) and both ``s_t`` and ``s_{t+1}`` are
    pooled over the same pixels. Pairs with no static pixel are left out. ``None`` pools over every pixel.
    """
    if not temporal:
        raise ValueError("temporal must list at least one scale")
    batch, frames = temporal[0].shape[:2]
    if static_mask is not None and (
        static_mask.dtype != torch.bool or static_mask.dim() != 4 or tuple(static_mask.shape[:2]) != (batch, frames - 1)
    ):
        raise ValueError(
            f"static_mask must be a bool tensor (B, N-1, H, W)=({batch}, {frames - 1}, H, W); got "
            f"{static_mask.dtype} {tuple(static_mask.shape)}"
        )
    if frames < 2:
        return sum(t.sum() for t in temporal) * 0.0
    total = temporal[0].new_zeros(())
    for feat in temporal:
        if feat.dim() != 5 or tuple(feat.shape[:2]) != (batch, frames):
            raise ValueError(f"every scale must be (B, N, C, h, w)=({batch}, {frames}, ...); got {tuple(feat.shape)}")
        if static_mask is None:
            s = pool_states(feat, None)
            total = total + ((s[:, 1:] - s[:, :-1]) ** 2).sum(-1).mean()
            continue
        cells = F.interpolate(static_mask.to(feat.dtype), size=feat.shape[-2:], mode="area") >= 0.5
        s_now = pool_states(feat[:, :-1], cells)
        s_next = pool_states(feat[:, 1:], cells)
        pairs = cells.flatten(2).any(-1).to(feat.dtype)  # (B, N-1)
        total = total + _safe_divide((((s_next - s_now) ** 2).sum(-1) * pairs).sum(), pairs.sum())
    return total / len(temporal)


def depth_to_disparity(depth: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric depth -> ``(disparity, valid)`` with ``disparity = 1 / depth`` where ``depth > 0`` (and ``valid``),
    zero elsewhere: the space in which the relative-depth losses compare."""
    ok = depth > 0 if valid is None else valid & (depth > 0)
    return torch.where(ok, 1.0 / torch.where(ok, depth, torch.ones_like(depth)), torch.zeros_like(depth)), ok


def median_and_spread(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of ``x (batch, ...)``: the median ``t`` and the mean absolute deviation from it ``s``
    (MiDaS's normalisation statistics), each ``(batch,)``."""
    flat = x.flatten(1)
    median = flat.median(dim=1).values
    return median, (flat - median[:, None]).abs().mean(dim=1)


def output_anchor_loss(raw: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pins each map's free scale and shift to a reference's: ``raw, reference (batch, ...)`` (e.g. the student's
    and the teacher's depth-head output before the final activation),

        mean over maps of  ((t(raw) - t(ref)) / s(ref))^2 + log(s(raw) / s(ref))^2

    with ``t, s`` from :func:`median_and_spread`. The scale-and-shift-invariant losses leave both free; this term
    is zero (with zero gradient) when they match the reference's, whatever the map's shape.
    """
    if raw.shape != reference.shape or raw.dim() < 2:
        raise ValueError(
            f"raw and reference must have one shape (batch, ...); got {tuple(raw.shape)} and {tuple(reference.shape)}"
        )
    t_raw, s_raw = median_and_spread(raw)
    t_ref, s_ref = median_and_spread(reference.detach())
    s_ref = s_ref.clamp_min(eps)
    return (((t_raw - t_ref) / s_ref) ** 2 + torch.log(s_raw.clamp_min(eps) / s_ref) ** 2).mean()
