"""COCO run-length encoding of binary masks, as used by YouTube-VIS files (no pycocotools needed).

A mask ``(H, W)`` is read column by column (Fortran order); ``counts`` alternate runs of 0s and 1s, starting
with 0s. The compressed form writes each count (from the fourth on, as the difference to the count two
before) in 5-bit groups with a continuation bit, offset by 48, as pycocotools does. Polygons are
rasterised with OpenCV (boundary pixels may differ from pycocotools' rasteriser).
"""

from __future__ import annotations

import numpy as np


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask in column-major order, starting with a (possibly empty) run of 0s."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(edges).tolist()
    return [0, *counts] if flat[0] else counts


def counts_to_string(counts: list[int]) -> str:
    """pycocotools' compressed string of a counts list."""
    chars = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def string_to_counts(text: str) -> list[int]:
    """Inverse of :func:`counts_to_string`."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError(f"truncated RLE string {text!r}")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict:
    """``{"size": [H, W], "counts": str}`` (compressed RLE) of a 2-D mask."""
    mask = np.asarray(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(mask_to_counts(mask))}


def decode(segmentation, height: int | None = None, width: int | None = None) -> np.ndarray:
    """A bool ``(H, W)`` mask from compressed or uncompressed RLE, or from polygons (needs ``height``, ``width``)."""
    if isinstance(segmentation, dict):
        h, w = segmentation["size"]
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if isinstance(counts, str):
            counts = string_to_counts(counts)
        if sum(counts) != h * w or any(c < 0 for c in counts):
            raise ValueError(
                f"RLE counts sum to {sum(counts)} (with negatives: {min(counts, default=0) < 0}); size {h}x{w}"
            )
        values = np.zeros(len(counts), dtype=bool)
        values[1::2] = True
        return np.repeat(values, counts).reshape((h, w), order="F")
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise ValueError("decoding polygons needs height and width")
        import cv2

        canvas = np.zeros((height, width), dtype=np.uint8)
        for polygon in segmentation:
            points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
        return canvas.astype(bool)
    raise TypeError(f"segmentation must be an RLE dict or a list of polygons; got {type(segmentation).__name__}")


def area(segmentation) -> int:
    """Foreground pixels of an RLE (without decoding)."""
    counts = segmentation["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    return int(sum(counts[1::2]))
