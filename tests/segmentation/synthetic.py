"""A tiny YouTube-VIS-format dataset written to disk: moving coloured rectangles, RLE masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from videostate.segmentation import rle

SIZE = 32


def write_ytvis(root: Path, num_videos: int = 2, frames: int = 4, seed: int = 0) -> Path:
    """Each video: a red rectangle (category 1) moving right, a green one (category 2) moving down.
    Returns the annotation file; frames are ``root/<video>/<t>.png``."""
    rng = np.random.default_rng(seed)
    videos, annotations = [], []
    for v in range(num_videos):
        names = []
        boxes = {1: [], 2: []}
        x0, y0 = rng.integers(0, 8, size=2)
        for t in range(frames):
            image = (rng.random((SIZE, SIZE, 3)) * 40).astype(np.uint8)
            red = (4 + y0 // 2, 14 + y0 // 2, x0 + 2 * t, x0 + 2 * t + 10)
            green = (16 + t, 28 + t, 18, 30)
            for box, colour, category in ((red, (220, 30, 30), 1), (green, (30, 220, 30), 2)):
                image[box[0] : box[1], box[2] : box[3]] = colour
                mask = np.zeros((SIZE, SIZE), dtype=bool)
                mask[box[0] : box[1], box[2] : box[3]] = True
                boxes[category].append(rle.encode(mask))
            name = f"video{v}/{t:05d}.png"
            (root / f"video{v}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            names.append(name)
        videos.append({"id": v + 1, "file_names": names, "height": SIZE, "width": SIZE, "length": frames})
        for category, segs in boxes.items():
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": v + 1,
                    "category_id": category,
                    "iscrowd": 0,
                    "segmentations": segs,
                    "areas": [rle.area(s) for s in segs],
                }
            )
    ann_file = root / "train.json"
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    ann_file.write_text(json.dumps({"videos": videos, "annotations": annotations, "categories": categories}))
    return ann_file
