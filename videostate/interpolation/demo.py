"""Demo rows for ``videostate demo``: HybridVFI phases on a synthetic moving square (random weights)."""

from __future__ import annotations

import time

import torch

from ..metrics import psnr
from .config import HybridVFIConfig
from .model import HybridVFI


def moving_square_pair(height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``img0, gt, img1`` ``(1, 3, H, W)``: a grey gradient with a bright square moving right by H/4 per frame."""
    g = torch.Generator().manual_seed(seed)
    gradient = torch.linspace(0.2, 0.6, width).expand(1, 3, height, width).clone()
    side = max(2, height // 4)
    top = int(torch.randint(0, height - side + 1, (), generator=g))
    frames = []
    for k in range(3):
        frame = gradient.clone()
        left = min(width - side, k * side)
        frame[..., top : top + side, left : left + side] = 1.0
        frames.append(frame)
    return tuple(frames)


@torch.no_grad()
def interpolation_demo(height: int = 32, width: int = 48, seed: int = 0, device: str = "cpu") -> list[dict]:
    """One row per phase (default configuration, random weights).

    Keys: ``mode``; ``max_abs_diff``, the largest difference between a batch of two timesteps
    (0.25, 0.75) and the same frames computed one by one (should be rounding error);
    ``tokens_per_s``, output pixels per second; ``frames_per_s``; ``psnr_model`` and
    ``psnr_frame_average`` at t = 0.5 against the true middle frame (untrained weights: the model's
    PSNR only shows the pipeline runs end to end).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive; got {height}x{width}")
    dev = torch.device(device)
    img0, gt, img1 = (x.to(dev) for x in moving_square_pair(height, width, seed))
    rows = []
    for phase in (1, 2):
        torch.manual_seed(seed)
        model = HybridVFI(HybridVFIConfig(phase=phase)).to(dev).eval()
        model(img0, img1)  # warm-up
        pair0, pair1 = img0.expand(2, -1, -1, -1), img1.expand(2, -1, -1, -1)
        start = time.perf_counter()
        batch = model(pair0, pair1, torch.tensor([0.25, 0.75], device=dev))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        single = torch.cat([model(img0, img1, 0.25), model(img0, img1, 0.75)])
        middle = model(img0, img1, 0.5)
        rows.append(
            {
                "mode": f"phase {phase}, {height}x{width}",
                "max_abs_diff": (batch - single).abs().max().item(),
                "tokens_per_s": 2 * height * width / seconds,
                "frames_per_s": 2 / seconds,
                "psnr_model": psnr(middle, gt).item(),
                "psnr_frame_average": psnr((img0 + img1) / 2, gt).item(),
            }
        )
    return rows
