"""Training clips for depth distillation: RGB clips from videos or frame folders, optional ground-truth depth
(RGB-D sequences), cached teacher depth, and static-pixel masks.

Frames are read by the shared :class:`~videostate.data.video.VideoReader` (frame folders need no PyAV), clip
frames are drawn by the shared :class:`~videostate.data.clips.ClipSampler` in ``"random"`` mode, and clips are
resized by :func:`videostate.data.transforms.resize`.

The teacher cache holds one float16 ``.npy`` per video, ``(frames, H, W)`` at the video's resolution, named by
the video's id (:func:`videostate.data.clips.video_ids`); :func:`precompute_teacher_depth` writes it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from videostate.data.clips import ClipSampler, sample_generator, video_ids
from videostate.data.transforms import resize
from videostate.data.video import VideoReader, frame_files

from .flow import PRESETS, clip_static_masks


@dataclasses.dataclass
class DepthDataConfig:
    """The ``data`` section of a depth recipe.

    Attributes:
        sources: video files or frame folders.
        depth_sources: ground-truth depth folders (16-bit PNG, one per frame), one per source, for the supervised
            mode; empty to distil from the teacher.
        depth_scale: PNG units per metre (1000: millimetres).
        max_depth: ground truth above this (metres) or zero is invalid.
        clip_length: frames per training clip (the largest N).
        stride: distance between a clip's frames.
        clips_per_video: random clips drawn from each video per epoch.
        chunk_size: frames per truncated-BPTT chunk (the state is carried, detached, between chunks).
        p_single_frame: probability that a batch is cut to its first frame (N=1: fresh state, SE loss only).
        crop_size: ``(height, width)`` of the training crop, multiples of the patch size (14).
        teacher_cache: folder of cached teacher depth; videos without a file there use the teacher on the fly.
        static_masks: compute static-pixel masks (DIS flow) for the state smoothing loss.
        flow_preset: DIS preset (``ultrafast``, ``fast``, ``medium``).
    """

    sources: tuple[str, ...] = ()
    depth_sources: tuple[str, ...] = ()
    depth_scale: float = 1000.0
    max_depth: float = 10.0
    clip_length: int = 8
    stride: int = 1
    clips_per_video: int = 1
    chunk_size: int = 4
    p_single_frame: float = 0.2
    crop_size: tuple[int, int] = (518, 518)
    teacher_cache: str | None = None
    static_masks: bool = True
    flow_preset: str = "fast"

    def __post_init__(self):
        if not self.sources:
            raise ValueError("data.sources must list at least one video file or frame folder")
        if self.depth_sources and len(self.depth_sources) != len(self.sources):
            raise ValueError(
                f"data.depth_sources must give one folder per source ({len(self.sources)}); "
                f"got {len(self.depth_sources)}"
            )
        if min(self.clip_length, self.stride, self.chunk_size, self.clips_per_video) < 1:
            raise ValueError(
                f"clip_length, stride, chunk_size and clips_per_video must be >= 1; got {self.clip_length}, "
                f"{self.stride}, {self.chunk_size}, {self.clips_per_video}"
            )
        if not 0.0 <= self.p_single_frame <= 1.0:
            raise ValueError(f"p_single_frame must be in [0, 1]; got {self.p_single_frame}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width); got {self.crop_size}")
        if self.flow_preset not in PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(PRESETS)}; got {self.flow_preset!r}")


def read_depth_png(path: Path, scale: float) -> np.ndarray:
    """A 16-bit depth PNG as float32 metres ``(H, W)`` (0 stays 0: invalid)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2 or image.dtype != np.uint16:
        got = "unreadable" if image is None else f"{image.dtype} {image.shape}"
        raise ValueError(f"{path} must be a single-channel 16-bit depth PNG; got {got}")
    return image.astype(np.float32) / scale


