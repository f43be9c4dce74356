"""Evaluation on the standard frame-interpolation test sets, following VFIMamba's ``benchmark/*.py``.

Each function reads the official folder layout, runs an ``interpolate(img0, img1, timestep,
flow_scale) -> frame`` callable (images ``(1, 3, H, W)`` in [0, 1]) and returns metric means:

- :func:`vimeo90k`: ``tri_testlist.txt`` + ``sequences/<a>/<b>/im1..3.png``; PSNR on the float
  prediction (no rounding), SSIM = ``ssim_matlab``.
- :func:`ucf101`: folders with ``frame_00.png, frame_01_gt.png, frame_02.png`` (also accepts
  ``frame0/1/2.png``); the prediction is rounded to 8 bit before PSNR and SSIM.
- :func:`snu_film`: ``test-{easy,medium,hard,extreme}.txt`` lines of three paths relative to the
  root; flow at ``flow_scale=0.5``; input padded to a multiple of 32 (the model pads to its own
  multiple, which is 32 for the default configuration); no rounding.
- :func:`xtest`: ``<root>/<type>/<scene>/*.png``; inputs 32 frames apart, the 7 frames between
  them at multiples of 4 predicted by recursive halving (8x); ``"2k"`` resizes inputs and ground
  truth to 2048x1080 (``cv2.INTER_AREA``) with flow at 0.5, ``"4k"`` keeps the size with flow at
  0.25; predictions rounded to 8 bit; PSNR/SSIM averaged per input pair, then over pairs.
- :func:`middlebury_other`: ``other-data/<seq>/frame10.png, frame11.png`` and
  ``other-gt-interp/<seq>/frame10i11.png`` (also accepts all three in ``<seq>/``); RIFE's protocol:
  the frames are placed in a zero 480x640 canvas, the prediction cropped, rounded to 8 bit; the
  interpolation error IE is the mean absolute difference in 8-bit levels. PSNR is reported beside it.

The ``frame_average`` interpolator (``(1 - t) img0 + t img1``) is the baseline printed beside a model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..metrics import ssim_matlab
from .data import read_rgb
from .model import HybridVFI

Interpolate = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
SNU_LEVELS = ("easy", "medium", "hard", "extreme")
MIDDLEBURY_CANVAS = (480, 640)


def frame_average(img0: torch.Tensor, img1: torch.Tensor, timestep: float, flow_scale: float = 1.0) -> torch.Tensor:
    """The baseline: linear blend ``(1 - t) img0 + t img1`` (frame averaging at t = 0.5)."""
    return (1 - timestep) * img0 + timestep * img1


def model_interpolator(model: HybridVFI, device: str | torch.device = "cpu", bf16: bool = False) -> Interpolate:
    """Wrap a model as an :data:`Interpolate` callable (eval mode, no grad, optional bf16 autocast).

    A phase-1 model has no flow estimator; a requested ``flow_scale`` is then ignored (it always runs
    at full resolution).
    """
    device = torch.device(device)
    model = model.to(device).eval()

    @torch.no_grad()
    def interpolate(img0, img1, timestep, flow_scale=1.0):
        scale = flow_scale if model.config.use_flow else 1.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(img0.to(device), img1.to(device), timestep, flow_scale=scale)
        return out.float().clamp(0, 1).cpu()

    return interpolate


def psnr_float(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """``-10 log10(mean((gt - pred)^2))`` for images in [0, 1], as the benchmark scripts write it."""
    mse = torch.mean((gt.double() - pred.double()) ** 2).item()
    return -10 * math.log10(mse) if mse > 0 else math.inf


def round8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _load(path) -> torch.Tensor:
    return read_rgb(path)[None]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def vimeo90k(
    root: str | os.PathLike, interpolate: Interpolate, progress: bool = False, limit: int | None = None
) -> dict:
    """``limit``: evaluate only the first ``limit`` triplets of the list (quick checks)."""
    root = Path(root)
    names = _require(root / "tri_testlist.txt", "Vimeo-90K test list").read_text().split()[:limit]
    if not names:
        raise ValueError(f"{root / 'tri_testlist.txt'} lists no triplets")
    psnrs, ssims = [], []
    for name in tqdm(names, desc="Vimeo90K", disable=not progress):
        folder = root / "sequences" / name
        img0, gt, img1 = (_load(folder / f"im{i}.png") for i in (1, 2, 3))
        pred = interpolate(img0, img1, 0.5, 1.0).clamp(0, 1)
        psnrs.append(psnr_float(pred, gt))
        ssims.append(float(ssim_matlab(pred, gt)))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": len(names)}


def _ucf_names(folder: Path) -> tuple[Path, Path, Path] | None:
    for names in (("frame_00.png", "frame_01_gt.png", "frame_02.png"), ("frame0.png", "frame1.png", "frame2.png")):
        paths = tuple(folder / n for n in names)
        if all(p.is_file() for p in paths):
            return paths
    return None


def ucf101(root: str | os.PathLike, interpolate: Interpolate, progress: bool = False) -> dict:
    root = _require(Path(root), "UCF101 folder")
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    triplets = [t for t in map(_ucf_names, folders) if t is not None]
    if not triplets:
        raise ValueError(f"no UCF101 triplet (frame_00/frame_01_gt/frame_02.png or frame0/1/2.png) under {root}")
    psnrs, ssims = [], []
    for p0, pgt, p1 in tqdm(triplets, desc="UCF101", disable=not progress):
        img0, gt, img1 = _load(p0), _load(pgt), _load(p1)
        pred = round8(interpolate(img0, img1, 0.5, 1.0))
        psnrs.append(psnr_float(pred, gt))
        ssims.append(float(ssim_matlab(pred, gt)))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": len(triplets)}


def snu_film(
    root: str | os.PathLike, interpolate: Interpolate, levels=SNU_LEVELS, progress: bool = False
) -> dict[str, dict]:
    root = Path(root)
    results = {}
    for level in levels:
        if level not in SNU_LEVELS:
            raise ValueError(f"SNU-FILM levels are {SNU_LEVELS}; got {level!r}")
        lines = _require(root / f"test-{level}.txt", "SNU-FILM list").read_text().splitlines()
        triplets = [line.split() for line in lines if line.strip()]
        psnrs, ssims = [], []
        for entry in tqdm(triplets, desc=f"SNU-FILM {level}", disable=not progress):
            if len(entry) != 3:
                raise ValueError(f"test-{level}.txt lines must hold 3 paths; got {entry}")
            img0, gt, img1 = (_load(root / p) for p in entry)
            pred = interpolate(img0, img1, 0.5, 0.5).clamp(0, 1)
            psnrs.append(psnr_float(pred, gt))
            ssims.append(float(ssim_matlab(pred, gt)))
        results[level] = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": len(triplets)}
    return results


def _read_float(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """RGB float image; resized to ``size=(width, height)`` with INTER_AREA when given."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    if size is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def recursive_midpoints(interpolate: Interpolate, img0, img1, depth: int, flow_scale: float) -> list[torch.Tensor]:
    """The ``2**depth - 1`` frames between ``img0`` and ``img1`` by recursive halving, in time order."""
    if depth == 0:
        return []
    mid = interpolate(img0, img1, 0.5, flow_scale).clamp(0, 1)
    return [
        *recursive_midpoints(interpolate, img0, mid, depth - 1, flow_scale),
        mid,
        *recursive_midpoints(interpolate, mid, img1, depth - 1, flow_scale),
    ]


