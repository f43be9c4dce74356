"""Clips of N frames from videos or frame folders: sampling rules, a dataset and its collate.

A clip of ``num_frames`` frames taken every ``stride`` frames spans ``(num_frames - 1) * stride + 1``
frames of its video. :class:`ClipSampler` chooses which frames:

- ``"random"``: one clip per video per epoch, its start drawn uniformly (training).
- ``"uniform"``: one clip per video, ``num_frames`` frames spread evenly over the whole video, frame
  ``floor((i + 0.5) * length / num_frames)`` for ``i < num_frames`` (the usual test-time rule of
  video classifiers; ``stride`` must be 1).
- ``"sliding"``: every window starting at ``0, step, 2 * step, ...`` that fits, plus one window
  ending on the last frame when the tail is not covered, so every frame is seen (evaluation,
  streaming). ``num_frames=1, step=1`` visits every frame once: single-image mode.

Videos shorter than a clip's span follow ``short``: ``"pad"`` (default) takes the frames that exist
from the start and repeats the last one (in ``"uniform"`` mode the evenly spread indices repeat
frames instead), and ``meta["padded"]`` is True; ``"skip"`` leaves the video out.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .video import VideoReader

ClipMode = Literal["random", "uniform", "sliding"]


@dataclasses.dataclass(frozen=True)
class ClipSampler:
    """Which frames make a clip; see the module docstring for the modes.

    Args:
        num_frames: frames per clip (``1`` for single images).
        stride: distance between consecutive frames of a clip.
        mode: ``"random"``, ``"uniform"`` or ``"sliding"``.
        step: distance between sliding windows' starts (``"sliding"`` only; default: the span, so
            windows do not overlap).
        short: ``"pad"`` or ``"skip"`` for videos shorter than the span.
    """

    num_frames: int
    stride: int = 1
    mode: ClipMode = "random"
    step: int | None = None
    short: Literal["pad", "skip"] = "pad"

    def __post_init__(self):
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(
                f"num_frames and stride must be >= 1; got num_frames={self.num_frames}, stride={self.stride}"
            )
        if self.mode not in ("random", "uniform", "sliding"):
            raise ValueError(f"mode must be 'random', 'uniform' or 'sliding'; got {self.mode!r}")
        if self.short not in ("pad", "skip"):
            raise ValueError(f"short must be 'pad' or 'skip'; got {self.short!r}")
        if self.mode == "uniform" and self.stride != 1:
            raise ValueError(f"mode 'uniform' spreads frames over the whole video; stride must be 1, got {self.stride}")
        if self.step is not None and (self.mode != "sliding" or self.step < 1):
            raise ValueError(
                f"step is a positive window step for mode 'sliding'; got step={self.step}, mode={self.mode!r}"
            )

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1

    def windows(self, length: int) -> list[int | None]:
        """Clips of a video of ``length`` frames: window starts (``None`` = drawn per epoch/uniform).

        An empty list means the video is skipped.
        """
        if length < 1:
            raise ValueError(f"a video must have at least one frame; got length {length}")
        if length < self.span and self.mode != "uniform":
            return [] if self.short == "skip" else [0]
        if self.mode == "uniform":
            return [] if (length < self.num_frames and self.short == "skip") else [None]
        if self.mode == "random":
            return [None]
        step = self.step or self.span
        last = length - self.span
        starts = list(range(0, last + 1, step))
        if starts[-1] != last:
            starts.append(last)
        return starts

    def indices(self, length: int, start: int | None, generator: torch.Generator | None = None) -> list[int]:
        """Frame indices of one clip; a ``None`` start is drawn (random) or implied (uniform)."""
        if self.mode == "uniform":
            return [min(length - 1, math.floor((i + 0.5) * length / self.num_frames)) for i in range(self.num_frames)]
        if start is None:
            start = int(torch.randint(max(1, length - self.span + 1), (), generator=generator))
        return [min(start + i * self.stride, length - 1) for i in range(self.num_frames)]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)``: the draws of one sample in one epoch, the same in any
    worker and after resuming."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def video_ids(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the paths' common folder, without suffix (the stem when that is empty)."""
    root = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    relative = [p.resolve().relative_to(root) for p in paths]
    return [str(r.with_suffix("")) if r.name else p.stem for p, r in zip(paths, relative, strict=True)]


