"""Training data for frame interpolation: Vimeo-90K triplets, X4K1000FPS clips, and a mixture.

Every sample is a dict of float tensors in [0, 1]: ``img0``, ``gt``, ``img1`` ``(3, H, W)`` and
``timestep`` ``()`` (the time of ``gt`` between ``img0`` at 0 and ``img1`` at 1).

Layouts:

- Vimeo-90K triplet: ``<root>/tri_trainlist.txt`` / ``tri_testlist.txt`` list ``<a>/<b>`` names;
  frames are ``<root>/sequences/<a>/<b>/im1.png, im2.png, im3.png`` (``im2`` is the middle, t = 0.5).
- X4K1000FPS: ``<root>/<scene>/<clip>/<frame>.png`` (any depth of folders; each folder holding at
  least 3 images is one clip, frames ordered by the numbers in their names). A sample picks two
  frames ``span`` apart (``2 <= span <= max_span``) and a frame between them, so ``t = k / span``.

Augmentation (training): one random crop shared by the three frames, horizontal and vertical flips,
and temporal reversal (``img0 <-> img1``, ``t -> 1 - t``). With ``curriculum`` the X4K span grows
linearly from 2 to ``max_span`` over ``curriculum_epochs`` epochs (small motions first).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.video import IMAGE_SUFFIXES, natural_key

VIMEO_LISTS = {"train": "tri_trainlist.txt", "test": "tri_testlist.txt"}


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> float32 ``(3, H, W)`` RGB in [0, 1]."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class TripletAugment:
    """Random crop ``crop_size`` (square), flips and temporal reversal, drawn from ``generator``."""

    def __init__(self, crop_size: int | None, flips: bool = True, reverse: bool = True):
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be positive or None; got {crop_size}")
        self.crop_size, self.flips, self.reverse = crop_size, flips, reverse

    def __call__(self, frames: torch.Tensor, timestep: float, generator: torch.Generator):
        """``frames (3, 3, H, W)`` ordered img0, gt, img1 -> augmented frames and timestep."""
        h, w = frames.shape[-2:]
        if self.crop_size is not None:
            c = self.crop_size
            if c > h or c > w:
                raise ValueError(f"crop_size={c} is larger than the frames ({h}x{w})")
            top = int(torch.randint(0, h - c + 1, (), generator=generator))
            left = int(torch.randint(0, w - c + 1, (), generator=generator))
            frames = frames[..., top : top + c, left : left + c]
        draws = torch.rand(3, generator=generator)
        if self.flips and draws[0] < 0.5:
            frames = frames.flip(-1)
        if self.flips and draws[1] < 0.5:
            frames = frames.flip(-2)
        if self.reverse and draws[2] < 0.5:
            frames, timestep = frames.flip(0), 1.0 - timestep
        return frames.contiguous(), timestep


def sample(frames: torch.Tensor, timestep: float) -> dict:
    return {"img0": frames[0], "gt": frames[1], "img1": frames[2], "timestep": torch.tensor(timestep)}


class EpochSeeded(Dataset):
    """Base: per-sample generators seeded by ``(seed, epoch, index)``; the trainer calls ``set_epoch``."""

    def __init__(self, seed: int = 0):
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)


class VimeoTriplet(EpochSeeded):
    """Vimeo-90K triplets of ``split`` (``"train"`` or ``"test"``); ``augment`` is applied when given."""

    def __init__(self, root: str | os.PathLike, split: str = "train", augment: TripletAugment | None = None, seed=0):
        super().__init__(seed)
        if split not in VIMEO_LISTS:
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        self.root = Path(root)
        listing = self.root / VIMEO_LISTS[split]
        if not listing.is_file():
            raise FileNotFoundError(f"Vimeo-90K list not found: {listing} (expected the vimeo_triplet folder)")
        self.names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not self.names:
            raise ValueError(f"{listing} lists no triplets")
        self.augment = augment

    def __len__(self) -> int:
        return len(self.names)

    def frames(self, index: int) -> torch.Tensor:
        folder = self.root / "sequences" / self.names[index]
        return torch.stack([read_rgb(folder / f"im{i}.png") for i in (1, 2, 3)])

    def __getitem__(self, index: int) -> dict:
        frames, timestep = self.frames(index), 0.5
        if self.augment is not None:
            frames, timestep = self.augment(frames, timestep, self.generator(index))
        return sample(frames, timestep)


def find_clips(root: Path) -> list[list[Path]]:
    """Every folder under ``root`` (recursively, itself included) holding >= 3 images, frames sorted."""
    clips = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())], key=lambda p: natural_key(str(p))):
        frames = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: natural_key(p.name),
        )
        if len(frames) >= 3:
            clips.append(frames)
    return clips


class X4KFrames(EpochSeeded):
    """Random-timestep triplets from X4K1000FPS-style frame folders (see the module docstring).

    Args:
        root: folder of clips. max_span: largest frame distance between ``img0`` and ``img1`` (32 in
        XVFI's training). augment: crop/flip/reverse. curriculum_epochs: if set, the span limit grows
        from 2 to ``max_span`` over this many epochs. samples_per_clip: samples one epoch draws per clip.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        max_span: int = 32,
        augment: TripletAugment | None = None,
        curriculum_epochs: int | None = None,
        samples_per_clip: int = 1,
        seed: int = 0,
    ):
        super().__init__(seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"X4K1000FPS folder not found: {self.root}")
        self.clips = find_clips(self.root)
        if not self.clips:
            raise ValueError(f"no clip (a folder with at least 3 images) under {self.root}")
        if max_span < 2:
            raise ValueError(f"max_span must be >= 2; got {max_span}")
        if curriculum_epochs is not None and curriculum_epochs < 1:
            raise ValueError(f"curriculum_epochs must be >= 1 or None; got {curriculum_epochs}")
        self.max_span, self.augment = max_span, augment
        self.curriculum_epochs, self.samples_per_clip = curriculum_epochs, samples_per_clip

    def __len__(self) -> int:
        return len(self.clips) * self.samples_per_clip

    def span_limit(self) -> int:
        """The largest span allowed this epoch (curriculum), before capping by the clip length."""
        if self.curriculum_epochs is None:
            return self.max_span
        progress = min(1.0, self.epoch / self.curriculum_epochs)
        return max(2, round(2 + progress * (self.max_span - 2)))

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index // self.samples_per_clip]
        g = self.generator(index)
        limit = min(self.span_limit(), len(clip) - 1)
        span = int(torch.randint(2, limit + 1, (), generator=g))
        start = int(torch.randint(0, len(clip) - span, (), generator=g))
        k = int(torch.randint(1, span, (), generator=g))
        frames = torch.stack([read_rgb(clip[start]), read_rgb(clip[start + k]), read_rgb(clip[start + span])])
        timestep = k / span
        if self.augment is not None:
            frames, timestep = self.augment(frames, timestep, g)
        return sample(frames, timestep)