def xtest(
    root: str | os.PathLike, interpolate: Interpolate, mode: str = "4k", step: int = 32, progress: bool = False
) -> dict:
    if mode not in ("2k", "4k"):
        raise ValueError(f"mode must be '2k' or '4k'; got {mode!r}")
    size, flow_scale = ((2048, 1080), 0.5) if mode == "2k" else (None, 0.25)
    root = _require(Path(root), "X-TEST folder")
    scenes = sorted(p for t in sorted(root.iterdir()) if t.is_dir() for p in sorted(t.iterdir()) if p.is_dir())
    pairs = []
    for scene in scenes:
        frames = sorted(scene.glob("*.png"))
        pairs += [(frames, i) for i in range(0, len(frames) - step, step)]
    if not pairs:
        raise ValueError(f"no X-TEST scene with more than {step} frames under {root}/<type>/<scene>/")
    psnrs, ssims = [], []
    for frames, i in tqdm(pairs, desc=f"X-TEST {mode}", disable=not progress):
        img0, img1 = _read_float(frames[i], size), _read_float(frames[i + step], size)
        preds = recursive_midpoints(interpolate, img0, img1, 3, flow_scale)
        pair_psnr, pair_ssim = [], []
        for k, pred in enumerate(preds):
            gt = _read_float(frames[i + (step // 8) * (k + 1)], size)
            pred = round8(pred)
            pair_psnr.append(psnr_float(pred, gt))
            pair_ssim.append(float(ssim_matlab(pred, gt)))
        psnrs.append(np.mean(pair_psnr))
        ssims.append(np.mean(pair_ssim))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "samples": len(pairs)}


def _middlebury_sequences(root: Path) -> list[tuple[str, Path, Path, Path]]:
    if (root / "other-data").is_dir():
        seqs = sorted(p.name for p in (root / "other-data").iterdir() if p.is_dir())
        return [
            (
                s,
                root / "other-data" / s / "frame10.png",
                root / "other-data" / s / "frame11.png",
                root / "other-gt-interp" / s / "frame10i11.png",
            )
            for s in seqs
            if (root / "other-gt-interp" / s / "frame10i11.png").is_file()
        ]
    return [
        (p.name, p / "frame10.png", p / "frame11.png", p / "frame10i11.png")
        for p in sorted(root.iterdir())
        if p.is_dir() and (p / "frame10i11.png").is_file()
    ]


def middlebury_other(root: str | os.PathLike, interpolate: Interpolate, progress: bool = False) -> dict:
    root = _require(Path(root), "Middlebury folder")
    sequences = _middlebury_sequences(root)
    if not sequences:
        raise ValueError(f"no Middlebury 'other' sequence with ground truth under {root}")
    ies, psnrs = [], []
    for name, p0, p1, pgt in tqdm(sequences, desc="Middlebury", disable=not progress):
        img0, img1, gt = _load(p0), _load(p1), _load(pgt)
        h, w = img0.shape[-2:]
        ch, cw = MIDDLEBURY_CANVAS
        if h > ch or w > cw:
            raise ValueError(f"Middlebury frame {name} is {h}x{w}, larger than the {ch}x{cw} canvas of the protocol")
        canvas0, canvas1 = img0.new_zeros(1, 3, ch, cw), img1.new_zeros(1, 3, ch, cw)
        canvas0[..., :h, :w], canvas1[..., :h, :w] = img0, img1
        pred = interpolate(canvas0, canvas1, 0.5, 1.0)[..., :h, :w]
        pred8, gt8 = torch.round(pred.clamp(0, 1) * 255), torch.round(gt * 255)
        ies.append((pred8 - gt8).abs().mean().item())
        psnrs.append(psnr_float(pred8 / 255, gt))
    return {"ie": float(np.mean(ies)), "psnr": float(np.mean(psnrs)), "samples": len(sequences)}


BENCHMARKS = {
    "vimeo90k": vimeo90k,
    "ucf101": ucf101,
    "snu_film": snu_film,
    "xtest_2k": lambda root, f, progress=False: xtest(root, f, "2k", progress=progress),
    "xtest_4k": lambda root, f, progress=False: xtest(root, f, "4k", progress=progress),
    "middlebury_other": middlebury_other,
}


def run_benchmark(name: str, root: str | os.PathLike, interpolate: Interpolate, progress: bool = False) -> list[dict]:
    """Rows ``{"benchmark", "method", metrics...}`` for the model and for frame averaging."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    rows = []
    for method, fn in (("model", interpolate), ("frame averaging", frame_average)):
        result = BENCHMARKS[name](root, fn, progress=progress)
        if name == "snu_film":
            rows += [{"benchmark": f"snu_film_{level}", "method": method, **r} for level, r in result.items()]
        else:
            rows.append({"benchmark": name, "method": method, **result})
    return rows
