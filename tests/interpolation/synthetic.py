"""Synthetic triplets with known motion, and writers for the official folder layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def moving_square_clip(frames: int, size: int, seed: int, step: int = 2) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8: a smooth random background and a bright square moving by
    ``step`` pixels per frame along a random direction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    background = np.stack(
        [
            0.5 + 0.25 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * xx + rng.uniform(0.5, 1.5) * yy + rng.uniform()))
            for _ in range(3)
        ],
        axis=-1,
    )
    side = max(3, size // 4)
    direction = rng.choice([-1, 1], size=2)
    start = rng.integers(side, size - 2 * side, size=2)
    colour = rng.uniform(0.8, 1.0, size=3)
    clip = []
    for f in range(frames):
        img = background.copy()
        y, x = start + direction * step * (f - frames // 2)
        img[max(0, y) : max(0, y + side), max(0, x) : max(0, x + side)] = colour
        clip.append(np.round(img * 255).astype(np.uint8))
    return np.stack(clip)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_vimeo(root: Path, count: int, size: int, seed: int = 0, test_count: int = 0) -> Path:
    """A Vimeo-90K ``vimeo_triplet`` folder with ``count`` training and ``test_count`` test triplets."""
    names = {"train": [], "test": []}
    for i in range(count + test_count):
        split = "train" if i < count else "test"
        name = f"{i // 4 + 1:05d}/{i % 4 + 1:04d}"
        names[split].append(name)
        for k, frame in enumerate(moving_square_clip(3, size, seed + i)):
            write_png(root / "sequences" / name / f"im{k + 1}.png", frame)
    (root / "tri_trainlist.txt").write_text("\n".join(names["train"]) + "\n")
    (root / "tri_testlist.txt").write_text("\n".join(names["test"]) + "\n")
    return root
