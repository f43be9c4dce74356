"""From VidEoMT logits to video instance tracks, semantic and panoptic video maps, and YouTube-VIS results.

Inputs are one video's batch-major outputs: ``class_logits (T, Q, C + 1)`` (last = no object) and
``mask_logits (T, Q, h, w)``. A query keeps its identity across frames, so **the query index is the track
id** (no re-association), as in the official VidEoMT inference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from . import rle


def _check_video_logits(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> None:
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            "expected one video's class_logits (T, Q, C+1) and mask_logits (T, Q, h, w); got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
        )


def resize_masks(mask_logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of ``(..., h, w)`` logits to ``size (H, W)`` (unchanged when ``None``)."""
    if size is None or tuple(mask_logits.shape[-2:]) == tuple(size):
        return mask_logits
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    return F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).reshape(*lead, *size)


def video_class_probs(class_logits: torch.Tensor) -> torch.Tensor:
    """``(Q, C + 1)`` class probabilities of each track: softmax of the logits averaged over frames."""
    return class_logits.float().mean(0).softmax(-1)


@dataclasses.dataclass
class Track:
    """One instance track: ``query`` (the track id), ``label`` (class index), ``score``, ``masks (T, H, W)`` bool."""

    query: int
    label: int
    score: float
    masks: torch.Tensor


def instance_tracks(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    top_k: int = 10,
    output_size: tuple[int, int] | None = None,
) -> list[Track]:
    """The ``top_k`` (query, class) pairs by score, best first, with their masks (logit > 0) over the video.

    Scores are the frame-averaged class probabilities without the no-object class (Mask2Former-VIS); a query
    may appear with several classes.
    """
    _check_video_logits(class_logits, mask_logits)
    probs = video_class_probs(class_logits)[:, :-1]  # (Q, C)
    num_classes = probs.shape[1]
    k = min(top_k, probs.numel())
    scores, flat = probs.flatten().topk(k)
    queries, labels = flat // num_classes, flat % num_classes
    masks = resize_masks(mask_logits[:, queries].float(), output_size) > 0  # (T, k, H, W)
    return [
        Track(int(q), int(c), float(s), masks[:, i])
        for i, (q, c, s) in enumerate(zip(queries.tolist(), labels.tolist(), scores.tolist(), strict=True))
    ]