def parse_ratio(ratio: str) -> tuple[int, int]:
    """``"2:1"`` -> ``(2, 1)``."""
    try:
        a, b = (int(x) for x in ratio.split(":"))
    except (ValueError, AttributeError):
        raise ValueError(f"mixed_ratio must look like '2:1' (two positive integers); got {ratio!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"mixed_ratio parts must be positive; got {ratio!r}")
    return a, b


class MixedDataset(Dataset):
    """Interleave two datasets in the ratio ``a:b`` (``--mixed_ratio``): in every run of ``a + b``
    indices, the first ``a`` come from ``first`` and the next ``b`` from ``second`` (cycling through
    each). The length covers ``first`` once."""

    def __init__(self, first: Dataset, second: Dataset, ratio: str = "2:1"):
        self.first, self.second = first, second
        self.a, self.b = parse_ratio(ratio)

    def __len__(self) -> int:
        return -(-len(self.first) * (self.a + self.b) // self.a)

    def set_epoch(self, epoch: int) -> None:
        for ds in (self.first, self.second):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.first.epoch

    def source(self, index: int) -> tuple[int, int]:
        """``(0 or 1, index within that dataset)`` of mixed ``index``."""
        cycle, pos = divmod(index, self.a + self.b)
        if pos < self.a:
            return 0, (cycle * self.a + pos) % len(self.first)
        return 1, (cycle * self.b + pos - self.a) % len(self.second)

    def __getitem__(self, index: int) -> dict:
        which, inner = self.source(index)
        return (self.first, self.second)[which][inner]
