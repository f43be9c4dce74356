"""Frame-rate up-conversion of a video file: ``videostate interpolate IN -o OUT --factor 2|4|8`` or ``--fps``.

Output frame ``j`` shows time ``j / out_fps``; it falls between input frames ``i`` and ``i + 1`` at
``t = j * in_fps / out_fps - i`` and is the input frame itself when ``t = 0``, else the model's
frame at ``t``. The output covers the input's whole duration (``ceil(N * out_fps / in_fps)``
frames; past the last input frame it repeats that frame), so the copied audio stays in sync.

Scene cuts: when the SSIM of 32x32 grey thumbnails of two neighbouring frames is below
``scene_threshold`` (RIFE's test, 0.2), nothing is blended across the cut: the frames between them
repeat the nearer input frame. Memory is bounded: two input frames are held at a time.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..metrics import ssim
from .model import HybridVFI


def output_rate(in_rate: Fraction, factor: int | None, fps: float | None) -> Fraction:
    """The output frame rate for ``--factor`` or ``--fps`` (exactly one of them)."""
    if (factor is None) == (fps is None):
        raise ValueError(f"give exactly one of factor and fps; got factor={factor}, fps={fps}")
    if factor is not None:
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2; got {factor!r}")
        return in_rate * factor
    if fps <= 0:
        raise ValueError(f"fps must be positive; got {fps}")
    return Fraction(fps).limit_denominator(1001)


def frame_plan(num_frames: int, in_rate: Fraction, out_rate: Fraction) -> list[tuple[int, Fraction]]:
    """``(i, t)`` for every output frame: between input frames ``i`` and ``i + 1`` at time ``t`` in [0, 1)."""
    if num_frames < 1:
        raise ValueError(f"the input has no frames (got {num_frames})")
    count = math.ceil(num_frames * out_rate / in_rate)
    plan = []
    for j in range(count):
        position = Fraction(j) * in_rate / out_rate
        i = math.floor(position)
        plan.append((num_frames - 1, Fraction(0)) if i >= num_frames - 1 else (i, position - i))
    return plan


def is_scene_cut(frame0: torch.Tensor, frame1: torch.Tensor, threshold: float) -> bool:
    """SSIM of 32x32 grey thumbnails below ``threshold``; frames ``(3, H, W)`` in [0, 1]."""
    thumbs = F.interpolate(torch.stack([frame0, frame1]).float(), size=(32, 32), mode="area").mean(1, keepdim=True)
    return float(ssim(thumbs[0:1], thumbs[1:2])) < threshold


@torch.no_grad()
def interpolate_video(
    model: HybridVFI,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    factor: int | None = 2,
    fps: float | None = None,
    scene_threshold: float = 0.2,
    flow_scale: float = 1.0,
    bf16: bool = False,
    input_fps: float | None = None,
    progress: bool = True,
) -> dict:
    """Write ``output_path`` at the new frame rate, with the input's audio. Returns a summary dict
    (``frames_in``, ``frames_out``, ``fps_in``, ``fps_out``, ``scene_cuts``). ``input_fps`` is the frame
    rate of a folder of frames (default 30); a video file's own rate is always used."""
    from ..data.cli import describe
    from ..data.video import VideoReader, VideoWriter

    param = next(model.parameters())
    device = param.device
    model.eval()
    if flow_scale != 1.0 and not model.config.use_flow:
        raise ValueError("--scale applies to the flow estimator of phase-2/3 models; this model is phase 1")
    audio = Path(input_path).is_file() and describe(str(input_path))["audio"] is not None
    cuts = 0
    with VideoReader(input_path, format="tensor", fps=input_fps) as reader:
        frames_in = len(reader)
        rate = output_rate(reader.frame_rate, factor, fps)
        plan = frame_plan(len(reader), reader.frame_rate, rate)
        frames = iter(reader)
        current, following, pair_index, cut = next(frames), None, -1, False
        with VideoWriter(output_path, rate, audio_from=input_path if audio else None) as writer:
            for i, t in tqdm(plan, desc="interpolate", unit="frame", disable=not progress):
                while pair_index < i:
                    if following is not None:
                        current = following
                    following = next(frames) if i + 1 < len(reader) else None
                    pair_index += 1
                    cut = following is not None and is_scene_cut(current, following, scene_threshold)
                    cuts += cut
                if t == 0 or following is None:
                    out = current
                elif cut:
                    out = current if t < 0.5 else following
                else:
                    img0, img1 = current[None].to(device), following[None].to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        out = model(img0.to(param.dtype), img1.to(param.dtype), float(t), flow_scale=flow_scale)
                    out = out[0].float().clamp(0, 1).cpu()
                writer.write(out)
            frames_out = writer.frames_written
    return {
        "frames_in": frames_in,
        "frames_out": frames_out,
        "fps_in": float(reader.frame_rate),
        "fps_out": float(rate),
        "scene_cuts": cuts,
    }