def semantic_video(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, output_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``(T, H, W)`` class map: per pixel the argmax over classes of ``sum_q p(c | q) sigmoid(mask_q)``.

    ``p(c | q)`` is each frame's softmax without the no-object class.
    """
    _check_video_logits(class_logits, mask_logits)
    probs = class_logits.float().softmax(-1)[..., :-1]  # (T, Q, C)
    masks = resize_masks(mask_logits.float(), output_size).sigmoid()  # (T, Q, H, W)
    return torch.einsum("tqc,tqhw->tchw", probs, masks).argmax(1)


@dataclasses.dataclass
class PanopticVideo:
    """``segmentation (T, H, W)`` int64 segment ids (0 = void) constant over time for a segment, and
    ``segments``: ``{"id", "label", "score", "query"}`` per segment (``query`` -1 for fused stuff)."""

    segmentation: torch.Tensor
    segments: list[dict]


def panoptic_video(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    output_size: tuple[int, int] | None = None,
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
    stuff_labels: frozenset[int] | set[int] = frozenset(),
) -> PanopticVideo:
    """Video panoptic segmentation: tubes from queries kept over the whole clip.

    Queries whose frame-averaged best class is not "no object" and scores above ``threshold`` compete per
    pixel by ``score * sigmoid(mask)``; a query keeps its pixels if they are at least ``overlap_threshold``
    of its own mask (``sigmoid >= mask_threshold``) over the video. Queries of a label in ``stuff_labels``
    are merged into one segment per label.
    """
    _check_video_logits(class_logits, mask_logits)
    probs = video_class_probs(class_logits)
    scores, labels = probs.max(-1)
    keep = (labels != probs.shape[-1] - 1) & (scores > threshold)
    masks = resize_masks(mask_logits.float(), output_size).sigmoid()  # (T, Q, H, W)
    frames, _, height, width = masks.shape
    segmentation = torch.zeros(frames, height, width, dtype=torch.long, device=masks.device)
    segments: list[dict] = []
    kept = keep.nonzero()[:, 0]
    if kept.numel() == 0:
        return PanopticVideo(segmentation, segments)
    winner = (scores[kept][None, :, None, None] * masks[:, kept]).argmax(1)  # (T, H, W) index into kept
    stuff_ids: dict[int, int] = {}
    for i, query in enumerate(kept.tolist()):
        label = int(labels[query])
        own = masks[:, query] >= mask_threshold
        won = (winner == i) & own
        if own.sum() == 0 or won.sum() == 0 or won.sum() / own.sum() < overlap_threshold:
            continue
        if label in stuff_labels:
            if label not in stuff_ids:
                stuff_ids[label] = len(segments) + 1
                segments.append({"id": stuff_ids[label], "label": label, "score": float(scores[query]), "query": -1})
            segmentation[won] = stuff_ids[label]
            continue
        segments.append({"id": len(segments) + 1, "label": label, "score": float(scores[query]), "query": query})
        segmentation[won] = len(segments)
    return PanopticVideo(segmentation, segments)


class OnlineTracks:
    """Per-frame track maps while streaming, with class scores averaged over the frames seen so far.

    ``update(class_logits (Q, C+1), mask_logits (Q, h, w)) -> (track_map (H, W) int64, tracks)``: each pixel
    holds the query id of the confident track (running score above ``threshold``) with the largest
    ``score * sigmoid(mask)`` where that mask is above 0.5, else -1; ``tracks`` maps query id to
    ``(label, score)``. Memory stays constant: one running sum of logits.
    """

    def __init__(self, threshold: float = 0.5, output_size: tuple[int, int] | None = None):
        self.threshold = threshold
        self.output_size = output_size
        self.logit_sum: torch.Tensor | None = None
        self.frames = 0

    def update(self, class_logits: torch.Tensor, mask_logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
        _check_video_logits(class_logits[None], mask_logits[None])
        logits = class_logits.float()
        self.logit_sum = logits if self.logit_sum is None else self.logit_sum + logits
        self.frames += 1
        probs = (self.logit_sum / self.frames).softmax(-1)
        scores, labels = probs[:, :-1].max(-1)
        confident = (scores > self.threshold).nonzero()[:, 0]
        masks = resize_masks(mask_logits.float(), self.output_size).sigmoid()
        track_map = torch.full(masks.shape[-2:], -1, dtype=torch.long, device=masks.device)
        if confident.numel():
            weighted = scores[confident, None, None] * masks[confident]
            best = weighted.argmax(0)
            on = masks[confident].gather(0, best[None])[0] > 0.5
            track_map[on] = confident[best[on]]
        tracks = {int(q): (int(labels[q]), float(scores[q])) for q in confident.tolist()}
        return track_map, tracks


def ytvis_results(tracks: list[Track], video_id: int, category_ids: list[int] | None = None) -> list[dict]:
    """YouTube-VIS results entries: ``{"video_id", "category_id", "score", "segmentations"}``.

    ``segmentations`` holds one compressed RLE per frame. ``category_ids[label]`` is the dataset's id of a
    class index (default ``label + 1``: YouTube-VIS ids are 1-based and contiguous).
    """
    results = []
    for track in tracks:
        if category_ids is not None and not 0 <= track.label < len(category_ids):
            raise ValueError(f"track label {track.label} has no entry in category_ids (length {len(category_ids)})")
        masks = track.masks.cpu().numpy()
        results.append(
            {
                "video_id": int(video_id),
                "category_id": track.label + 1 if category_ids is None else int(category_ids[track.label]),
                "score": track.score,
                "segmentations": [rle.encode(np.asarray(m)) for m in masks],
            }
        )
    return results
