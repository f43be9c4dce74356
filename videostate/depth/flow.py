"""Static-pixel masks from OpenCV DIS optical flow, with camera motion removed.

A pixel is *static* between frames ``t`` and ``t+1`` when (1) its forward flow and the backward flow at its
target agree (forward-backward consistency: ``|F(p) + B(p + F(p))| < fb_threshold`` pixels) and (2) its flow
is explained by the camera: a homography fitted with RANSAC to the consistent flow predicts it within
``motion_threshold`` pixels. Independently moving objects and occlusions fail one of the two tests.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB arrays (H, W, 3); got {frame.dtype} {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def dis_flow(frame0: np.ndarray, frame1: np.ndarray, preset: str = "medium") -> np.ndarray:
    """DIS optical flow from ``frame0`` to ``frame1`` (uint8 RGB ``(H, W, 3)``): ``(H, W, 2)`` float32 ``(dx, dy)``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}")
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames must have one shape; got {frame0.shape} and {frame1.shape}")
    return cv2.DISOpticalFlow_create(PRESETS[preset]).calc(_gray(frame0), _gray(frame1), None)


def _grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def forward_backward_error(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """``|F(p) + B(p + F(p))|`` per pixel (``inf`` where ``p + F(p)`` leaves the image): ``(H, W)``."""
    h, w = forward.shape[:2]
    target = _grid(h, w) + forward
    back = cv2.remap(backward, target[..., 0], target[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    error = np.linalg.norm(forward + back, axis=-1)
    inside = (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)
    return np.where(inside, error, np.inf)


def camera_flow(forward: np.ndarray, reliable: np.ndarray, max_points: int = 4000, seed: int = 0) -> np.ndarray | None:
    """The flow of a homography fitted (RANSAC, 1 px) to ``forward`` on ``reliable`` pixels: ``(H, W, 2)``, or
    ``None`` when fewer than 8 reliable pixels or no homography is found."""
    h, w = forward.shape[:2]
    ys, xs = np.nonzero(reliable)
    if len(xs) < 8:
        return None
    if len(xs) > max_points:
        pick = np.random.default_rng(seed).choice(len(xs), max_points, replace=False)
        ys, xs = ys[pick], xs[pick]
    src = np.stack([xs, ys], axis=-1).astype(np.float32)
    dst = src + forward[ys, xs]
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, 1.0)
    if H is None:
        return None
    grid = _grid(h, w).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(grid, H).reshape(h, w, 2) - grid.reshape(h, w, 2)


def static_mask(
    frame0: np.ndarray,
    frame1: np.ndarray,
    *,
    preset: str = "medium",
    fb_threshold: float = 1.0,
    motion_threshold: float = 1.0,
) -> np.ndarray:
    """Pixels of ``frame0`` static between the two uint8 RGB frames ``(H, W, 3)``: bool ``(H, W)``.

    Static = forward-backward consistent within ``fb_threshold`` px and moving as the fitted camera
    homography within ``motion_threshold`` px (no pixel is static if no homography can be fitted).
    """
    forward = dis_flow(frame0, frame1, preset)
    backward = dis_flow(frame1, frame0, preset)
    consistent = forward_backward_error(forward, backward) < fb_threshold
    camera = camera_flow(forward, consistent)
    if camera is None:
        return np.zeros(consistent.shape, dtype=bool)
    return consistent & (np.linalg.norm(forward - camera, axis=-1) < motion_threshold)


def clip_static_masks(clip: torch.Tensor, **kwargs) -> torch.Tensor:
    """``clip (N, 3, H, W)`` float RGB in [0, 1] -> ``(N-1, H, W)`` bool static masks between consecutive frames
    (``kwargs`` as :func:`static_mask`)."""
    if clip.dim() != 4 or clip.shape[1] != 3 or not clip.is_floating_point():
        raise ValueError(f"clip must be a float tensor (N, 3, H, W) in [0, 1]; got {clip.dtype} {tuple(clip.shape)}")
    frames = (clip.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    masks = [static_mask(frames[i], frames[i + 1], **kwargs) for i in range(len(frames) - 1)]
    if not masks:
        return torch.zeros(0, *clip.shape[-2:], dtype=torch.bool, device=clip.device)
    return torch.from_numpy(np.stack(masks)).to(clip.device)
