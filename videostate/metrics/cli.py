"""``videostate metrics PRED TARGET``: PSNR, SSIM and ssim_matlab between two videos, frame by frame."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", help="video file or frame folder to score")
    parser.add_argument("target", help="reference video file or frame folder (same frame count and size)")
    parser.add_argument("--per-frame", action="store_true", help="also list every frame's values")
    parser.set_defaults(func=run)


def compare(pred_path: str, target_path: str) -> dict:
    """Per-frame and mean PSNR / SSIM / ssim_matlab of two equally long, equally sized videos (8-bit
    frames scaled to [0, 1])."""
    from ..data.video import VideoReader
    from .image import psnr, ssim, ssim_matlab

    pred, target = VideoReader(pred_path, format="tensor"), VideoReader(target_path, format="tensor")
    if len(pred) != len(target) or (pred.width, pred.height) != (target.width, target.height):
        raise ValueError(
            f"{pred_path} ({len(pred)} frames, {pred.width}x{pred.height}) and {target_path} "
            f"({len(target)} frames, {target.width}x{target.height}) must match in frame count and size"
        )
    rows = []
    for i, (p, t) in enumerate(zip(pred, target, strict=True)):
        rows.append(
            {"frame": i, "psnr": psnr(p, t).item(), "ssim": ssim(p, t).item(), "ssim_matlab": ssim_matlab(p, t).item()}
        )
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim", "ssim_matlab")}
    return {"pred": str(pred_path), "target": str(target_path), "frames": len(rows), "mean": mean, "per_frame": rows}


def run(args: argparse.Namespace) -> int:
    result = compare(args.pred, args.target)
    if not args.per_frame:
        del result["per_frame"]
    print(json.dumps(result, indent=2))
    return 0
