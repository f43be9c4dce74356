"""Clip-consistent transforms on float clips ``(frames, 3, height, width)`` in ``[0, 1]``.

A random transform draws its parameters once per call and applies them to every frame, so a clip
stays a coherent video (one crop window, one flip, one colour change). Every transform is called as
``transform(clip, generator)``; passing a seeded :class:`torch.Generator` makes the draw
reproducible (:class:`~videostate.data.clips.ClipDataset` seeds one per sample and epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_clip(clip: torch.Tensor) -> None:
    if not isinstance(clip, torch.Tensor) or clip.dim() != 4 or clip.shape[1] != 3:
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ValueError(f"clip must be a tensor of shape (frames, 3, height, width); got {shape}")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of every frame to ``size=(height, width)``, antialiased when shrinking."""
    _check_clip(clip)
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    shrinking = size[0] < clip.shape[-2] or size[1] < clip.shape[-1]
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def size_to_multiple(height: int, width: int, multiple: int, short_side: int | None = None) -> tuple[int, int]:
    """The ``(height, width)`` nearest the input's aspect ratio with both sides multiples of ``multiple``.

    With ``short_side`` the image is first scaled so its shorter side is ``short_side`` (Depth
    Anything's ``keep_aspect_ratio``); each side is then rounded to the nearest multiple (at least one
    multiple).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be a positive int; got {multiple}")
    scale = 1.0 if short_side is None else short_side / min(height, width)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def pad_to_multiple(
    clip: torch.Tensor, multiple: int, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``(..., height, width)`` symmetrically so both sides are multiples of ``multiple``.

    Returns the padded tensor and ``(left, right, top, bottom)`` for :func:`unpad`. Odd amounts put
    the extra pixel right/bottom (the VFI benchmarks' centred ``InputPadder``).
    """
    height, width = clip.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    if not any(pads):
        return clip, pads
    if clip.dim() < 3:
        raise ValueError(f"pad_to_multiple needs (..., channels, height, width); got {tuple(clip.shape)}")
    padded = F.pad(clip.reshape(-1, *clip.shape[-3:]), pads, mode=mode)
    return padded.reshape(*clip.shape[:-2], *padded.shape[-2:]), pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on ``(..., height, width)``."""
    left, right, top, bottom = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            clip = t(clip, generator)
        return clip

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Resize to ``size=(height, width)``, or the shorter side to ``size`` (an int) keeping aspect."""

    def __init__(self, size: int | Sequence[int]):
        self.size = size

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        if isinstance(self.size, int):
            h, w = clip.shape[-2:]
            scale = self.size / min(h, w)
            return resize(clip, (max(1, round(h * scale)), max(1, round(w * scale))))
        return resize(clip, _pair(self.size))


class ResizeToMultiple:
    """Resize so both sides are multiples of ``multiple`` (14 for DINOv2 patches, 16/32 elsewhere).

    See :func:`size_to_multiple` for the rule; ``short_side`` optionally sets the scale first.
    """

    def __init__(self, multiple: int, short_side: int | None = None):
        if multiple < 1:
            raise ValueError(f"multiple must be a positive int; got {multiple}")
        self.multiple, self.short_side = multiple, short_side

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        return resize(clip, size_to_multiple(*clip.shape[-2:], self.multiple, self.short_side))


class RandomCrop:
    """One random ``size=(height, width)`` window, the same on every frame."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        (h, w), (ch, cw) = clip.shape[-2:], self.size
        if ch > h or cw > w:
            raise ValueError(f"crop size (height, width)={self.size} exceeds the clip's frames ({h}, {w})")
        top = int(torch.randint(h - ch + 1, (), generator=generator))
        left = int(torch.randint(w - cw + 1, (), generator=generator))
        return clip[..., top : top + ch, left : left + cw]


class CenterCrop:
    """The central ``size=(height, width)`` window of every frame."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        (h, w), (ch, cw) = clip.shape[-2:], self.size
        if ch > h or cw > w:
            raise ValueError(f"crop size (height, width)={self.size} exceeds the clip's frames ({h}, {w})")
        top, left = (h - ch) // 2, (w - cw) // 2
        return clip[..., top : top + ch, left : left + cw]


class RandomHorizontalFlip:
    """Mirror every frame left-right with probability ``p`` (one draw per clip)."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1]; got {p}")
        self.p = p

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        return clip.flip(-1) if torch.rand((), generator=generator).item() < self.p else clip


class ColorJitter:
    """Brightness, contrast and saturation factors drawn once per clip from ``[1 - s, 1 + s]``.

    Applied in that order, as ``x * b``, ``mean + (x - mean) * c`` (mean of each frame's grey image)
    and ``grey + (x - grey) * s`` (ITU-R 601 luma), then clamped to ``[0, 1]``.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {v}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        b = _uniform(1 - self.brightness, 1 + self.brightness, generator)
        c = _uniform(1 - self.contrast, 1 + self.contrast, generator)
        s = _uniform(1 - self.saturation, 1 + self.saturation, generator)
        clip = clip * b
        weights = clip.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        grey = (clip * weights).sum(1, keepdim=True)
        clip = grey.mean((-2, -1), keepdim=True) + (clip - grey.mean((-2, -1), keepdim=True)) * c
        grey = (clip * weights).sum(1, keepdim=True)
        clip = grey + (clip - grey) * s
        return clip.clamp(0.0, 1.0)


class Normalize:
    """``(x - mean) / std`` per channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not all(map(math.isfinite, std)):
            raise ValueError(f"mean and std must have 3 entries with std > 0; got mean={mean}, std={std}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, clip, generator=None):
        _check_clip(clip)
        mean = clip.new_tensor(self.mean).view(1, 3, 1, 1)
        std = clip.new_tensor(self.std).view(1, 3, 1, 1)
        return (clip - mean) / std
