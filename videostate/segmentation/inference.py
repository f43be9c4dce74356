"""Running VidEoMT on a video: frame preprocessing, online streaming, track colours and overlays."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .model import VideomtForUniversalSegmentation, VideomtVideoOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_frames(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(N, 3, H, W)`` floats in ``[0, 1]`` -> ``(N, 3, S, S)`` resized (bilinear) and ImageNet-normalised."""
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(f"frames must be float (N, 3, H, W) in [0, 1]; got {frames.dtype} {tuple(frames.shape)}")
    resized = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype, device=frames.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=frames.dtype, device=frames.device)[:, None, None]
    return (resized - mean) / std


@torch.no_grad()
def stream_video(
    model: VideomtForUniversalSegmentation, frames: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> Iterator[tuple[torch.Tensor, VideomtVideoOutput]]:
    """``(frame, outputs)`` for each frame ``(3, H, W)`` in ``[0, 1]``: outputs with ``T = 1``, batch 1, the
    queries carried from frame to frame; constant memory. The model must be in eval mode: frames go through
    ``model.fast_step()`` (a CUDA graph on CUDA)."""
    state = None
    step = model.fast_step()
    size = model.config.image_size
    for frame in frames:
        pixels = preprocess_frames(frame[None].to(device=device, dtype=model.dtype), size)
        if state is None:
            state = model.init_state(1, device=pixels.device, dtype=pixels.dtype)
        outputs, state = step(pixels, state)
        yield frame, outputs


def track_colors(num_tracks: int) -> np.ndarray:
    """``(num_tracks, 3)`` uint8 distinct, fixed colours (golden-ratio hues), so a track keeps its colour."""
    hues = (np.arange(num_tracks) * 0.618033988749895) % 1.0
    h6 = hues * 6
    c = np.stack([np.abs(h6 - 3) - 1, 2 - np.abs(h6 - 2), 2 - np.abs(h6 - 4)], axis=1).clip(0, 1)
    return (255 * (0.25 + 0.75 * c)).astype(np.uint8)


def overlay(frame: np.ndarray, track_map: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each track's colour over ``frame (H, W, 3)`` uint8 where ``track_map (H, W)`` holds its id (-1: none)."""
    if frame.shape[:2] != track_map.shape:
        raise ValueError(f"frame {frame.shape[:2]} and track_map {track_map.shape} differ in size")
    out = frame.astype(np.float32)
    on = track_map >= 0
    out[on] = (1 - alpha) * out[on] + alpha * colors[track_map[on]].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)
