"""VidEoMT demo: a random model on a synthetic clip, offline, in chunks and frame by frame."""

from __future__ import annotations

import torch

from ..demo import timed
from .model import VideomtConfig, VideomtForUniversalSegmentation


def demo_config(image_size: int = 64) -> VideomtConfig:
    """A small ViT (width 96, 6 layers, 2 segmenter layers, 20 queries, 5 classes) for quick runs."""
    return VideomtConfig(
        hidden_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        num_blocks=2,
        num_queries=20,
        num_labels=5,
        num_register_tokens=2,
        num_upscale_blocks=1,
    )


@torch.no_grad()
def segmentation_demo(
    frames: int = 16, chunk: int = 4, image_size: int = 64, seed: int = 0, device: str = "cpu"
) -> list[dict]:
    """Offline clip vs chunks with carried queries vs ``step`` frame by frame.

    Returns one row per mode: ``mode``, ``frames_per_s`` and ``max_abs_diff`` of the mask logits from the
    offline pass.
    """
    if frames < 1 or chunk < 1:
        raise ValueError(f"frames and chunk must be positive; got frames={frames}, chunk={chunk}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = VideomtForUniversalSegmentation(demo_config(image_size)).to(dev).eval()
    video = torch.randn(1, frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)).to(dev)
    model(video[:, :1])  # warm-up

    def chunked():
        state, outs = model.init_state(1, device=dev), []
        for start in range(0, frames, chunk):
            out = model(video[:, start : start + chunk], state=state)
            state = out.next_state
            outs.append(out.masks_queries_logits)
        return torch.cat(outs, dim=1)

    def stepwise():
        state, outs = model.init_state(1, device=dev), []
        for t in range(frames):
            out, state = model.step(video[:, t], state)
            outs.append(out.masks_queries_logits)
        return torch.cat(outs, dim=1)

    offline, seconds = timed(lambda: model(video).masks_queries_logits, dev)
    rows = [{"mode": "offline clip", "frames_per_s": frames / seconds, "max_abs_diff": 0.0}]
    for mode, fn in ((f"chunks of {chunk}", chunked), ("step by step", stepwise)):
        out, seconds = timed(fn, dev)
        rows.append(
            {"mode": mode, "frames_per_s": frames / seconds, "max_abs_diff": (out - offline).abs().max().item()}
        )
    return rows
