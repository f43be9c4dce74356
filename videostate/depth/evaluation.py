"""Teacher alone vs VideoMambaDepth on one sequence: accuracy, temporal stability and TAE.

Both methods' outputs are aligned once per sequence (least squares in disparity space) to the reference: the
ground truth when given, else the teacher. Reported per method:

- ``abs_rel_teacher`` / ``delta1_teacher``: per-frame AbsRel / delta1 against the teacher (mean over frames);
- ``abs_rel_gt`` / ``delta1_gt``: against ground-truth depth (Video Depth Anything's protocol);
- ``flicker`` and ``temporal_variance`` on static pixels (DIS flow with camera motion removed);
- ``tae``: temporal alignment error (percent) when ground truth, poses and intrinsics are given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from .flow import clip_static_masks
from .metrics import (
    abs_rel_delta1,
    align_sequence,
    depth_metrics_against_gt,
    flicker,
    metric_depth_for_tae,
    temporal_alignment_error,
    temporal_variance,
)


def load_trajectory_log(path: str | Path) -> np.ndarray:
    """Camera-to-world poses ``(N, 4, 4)`` from an Open3D ``.log`` trajectory (a header line, then 4 rows each)."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) % 5:
        raise ValueError(f"{path} is not an Open3D trajectory log: {len(rows)} lines is not a multiple of 5")
    poses = [np.array(rows[i + 1 : i + 5], dtype=np.float64) for i in range(0, len(rows), 5)]
    if any(p.shape != (4, 4) for p in poses):
        raise ValueError(f"{path}: every pose must be 4 rows of 4 numbers")
    return np.stack(poses)


@dataclasses.dataclass
class SequenceResult:
    """``metrics``: method -> metric -> value; ``curves``: method -> curve name -> per-frame values."""

    metrics: dict[str, dict[str, float]]
    curves: dict[str, dict[str, list[float]]]


@torch.no_grad()
def predict_sequence(model, frames: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``frames (N, 3, H, W)`` -> ``{"teacher": (N, H, W), "model": (N, H, W)}``: the teacher frame by frame
    and the model streamed frame by frame from a fresh state."""
    param = next(model.parameters())
    teacher, student = [], []
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size].to(param.device, param.dtype)
        teacher.append(model.teacher.predict_depth(batch)[:, 0].float().cpu())
    states = model.init_states(1)
    for frame in frames:
        depth, states = model.step(frame[None].to(param.device, param.dtype), states)
        student.append(depth[0, 0].float().cpu())
    return {"teacher": torch.cat(teacher).double(), "model": torch.stack(student).double()}


def evaluate_sequence(
    predictions: dict[str, torch.Tensor],
    frames: torch.Tensor,
    gt_depth: torch.Tensor | None = None,
    poses: np.ndarray | None = None,
    K: np.ndarray | None = None,
    *,
    max_depth: float = 10.0,
    flow_preset: str = "fast",
) -> SequenceResult:
    """Metrics of each method's ``(N, H, W)`` disparity-like prediction (see the module docstring)."""
    teacher = predictions["teacher"]
    static = clip_static_masks(frames, preset=flow_preset)
    if gt_depth is not None:
        valid = (gt_depth > 1e-3) & (gt_depth <= max_depth)
        reference = torch.where(valid, 1.0 / gt_depth.double().clamp_min(1e-3), torch.zeros_like(gt_depth.double()))
        reference_mask = valid
    else:
        reference, reference_mask = teacher, teacher > 1e-6
    metrics, curves = {}, {}
    for name, pred in predictions.items():
        aligned_to_teacher = align_sequence(pred, teacher, teacher > 1e-6).clamp_min(1e-6)
        per_frame = [abs_rel_delta1(aligned_to_teacher[i], teacher[i], teacher[i] > 1e-6) for i in range(len(pred))]
        row = {
            "abs_rel_teacher": float(np.mean([a for a, _ in per_frame])),
            "delta1_teacher": float(np.mean([d for _, d in per_frame])),
        }
        aligned = align_sequence(pred, reference, reference_mask)
        row["flicker"] = flicker(aligned, static)
        row["temporal_variance"] = temporal_variance(aligned, static)
        curve = {
            "abs_rel_teacher": [a for a, _ in per_frame],
            "flicker": [flicker(aligned[i : i + 2], static[i : i + 1]) for i in range(len(pred) - 1)],
        }
        if gt_depth is not None:
            row.update({f"{k}_gt": v for k, v in depth_metrics_against_gt(pred, gt_depth.double(), max_depth).items()})
            if poses is not None and K is not None:
                row["tae"] = temporal_alignment_error(
                    metric_depth_for_tae(pred, gt_depth, max_depth=max_depth), poses, K
                )
        metrics[name], curves[name] = row, curve
    return SequenceResult(metrics, curves)


def format_table(result: SequenceResult) -> str:
    names = list(result.metrics)
    keys = list(result.metrics[names[0]])
    lines = [f"{'metric':<20}" + "".join(f"{n:>14}" for n in names)]
    for key in keys:
        lines.append(f"{key:<20}" + "".join(f"{result.metrics[n][key]:>14.5f}" for n in names))
    return "\n".join(lines)


def plot_curves(result: SequenceResult, path: str | Path, size: tuple[int, int] = (360, 640)) -> None:
    """One PNG per curve: every method's per-frame values as coloured polylines on a white canvas, with the
    y range written in the top-left corner."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    names = list(result.curves)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for curve in result.curves[names[0]]:
        height, width = size
        canvas = np.full((height, width, 3), 255, np.uint8)
        series = [np.asarray(result.curves[n][curve], dtype=np.float64) for n in names]
        values = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.zeros(1)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        span = max(high - low, 1e-12)
        for colour, s, name in zip(colours, series, names, strict=False):
            if len(s) < 2:
                continue
            xs = np.linspace(40, width - 10, len(s))
            ys = height - 30 - (np.nan_to_num(s, nan=low) - low) / span * (height - 70)
            cv2.polylines(canvas, [np.stack([xs, ys], 1).round().astype(np.int32)], False, colour[::-1], 2)
            cv2.putText(
                canvas, name, (width - 150, 25 + 20 * names.index(name)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour[::-1], 1
            )
        cv2.putText(canvas, f"{curve}: {low:.4g} .. {high:.4g}", (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.imwrite(str(out / f"{curve}.png"), canvas)
