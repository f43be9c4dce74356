"""Training clips for depth distillation: RGB clips from videos or frame folders, optional ground-truth depth
(RGB-D sequences), cached teacher depth, and static-pixel masks.

Frame folders are read with OpenCV alone (:class:`FrameSource`); video files go through the shared
:class:`~videostate.data.video.VideoReader` (PyAV), imported only when a file is opened, so training and
evaluation on frame folders run on machines without PyAV. Clip frames are drawn as the shared
:class:`~videostate.data.clips.ClipSampler` does in ``"random"`` mode (tests hold the two equal).

The teacher cache holds one float16 ``.npy`` per video, ``(frames, H, W)`` at the video's resolution, named by
the video's id (:func:`video_ids`, as :func:`videostate.data.clips.video_ids`); :func:`precompute_teacher_depth`
writes it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from .flow import PRESETS, clip_static_masks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
        if min(self.clip_length, self.chunk_size, self.clips_per_video) < 1:
            raise ValueError(
                f"clip_length, chunk_size and clips_per_video must be >= 1; got {self.clip_length}, "
                f"{self.chunk_size}, {self.clips_per_video}"
            )
        if not 0.0 <= self.p_single_frame <= 1.0:
            raise ValueError(f"p_single_frame must be in [0, 1]; got {self.p_single_frame}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width); got {self.crop_size}")
        if self.flow_preset not in PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(PRESETS)}; got {self.flow_preset!r}")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: ``frame2`` before ``frame10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame or depth folder in natural order (``2.png`` before ``10.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )


def video_ids(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the paths' common folder, without suffix (the stem when that is empty)."""
    root = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    relative = [p.resolve().relative_to(root) for p in paths]
    return [str(r.with_suffix("")) if r.name else p.stem for p, r in zip(paths, relative, strict=True)]


def random_clip_indices(length: int, clip_length: int, stride: int, generator: torch.Generator) -> list[int]:
    """``clip_length`` frames ``stride`` apart from a start drawn uniformly among those that fit; a video shorter
    than the clip's span starts at 0 and repeats its last frame."""
    span = (clip_length - 1) * stride + 1
    start = int(torch.randint(max(1, length - span + 1), (), generator=generator))
    return [min(start + i * stride, length - 1) for i in range(clip_length)]


class FrameSource:
    """The frames of a video file or of a folder of numbered images, as float ``(3, height, width)`` in [0, 1].

    A folder is read with OpenCV (its images must share one size); a file is decoded by the shared
    :class:`~videostate.data.video.VideoReader`, which needs PyAV.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"video file or frame folder not found: {self.path}")
        self.reader = None
        if self.path.is_dir():
            self.files = frame_files(self.path)
            if not self.files:
                raise ValueError(f"frame folder {self.path} has no images ending in {', '.join(IMAGE_SUFFIXES)}")
            self.height, self.width = self._read_image(0).shape[:2]
        else:
            from videostate.data.video import VideoReader

            self.reader = VideoReader(self.path, format="tensor")
            self.height, self.width = self.reader.height, self.reader.width

    def __len__(self) -> int:
        return len(self.files) if self.reader is None else len(self.reader)

    def _read_image(self, index: int) -> np.ndarray:
        file = self.files[index]
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {file} (frame {index} of {self.path})")
        if index and image.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"image {file} is {image.shape[1]}x{image.shape[0]}; the folder's frames are {self.width}x{self.height}"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _frame(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {self.path} with {len(self)} frames")
        image = self._read_image(index)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)

    def read_clip(self, indices) -> torch.Tensor:
        """Frames ``indices`` (any order, repeats allowed) as ``(N, 3, height, width)``."""
        if self.reader is not None:
            return self.reader.read_clip(indices)
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"read_clip needs at least one frame index for {self.path}")
        frames = {i: self._frame(i) for i in sorted(set(indices))}
        return torch.stack([frames[i] for i in indices])

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.reader is not None:
            yield from self.reader
            return
        for i in range(len(self)):
            yield self._frame(i)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        self.paths = [Path(s) for s in config.sources]
        self.ids = video_ids(self.paths)
        self.lengths = []
        for path in self.paths:
            with FrameSource(path) as source:
                self.lengths.append(len(source))
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

    def _generator(self, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

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
        generator = self._generator(item)
        index = item // cfg.clips_per_video
        frames = random_clip_indices(self.lengths[index], cfg.clip_length, cfg.stride, generator)
        with FrameSource(self.paths[index]) as source:
            clip = source.read_clip(frames)
        height, width = clip.shape[-2:]
        crop_h, crop_w = cfg.crop_size
        scale = max(crop_h / height, crop_w / width)
        size = (max(crop_h, round(height * scale)), max(crop_w, round(width * scale)))
        top = int(torch.randint(size[0] - crop_h + 1, (), generator=generator))
        left = int(torch.randint(size[1] - crop_w + 1, (), generator=generator))

        def crop(x: torch.Tensor) -> torch.Tensor:
            return x[..., top : top + crop_h, left : left + crop_w]

        if size != (height, width):  # bilinear, antialiased when shrinking (the shared transforms.resize)
            shrinking = size[0] < height or size[1] < width
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
        sample = {"clip": crop(clip).contiguous()}
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
        with FrameSource(path) as reader:
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
