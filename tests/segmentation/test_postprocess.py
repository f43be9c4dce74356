"""Post-processing against loops and hand-made cases; YouTube-VIS export evaluated back to AP 1."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from videostate.segmentation import rle
from videostate.segmentation.evaluation import evaluate_ytvis
from videostate.segmentation.postprocess import (
    OnlineTracks,
    instance_tracks,
    panoptic_video,
    semantic_video,
    ytvis_results,
)


def random_logits(frames=3, queries=4, classes=3, size=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(frames, queries, classes + 1, generator=g, dtype=torch.float64) * 2,
        torch.randn(frames, queries, *size, generator=g, dtype=torch.float64) * 3,
    )


def test_instance_tracks_rank_query_class_pairs_by_frame_averaged_scores():
    class_logits, mask_logits = random_logits()
    tracks = instance_tracks(class_logits, mask_logits, top_k=5)
    pairs = []
    for q, c in itertools.product(range(4), range(3)):
        mean = [sum(class_logits[t, q, k].item() for t in range(3)) / 3 for k in range(4)]
        score = math.exp(mean[c]) / sum(math.exp(v) for v in mean)
        pairs.append((score, q, c))
    pairs.sort(reverse=True)
    assert [(t.query, t.label) for t in tracks] == [(q, c) for _, q, c in pairs[:5]]
    assert [t.score for t in tracks] == pytest.approx([s for s, _, _ in pairs[:5]], abs=1e-6)
    for track in tracks:
        assert torch.equal(track.masks, mask_logits[:, track.query] > 0)
    resized = instance_tracks(class_logits, mask_logits, top_k=2, output_size=(12, 10))
    assert resized[0].masks.shape == (3, 12, 10)
    with pytest.raises(ValueError, match=r"\(T, Q, C\+1\)"):
        instance_tracks(class_logits[0], mask_logits)


def test_semantic_video_equals_the_loop():
    class_logits, mask_logits = random_logits(seed=1)
    got = semantic_video(class_logits, mask_logits)
    probs = class_logits.softmax(-1)
    for t, y, x in itertools.product(range(3), range(6), range(5)):
        per_class = [
            sum(probs[t, q, c].item() * torch.sigmoid(mask_logits[t, q, y, x]).item() for q in range(4))
            for c in range(3)
        ]
        assert got[t, y, x].item() == max(range(3), key=lambda c: per_class[c])


def test_panoptic_video_hand_made():
    frames, size = 2, (4, 6)
    mask_logits = torch.full((frames, 4, *size), -10.0)
    mask_logits[:, 0, :, :3] = 10  # query 0: left half, thing class 0
    mask_logits[:, 1, :, 3:] = 10  # query 1: right half, stuff class 2
    mask_logits[:, 2, :2, 3:] = 10  # query 2: top right, stuff class 2 too, less confident
    mask_logits[:, 3] = 10  # query 3: everything, but "no object"
    class_logits = torch.full((frames, 4, 4), -10.0)
    class_logits[:, 0, 0] = 10
    class_logits[:, 1, 2] = 10
    class_logits[:, 2, 2] = 5
    class_logits[:, 3, 3] = 10
    pan = panoptic_video(class_logits, mask_logits, threshold=0.8, overlap_threshold=0.0, stuff_labels={2})
    assert [(s["id"], s["label"], s["query"]) for s in pan.segments] == [(1, 0, 0), (2, 2, -1)]
    expected = torch.zeros(frames, *size, dtype=torch.long)
    expected[:, :, :3] = 1
    expected[:, :, 3:] = 2
    assert torch.equal(pan.segmentation, expected)
    # as things, query 2 loses every pixel to the more confident query 1 and is dropped
    things = panoptic_video(class_logits, mask_logits, threshold=0.8, overlap_threshold=0.5)
    assert [(s["id"], s["query"]) for s in things.segments] == [(1, 0), (2, 1)]


def test_online_tracks_average_scores_over_frames_seen():
    class_logits, mask_logits = random_logits(frames=4, seed=3)
    online = OnlineTracks(threshold=0.3)
    for t in range(4):
        track_map, tracks = online.update(class_logits[t], mask_logits[t])
        probs = class_logits[: t + 1].mean(0).softmax(-1)[:, :-1]
        scores, labels = probs.max(-1)
        expected = {q: (int(labels[q]), float(scores[q])) for q in range(4) if scores[q] > 0.3}
        assert tracks.keys() == expected.keys()
        for q, (label, score) in tracks.items():
            assert label == expected[q][0] and score == pytest.approx(expected[q][1], abs=1e-6)
        for y, x in itertools.product(range(6), range(5)):
            candidates = [(scores[q].item() * torch.sigmoid(mask_logits[t, q, y, x]).item(), q) for q in expected]
            best = max(candidates, default=(0.0, -1))
            on = best[1] >= 0 and torch.sigmoid(mask_logits[t, best[1], y, x]).item() > 0.5
            assert track_map[y, x].item() == (best[1] if on else -1)


def test_ytvis_export_round_trips_through_evaluation():
    class_logits, mask_logits = random_logits(frames=2, queries=3, classes=2, seed=4)
    mask_logits[:, :, 0, 0] = 5.0  # every mask non-empty
    tracks = instance_tracks(class_logits, mask_logits, top_k=2)
    results = ytvis_results(tracks, video_id=7, category_ids=[10, 20])
    assert [r["category_id"] for r in results] == [[10, 20][t.label] for t in tracks]
    for result, track in zip(results, tracks, strict=True):
        for t in range(2):
            assert torch.equal(torch.from_numpy(rle.decode(result["segmentations"][t])), track.masks[t])
    gt = {
        "videos": [{"id": 7, "height": 6, "width": 5, "length": 2}],
        "categories": [{"id": 10}, {"id": 20}],
        "annotations": [
            {
                "id": i + 1,
                "video_id": 7,
                "category_id": r["category_id"],
                "iscrowd": 0,
                "segmentations": r["segmentations"],
            }
            for i, r in enumerate(results)
        ],
    }
    assert evaluate_ytvis(gt, results)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="category_ids"):
        ytvis_results(tracks, 7, category_ids=[10])
