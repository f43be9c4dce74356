"""YouTube-VIS-format training data: JSON annotations + frame folders, clips with consistent augmentation.

The annotation file has ``videos`` (``id``, ``file_names`` relative to ``root``, ``height``, ``width``),
``annotations`` (``video_id``, ``category_id``, ``segmentations``: one RLE / polygon list / ``None`` per frame,
``iscrowd``) and ``categories``. Category ids map to contiguous labels in sorted order.

A sample is one clip: frames chosen by a :class:`~videostate.data.clips.ClipSampler`, the same horizontal
flip for every frame and mask, resized to ``image_size`` square and ImageNet-normalised. Instances absent from
every frame of the clip are dropped (nothing to match them to).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.clips import ClipSampler
from . import rle
from .inference import preprocess_frames


@dataclasses.dataclass
class YTVISDataConfig:
    """Data section of a VidEoMT recipe.

    Attributes:
        root: folder the ``file_names`` are relative to.
        ann_file: YouTube-VIS JSON annotation file.
        num_frames: frames per training clip (official: 5).
        stride: distance between a clip's frames.
        image_size: square input size (must equal the model's ``image_size``).
        hflip: probability of flipping a whole clip horizontally.
    """

    root: str = "data/ytvis_2019/train/JPEGImages"
    ann_file: str = "data/ytvis_2019/train.json"
    num_frames: int = 5
    stride: int = 1
    image_size: int = 640
    hflip: float = 0.5


class YTVISClips(torch.utils.data.Dataset):
    """One random clip per video per item: ``(pixel_values (T, 3, S, S), {"mask_labels" (N, T, S, S) float,
    "class_labels" (N,) int64})``."""

    def __init__(self, config: YTVISDataConfig, generator: torch.Generator | None = None):
        self.config = config
        self.root = Path(config.root)
        data = json.loads(Path(config.ann_file).read_text())
        missing = {"videos", "annotations", "categories"} - set(data)
        if missing:
            raise ValueError(f"{config.ann_file} is not YouTube-VIS JSON: missing {sorted(missing)}")
        self.category_ids = sorted(c["id"] for c in data["categories"])
        self.label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.videos = data["videos"]
        self.annotations: dict[int, list[dict]] = {v["id"]: [] for v in self.videos}
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            if ann["video_id"] not in self.annotations:
                raise ValueError(f"annotation {ann.get('id')} refers to unknown video {ann['video_id']}")
            self.annotations[ann["video_id"]].append(ann)
        self.sampler = ClipSampler(config.num_frames, stride=config.stride, mode="random")
        self.generator = generator

    def __len__(self) -> int:
        return len(self.videos)

    def _frame(self, name: str) -> torch.Tensor:
        image = cv2.imread(str(self.root / name), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read frame {self.root / name}")
        return torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255

    def __getitem__(self, index: int):
        video = self.videos[index]
        frames_idx = self.sampler.indices(len(video["file_names"]), None, self.generator)
        frames = torch.stack([self._frame(video["file_names"][i]) for i in frames_idx])  # (T, 3, H, W)
        height, width = frames.shape[-2:]
        masks, labels = [], []
        for ann in self.annotations[video["id"]]:
            per_frame = []
            for i in frames_idx:
                seg = ann["segmentations"][i]
                per_frame.append(rle.decode(seg, height, width) if seg else np.zeros((height, width), dtype=bool))
            stacked = np.stack(per_frame)
            if stacked.any():
                masks.append(torch.from_numpy(stacked))
                labels.append(self.label_of[ann["category_id"]])
        mask_labels = torch.stack(masks).float() if masks else torch.zeros(0, len(frames_idx), height, width)
        if float(torch.rand((), generator=self.generator)) < self.config.hflip:
            frames, mask_labels = frames.flip(-1), mask_labels.flip(-1)
        size = self.config.image_size
        pixel_values = preprocess_frames(frames, size)
        if len(masks):
            mask_labels = F.interpolate(mask_labels, size=(size, size), mode="nearest")
        else:
            mask_labels = torch.zeros(0, len(frames_idx), size, size)
        return pixel_values, {"mask_labels": mask_labels, "class_labels": torch.tensor(labels, dtype=torch.long)}


def collate_clips(batch):
    """Stack the clips ``(B, T, 3, S, S)``; labels stay per-clip lists (instance counts differ)."""
    pixel_values = torch.stack([pixels for pixels, _ in batch])
    return pixel_values, {
        "mask_labels": [t["mask_labels"] for _, t in batch],
        "class_labels": [t["class_labels"] for _, t in batch],
    }