class DepthVideoDataset(Dataset):
    """``{"clip": (N, 3, h, w), ...}`` samples for depth training (``N = clip_length``, ``(h, w) = crop_size``).

    Keys: ``clip`` RGB in [0, 1]; with ``depth_sources``: ``depth (N, 1, h, w)`` metres and ``valid`` (bool);
    ``teacher (N, 1, h, w)`` cached teacher depth with ``has_teacher`` (False: zeros, compute on the fly);
    ``static (N-1, h, w)`` bool when ``static_masks``; ``meta`` (video id, frame indices). ``clips_per_video``
    random clips per video per epoch (sample ``i`` is from video ``i // clips_per_video``); every frame is
    resized (shorter side covering the crop) and cropped at one random window.
    """

    def __init__(self, config: DepthDataConfig, seed: int = 0):
        self.config, self.seed, self.epoch = config, seed, 0
        self.sampler = ClipSampler(config.clip_length, config.stride, mode="random")
        self.paths = [Path(s) for s in config.sources]
        self.ids = video_ids(self.paths)
        self.lengths = []
        for path in self.paths:
            with VideoReader(path) as reader:
                self.lengths.append(len(reader))
        self.depth_files = [frame_files(d) for d in config.depth_sources]
        for path, files, length in zip(self.paths, self.depth_files, self.lengths, strict=False):
            if len(files) != length:
                raise ValueError(f"{path} has {length} frames but its depth folder has {len(files)} images")
        self.cache_files = [
            Path(config.teacher_cache) / f"{vid}.npy" if config.teacher_cache else None for vid in self.ids
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths) * self.config.clips_per_video

    def _cached_teacher(self, index: int, frames: list[int], size: tuple[int, int]) -> torch.Tensor | None:
        path = self.cache_files[index]
        if path is None or not path.is_file():
            return None
        cache = np.load(path, mmap_mode="r")
        if cache.shape[0] != self.lengths[index] or tuple(cache.shape[1:]) != size:
            raise ValueError(
                f"teacher cache {path} has shape {cache.shape}; expected ({self.lengths[index]}, {size[0]}, {size[1]})"
            )
        return torch.from_numpy(np.ascontiguousarray(cache[frames]).astype(np.float32))[:, None]

    def __getitem__(self, item: int) -> dict:
        cfg = self.config
        if not 0 <= item < len(self):
            raise IndexError(f"sample {item} out of range for {len(self)} samples")
        generator = sample_generator(self.seed, self.epoch, item)
        index = item // cfg.clips_per_video
        frames = self.sampler.indices(self.lengths[index], None, generator)
        with VideoReader(self.paths[index]) as reader:
            clip = reader.read_clip(frames)
        height, width = clip.shape[-2:]
        crop_h, crop_w = cfg.crop_size
        scale = max(crop_h / height, crop_w / width)
        size = (max(crop_h, round(height * scale)), max(crop_w, round(width * scale)))
        top = int(torch.randint(size[0] - crop_h + 1, (), generator=generator))
        left = int(torch.randint(size[1] - crop_w + 1, (), generator=generator))

        def crop(x: torch.Tensor) -> torch.Tensor:
            return x[..., top : top + crop_h, left : left + crop_w]

        sample = {"clip": crop(resize(clip, size)).contiguous()}
        if self.depth_files:
            depth = torch.stack(
                [torch.from_numpy(read_depth_png(self.depth_files[index][i], cfg.depth_scale)) for i in frames]
            )[:, None]
            if tuple(depth.shape[-2:]) != (height, width):
                raise ValueError(
                    f"depth of {self.paths[index]} is {tuple(depth.shape[-2:])}; frames are {(height, width)}"
                )
            depth = crop(F.interpolate(depth, size=size, mode="nearest"))
            sample["depth"] = depth
            sample["valid"] = (depth > 0) & (depth <= cfg.max_depth)
        cached = self._cached_teacher(index, frames, (height, width))
        sample["has_teacher"] = torch.tensor(cached is not None)
        sample["teacher"] = (
            torch.zeros(len(frames), 1, crop_h, crop_w)
            if cached is None
            else crop(F.interpolate(cached, size=size, mode="bilinear", align_corners=False))
        )
        if cfg.static_masks:
            sample["static"] = clip_static_masks(sample["clip"], preset=cfg.flow_preset)
        sample["meta"] = {"video_id": self.ids[index], "frame_indices": frames}
        return sample


def collate_depth(batch: Sequence[dict]) -> dict:
    """Stack every tensor key along a new batch dimension; ``meta`` becomes a list."""
    keys = batch[0].keys()
    if any(b.keys() != keys for b in batch):
        raise ValueError(f"samples disagree on their keys: {[sorted(b) for b in batch]}")
    return {k: [b[k] for b in batch] if k == "meta" else torch.stack([b[k] for b in batch]) for k in keys}


@torch.no_grad()
def precompute_teacher_depth(
    teacher,
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Write each video's teacher depth as float16 ``out_dir/<video_id>.npy`` ``(frames, H, W)``, streaming
    frames in batches (memory flat in the video length; each file appears complete or not at all)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(s) for s in sources]
    written = []
    for path, vid in zip(paths, video_ids(paths), strict=True):
        target = out_dir / f"{vid}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial.npy")
        with VideoReader(path, format="tensor") as reader:
            array = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.float16, shape=(len(reader), reader.height, reader.width)
            )
            bar = tqdm(total=len(reader), desc=f"teacher depth {vid}", disable=not progress, unit="frame")
            done, pending = 0, []
            for frame in reader:
                pending.append(frame)
                if len(pending) == batch_size or done + len(pending) == len(reader):
                    depth = teacher.predict_depth(torch.stack(pending).to(device))[:, 0]
                    array[done : done + len(pending)] = depth.float().cpu().numpy()
                    done += len(pending)
                    bar.update(len(pending))
                    pending = []
            bar.close()
            array.flush()
            del array
        os.replace(partial, target)
        written.append(target)
    return written
