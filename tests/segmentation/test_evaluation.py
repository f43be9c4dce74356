"""YouTube-VIS AP/AR on hand-made cases whose values are worked out by hand in the comments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videostate.segmentation import rle
from videostate.segmentation.evaluation import evaluate_ytvis, video_iou

H, W = 12, 10


def box(frame_boxes: list[tuple[int, int, int, int] | None]) -> list[np.ndarray | None]:
    """Per-frame masks from (y0, y1, x0, x1) boxes; None = not in that frame."""
    masks = []
    for b in frame_boxes:
        if b is None:
            masks.append(None)
            continue
        m = np.zeros((H, W), dtype=bool)
        m[b[0] : b[1], b[2] : b[3]] = True
        masks.append(m)
    return masks


def segs(masks):
    return [None if m is None else rle.encode(m) for m in masks]


def dataset(videos: dict[int, int], annotations: list[tuple[int, int, list, int]], categories=(1, 2)) -> dict:
    """``videos``: id -> length; ``annotations``: (video_id, category_id, masks, iscrowd)."""
    return {
        "videos": [{"id": v, "height": H, "width": W, "length": n} for v, n in videos.items()],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [
            {"id": i + 1, "video_id": v, "category_id": c, "segmentations": segs(m), "iscrowd": crowd}
            for i, (v, c, m, crowd) in enumerate(annotations)
        ],
    }


def det(video, category, masks, score):
    return {"video_id": video, "category_id": category, "score": score, "segmentations": segs(masks)}


A = box([(0, 4, 0, 5), (1, 5, 0, 5)])
B = box([(6, 10, 2, 8), None])


def test_perfect_detections_score_one(tmp_path):
    gt = dataset({1: 2}, [(1, 1, A, 0), (1, 2, B, 0)])
    results = [det(1, 1, A, 0.9), det(1, 2, B, 0.8)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    metrics = evaluate_ytvis(tmp_path / "gt.json", tmp_path / "results.json")
    assert [metrics[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10")] == pytest.approx([1.0] * 5)
    assert metrics["APs"] == pytest.approx(1.0) and metrics["APm"] == metrics["APl"] == -1.0  # every object is small


def test_higher_scored_false_positive_halves_precision():
    gt = dataset({1: 2}, [(1, 1, A, 0)], categories=(1,))
    results = [det(1, 1, B, 0.9), det(1, 1, A, 0.5)]
    metrics = evaluate_ytvis(gt, results)
    # ranked: FP then TP -> precision 1/2 at recall 1, interpolated to 1/2 at every recall point
    assert metrics["AP"] == pytest.approx(0.5)
    assert metrics["AR1"] == 0.0 and metrics["AR10"] == pytest.approx(1.0)


def test_iou_sums_intersection_and_union_over_frames():
    gt_masks = box([(0, 6, 0, 5), (0, 2, 0, 5)])  # 30 and 10 pixels
    found = box([(0, 6, 0, 5), None])  # exact on frame 0, missing on frame 1
    assert video_iou(found, gt_masks) == pytest.approx(30 / 40)  # the per-frame mean would be 0.5
    metrics = evaluate_ytvis(dataset({1: 2}, [(1, 1, gt_masks, 0)], (1,)), [det(1, 1, found, 0.7)])
    # matched at thresholds .50 .55 .60 .65 .70 .75 (6 of 10)
    assert metrics["AP"] == pytest.approx(0.6)
    assert [metrics["AP50"], metrics["AP75"]] == pytest.approx([1.0, 1.0])


def test_precision_interpolation_over_101_recall_points():
    c = box([(0, 3, 0, 3), (0, 3, 0, 3)])
    gt = dataset({1: 2, 2: 2}, [(1, 1, A, 0), (1, 1, c, 0), (2, 1, B, 0)], (1,))
    results = [det(1, 1, A, 0.9), det(2, 1, c, 0.8), det(1, 1, c, 0.7), det(2, 1, B, 0.6)]
    # TP FP TP TP: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1 -> interpolated 1, 3/4, 3/4, 3/4.
    # recall points 0.00..0.33 (34 of them) get 1, the other 67 get 3/4.
    metrics = evaluate_ytvis(gt, results)
    assert metrics["AP"] == pytest.approx((34 * 1 + 67 * 0.75) / 101)
    # one detection per video: TP in video 1 (of its 2 instances), FP in video 2 -> 1 of 3 instances found
    assert metrics["AR1"] == pytest.approx(1 / 3)


def test_crowd_ground_truth_is_ignored_and_missing_categories_are_skipped():
    gt = dataset({1: 2}, [(1, 1, A, 0), (1, 1, B, 1)])
    metrics = evaluate_ytvis(gt, [det(1, 1, B, 0.9), det(1, 1, A, 0.8)])
    assert metrics["AP"] == pytest.approx(
        1.0
    )  # the detection on the crowd region is neither TP nor FP; category 2 has no gt
    assert evaluate_ytvis(gt, [])["AP"] == 0.0


def test_polygon_ground_truth():
    gt = dataset({1: 1}, [], (1,))
    gt["annotations"] = [
        {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [[[1, 1, 4, 1, 4, 3, 1, 3]]]}
    ]
    square = np.zeros((H, W), dtype=bool)
    square[1:4, 1:5] = True
    assert evaluate_ytvis(gt, [det(1, 1, [square], 0.5)])["AP"] == pytest.approx(1.0)


def test_bad_inputs():
    gt = dataset({1: 2}, [(1, 1, A, 0)], (1,))
    with pytest.raises(ValueError, match="has 1 frames; video 1 has 2"):
        evaluate_ytvis(gt, [det(1, 1, A[:1], 0.5)])
    with pytest.raises(ValueError, match="video 7"):
        evaluate_ytvis(gt, [det(7, 1, A, 0.5)])
    with pytest.raises(ValueError, match="'videos'"):
        evaluate_ytvis({"annotations": []}, [])
    with pytest.raises(TypeError, match="list of detections"):
        evaluate_ytvis(gt, {"video_id": 1})