class ClipDataset(torch.utils.data.Dataset):
    """``(clip (num_frames, 3, H, W), meta)`` from video files or frame folders.

    Args:
        sources: video files and/or folders of numbered images.
        sampler: the :class:`ClipSampler` rule.
        transform: a clip-consistent transform called as ``transform(clip, generator)``.
        seed: base seed of the per-sample generator (random starts and transforms are reproducible
            for a given ``seed``, epoch and index, in any worker and after resuming).
        max_open: video readers kept open per worker (least recently used are closed).

    ``meta`` holds ``video_id`` (see :func:`video_ids`), ``path``, ``frame_indices`` (list of ints)
    and ``padded`` (the video was shorter than the clip). Call :meth:`set_epoch` each epoch so random
    clips change.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        sampler: ClipSampler,
        transform: Callable | None = None,
        *,
        seed: int = 0,
        max_open: int = 8,
    ):
        if not sources:
            raise ValueError("ClipDataset needs at least one video file or frame folder; got none")
        self.paths = [Path(s) for s in sources]
        self.ids = video_ids(self.paths)
        self.sampler, self.transform, self.seed, self.max_open = sampler, transform, seed, max_open
        self.epoch = 0
        self.lengths = []
        for path in self.paths:
            with VideoReader(path) as reader:
                self.lengths.append(len(reader))
        self.items = [(v, start) for v, length in enumerate(self.lengths) for start in sampler.windows(length)]
        if not self.items:
            raise ValueError(
                f"no clips: every video is shorter than the clip span {sampler.span} and short='skip' "
                f"(lengths {dict(zip(self.ids, self.lengths, strict=True))})"
            )
        self._readers: OrderedDict[Path, VideoReader] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def generator(self, index: int) -> torch.Generator:
        """The seeded generator of sample ``index`` in the current epoch (:func:`sample_generator`)."""
        return sample_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        video, start = self.items[index]
        length = self.lengths[video]
        generator = self.generator(index)
        frames = self.sampler.indices(length, start, generator)
        clip = self._reader(self.paths[video]).read_clip(frames)
        if self.transform is not None:
            clip = self.transform(clip, generator)
        meta = {
            "video_id": self.ids[video],
            "path": str(self.paths[video]),
            "frame_indices": frames,
            "padded": length < self.sampler.span,
        }
        return clip, meta

    def _reader(self, path: Path) -> VideoReader:
        reader = self._readers.pop(path, None) or VideoReader(path)
        self._readers[path] = reader
        while len(self._readers) > self.max_open:
            self._readers.popitem(last=False)[1].close()
        return reader

    def __getstate__(self):  # open readers stay in their process; workers open their own
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        return state


def collate_clips(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """``[(clip (N, 3, H, W), meta), ...]`` -> ``(clips (B, N, 3, H, W), meta)``.

    ``meta`` maps each key to the list of the samples' values, except ``frame_indices`` which becomes
    a long tensor ``(B, N)``. Clips must share one shape (crop or resize them in the transform).
    """
    if not batch:
        raise ValueError("collate_clips got an empty batch")
    shapes = {tuple(clip.shape) for clip, _ in batch}
    if len(shapes) != 1:
        raise ValueError(
            f"clips in a batch must share one shape (frames, 3, height, width); got {sorted(shapes)} "
            "(add a crop or resize transform)"
        )
    clips = torch.stack([clip for clip, _ in batch])
    meta = {key: [m[key] for _, m in batch] for key in batch[0][1]}
    if "frame_indices" in meta:
        meta["frame_indices"] = torch.tensor(meta["frame_indices"], dtype=torch.long)
    return clips, meta
