"""YouTube-VIS evaluation: video AP / AR as the official YTVOSeval (COCO protocol with video IoU).

- IoU of a detection and a ground truth = intersection summed over frames / union summed over frames.
- Per (video, category): detections sorted by score (stable), at most ``max_dets[-1]``; greedy matching at each
  IoU threshold .50:.05:.95; crowd or out-of-area ground truths are ignored (matched detections too).
- Area of an instance = mean of its non-zero per-frame areas; ranges all / small < 128² / medium < 256² / large.
- Precision at 101 recall points (interpolated, monotone); AP = mean over thresholds, recall points and
  categories with ground truth; AR@k = mean of the final recall with ``k`` detections per video.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import rle

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0, 1e5**2), "small": (0, 128**2), "medium": (128**2, 256**2), "large": (256**2, 1e5**2)}


def _load(source, what: str):
    if isinstance(source, (str, Path)):
        return json.loads(Path(source).read_text())
    if isinstance(source, (dict, list)):
        return source
    raise TypeError(f"{what} must be a path or parsed JSON; got {type(source).__name__}")


def _frame_masks(segmentations: list, height: int, width: int) -> list[np.ndarray | None]:
    masks = []
    for seg in segmentations:
        if not seg:
            masks.append(None)
            continue
        mask = rle.decode(seg, height, width)
        if mask.shape != (height, width):
            raise ValueError(f"a segmentation of size {mask.shape} in a video of size {(height, width)}")
        masks.append(mask)
    return masks


def _mean_area(segmentations: list, height: int, width: int) -> float:
    """Mean of the non-zero per-frame areas (RLE areas are read from the counts, without decoding)."""
    areas = []
    for seg in segmentations:
        if seg:
            areas.append(rle.area(seg) if isinstance(seg, dict) else int(rle.decode(seg, height, width).sum()))
    areas = [a for a in areas if a]
    return float(np.mean(areas)) if areas else 0.0


def video_iou(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> float:
    """Sum over frames of intersection / sum of union (``None`` = empty frame); 0 when both are empty."""
    if len(a) != len(b):
        raise ValueError(f"the two tracks have {len(a)} and {len(b)} frames")
    inter = union = 0
    for x, y in zip(a, b, strict=True):
        if x is not None and y is not None:
            inter += int(np.logical_and(x, y).sum())
            union += int(np.logical_or(x, y).sum())
        elif x is not None or y is not None:
            union += int((x if x is not None else y).sum())
    return inter / union if union > 0 else 0.0


def _match(ious, gt_ignore, gt_crowd, threshold):
    """Greedy COCO matching of score-sorted detections; gts sorted with ignored ones last."""
    num_dt, num_gt = ious.shape
    dt_match = np.full(num_dt, -1)
    dt_ignore = np.zeros(num_dt, dtype=bool)
    gt_taken = np.zeros(num_gt, dtype=bool)
    for d in range(num_dt):
        best, m = min(threshold, 1 - 1e-10), -1
        for g in range(num_gt):
            if gt_taken[g] and not gt_crowd[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m > -1:
            dt_ignore[d] = gt_ignore[m]
            dt_match[d] = m
            gt_taken[m] = True
    return dt_match, dt_ignore


def evaluate_ytvis(gt_json, results, max_dets: tuple[int, ...] = (1, 10, 100)) -> dict[str, float]:
    """YouTube-VIS metrics of ``results`` (a results list or its JSON path) against ``gt_json`` (dict or path).

    Returns ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100`` (``-1`` where no category has ground truth in
    that setting), as the official evaluation's summary.
    """
    gt = _load(gt_json, "gt_json")
    dts = _load(results, "results")
    if not isinstance(gt, dict) or not {"videos", "annotations", "categories"} <= set(gt):
        raise ValueError("gt_json must be YouTube-VIS JSON with 'videos', 'annotations' and 'categories'")
    if not isinstance(dts, list):
        raise TypeError(f"results must be a list of detections; got {type(dts).__name__}")
    videos = {v["id"]: v for v in gt["videos"]}
    categories = sorted(c["id"] for c in gt["categories"])
    max_dets = tuple(sorted(max_dets))

    # masks are decoded one (video, category) group at a time, so memory holds one group's masks
    gts_by = defaultdict(list)
    for ann in gt["annotations"]:
        v = videos[ann["video_id"]]
        if "areas" in ann:
            areas = [a for a in ann["areas"] if a]
            area = float(np.mean(areas)) if areas else 0.0
        else:
            area = _mean_area(ann["segmentations"], v["height"], v["width"])
        gts_by[ann["video_id"], ann["category_id"]].append(
            {"segmentations": ann["segmentations"], "area": area, "crowd": bool(ann.get("iscrowd", 0))}
        )
    dts_by = defaultdict(list)
    for i, det in enumerate(dts):
        if det["video_id"] not in videos:
            raise ValueError(f"detection {i} is for video {det['video_id']}, which is not in gt_json")
        v = videos[det["video_id"]]
        if len(det["segmentations"]) != v["length"]:
            raise ValueError(
                f"detection {i} has {len(det['segmentations'])} frames; video {det['video_id']} has {v['length']}"
            )
        dts_by[det["video_id"], det["category_id"]].append(
            {
                "segmentations": det["segmentations"],
                "area": _mean_area(det["segmentations"], v["height"], v["width"]),
                "score": det["score"],
            }
        )

    num_t, num_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((num_t, num_r, len(categories), len(AREA_RANGES), len(max_dets)))
    recall = -np.ones((num_t, len(categories), len(AREA_RANGES), len(max_dets)))
    for k, cat in enumerate(categories):
        per_video = []
        for vid in videos:
            g, d = gts_by[vid, cat], dts_by[vid, cat]
            if not g and not d:
                continue
            d = [d[i] for i in np.argsort([-x["score"] for x in d], kind="mergesort")][: max_dets[-1]]
            size = (videos[vid]["height"], videos[vid]["width"])
            g_masks = [_frame_masks(x["segmentations"], *size) for x in g]
            d_masks = [_frame_masks(x["segmentations"], *size) for x in d]
            ious = np.array([[video_iou(x, y) for y in g_masks] for x in d_masks]).reshape(len(d), len(g))
            per_video.append((g, d, ious))
        for a, (low, high) in enumerate(AREA_RANGES.values()):
            evaluated = []
            for g, d, ious in per_video:
                ignore = np.array([x["crowd"] or not low <= x["area"] <= high for x in g], dtype=bool)
                order = np.argsort(ignore, kind="mergesort")
                crowd = np.array([g[i]["crowd"] for i in order], dtype=bool)
                matched = np.zeros((num_t, len(d)), dtype=bool)
                dt_ignore = np.zeros((num_t, len(d)), dtype=bool)
                for t, thr in enumerate(IOU_THRESHOLDS):
                    m, ig = _match(ious[:, order], ignore[order], crowd, thr)
                    matched[t], dt_ignore[t] = m > -1, ig
                outside = np.array([not low <= x["area"] <= high for x in d], dtype=bool)
                dt_ignore |= ~matched & outside[None]
                evaluated.append((np.array([x["score"] for x in d]), matched, dt_ignore, int((~ignore).sum())))
            for m_i, max_det in enumerate(max_dets):
                num_gt = sum(e[3] for e in evaluated)
                if not evaluated or num_gt == 0:
                    continue
                scores = np.concatenate([e[0][:max_det] for e in evaluated])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e[1][:, :max_det] for e in evaluated], axis=1)[:, order]
                ignored = np.concatenate([e[2][:, :max_det] for e in evaluated], axis=1)[:, order]
                tps = np.cumsum(matched & ~ignored, axis=1).astype(float)
                fps = np.cumsum(~matched & ~ignored, axis=1).astype(float)
                for t in range(num_t):
                    rc = tps[t] / num_gt
                    pr = tps[t] / (tps[t] + fps[t] + np.spacing(1))
                    recall[t, k, a, m_i] = rc[-1] if len(rc) else 0.0
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
                    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                    q = np.zeros(num_r)
                    valid = idx < len(pr)
                    q[valid] = pr[idx[valid]]
                    precision[t, :, k, a, m_i] = q
    return _summarize(precision, recall, max_dets)


def _summarize(precision: np.ndarray, recall: np.ndarray, max_dets: tuple[int, ...]) -> dict[str, float]:
    areas = list(AREA_RANGES)

    def mean(values):
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    def ap(threshold=None, area="all"):
        p = precision if threshold is None else precision[np.isclose(IOU_THRESHOLDS, threshold)]
        return mean(p[:, :, :, areas.index(area), -1])

    out = {
        "AP": ap(),
        "AP50": ap(0.5),
        "AP75": ap(0.75),
        "APs": ap(area="small"),
        "APm": ap(area="medium"),
        "APl": ap(area="large"),
    }
    for m_i, max_det in enumerate(max_dets):
        out[f"AR{max_det}"] = mean(recall[:, :, 0, m_i])
    return out
