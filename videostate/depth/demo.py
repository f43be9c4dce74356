"""VideoMambaDepth on a video offline, in chunks and frame by frame: the three give the same depth.

A tiny Depth Anything (random unit-gain weights) is the teacher; the student's temporal output projections get random
weights too (at initialisation they are zero and the student is exactly the teacher), so the temporal path is
active. Rows report the largest difference from the offline clip forward and the throughput.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..demo import timed

SAMPLE_VIDEOS = Path("../shared/data/videos")


def tiny_depth_anything_config(image_size: int = 56):
    """A tiny random Depth Anything configuration (Dinov2 backbone of width 32 and 4 layers)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        image_size=image_size,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )


def unit_gain_(model: torch.nn.Module) -> None:
    """Re-draw random weights with unit gain (``N(0, 1/fan_in)`` matrices, norms near 1, small biases), so an
    untrained tiny model gives depth that varies over the image instead of a near-constant map."""
    for name, param in model.named_parameters():
        if param.dim() > 1:
            param.copy_(torch.randn_like(param) / param[0].numel() ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            param.copy_(1 + 0.1 * torch.randn_like(param))
        else:
            param.copy_(0.1 * torch.randn_like(param))


def demo_clip(frames: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, str]:
    """``(1, frames, 3, H, W)`` in [0, 1]: the first frames of the sample video when present, else a moving pattern."""
    candidates = sorted(SAMPLE_VIDEOS.glob("*.mp4")) if SAMPLE_VIDEOS.is_dir() else []
    if candidates:
        from videostate.data.video import VideoReader

        with VideoReader(candidates[0], format="tensor") as reader:
            clip = reader.read_clip(range(min(frames, len(reader))))
        source = candidates[0].name
    else:
        generator = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, size[0]), torch.linspace(0, 1, size[1]), indexing="ij")
        phase = torch.rand(3, 1, 1, generator=generator) * 6.28
        clip = torch.stack([0.5 + 0.5 * torch.sin(8 * (xx + 0.05 * t) + 4 * yy + phase) for t in range(frames)])
        source = "synthetic"
    clip = F.interpolate(clip, size=size, mode="bilinear", antialias=True, align_corners=False)
    return clip[None].clamp(0, 1), source


@torch.no_grad()
def depth_streaming_demo(
    frames: int = 16, size: tuple[int, int] = (56, 98), chunk: int = 4, seed: int = 0, device: str = "cpu"
) -> list[dict]:
    """Offline vs chunks vs frame-by-frame VideoMambaDepth, and the teacher alone.

    Returns rows with ``mode``, ``max_abs_diff`` (from the offline student depth), ``frames_per_s`` and
    ``source`` (the clip used).
    """
    from transformers import DepthAnythingForDepthEstimation

    from .model import VideoMambaDepth, VideoMambaDepthConfig
    from .teacher import DepthAnythingTeacher

    if frames < 1 or chunk < 1:
        raise ValueError(f"frames and chunk must be positive; got frames={frames}, chunk={chunk}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    network = DepthAnythingForDepthEstimation(tiny_depth_anything_config())
    unit_gain_(network)
    network.head.conv3.bias.fill_(0.5)  # keep the final ReLU alive
    teacher = DepthAnythingTeacher(network, input_size=size[0])
    model = VideoMambaDepth(teacher, VideoMambaDepthConfig(d_state=8))
    for proj in model.temporal_out:
        proj.weight.normal_(0, 0.2 * proj.in_features)  # read-out multiplier 1 / C
    model = model.to(dev).eval()
    clip, source = demo_clip(frames, size, seed)
    clip = clip.to(dev)
    model(clip[:, :1])  # warm-up

    def chunked():
        states, outs = model.init_states(1), []
        for start in range(0, frames, chunk):
            depth, states = model(clip[:, start : start + chunk], states)
            outs.append(depth)
        return torch.cat(outs, dim=1)

    def stepwise():
        states, outs = model.init_states(1), []
        for t in range(clip.shape[1]):
            depth, states = model.step(clip[:, t], states)
            outs.append(depth)
        return torch.stack(outs, dim=1)

    def teacher_alone():
        return torch.stack([teacher.predict_depth(clip[:, t]) for t in range(clip.shape[1])], dim=1)

    offline, seconds = timed(lambda: model(clip), dev)
    n = clip.shape[1]
    rows = [{"mode": "offline clip", "max_abs_diff": 0.0, "frames_per_s": n / seconds, "source": source}]
    for mode, fn in ((f"chunks of {chunk}", chunked), ("frame by frame", stepwise), ("teacher alone", teacher_alone)):
        out, seconds = timed(fn, dev)
        rows.append(
            {
                "mode": mode,
                "max_abs_diff": (out - offline).abs().max().item(),
                "frames_per_s": n / seconds,
                "source": source,
            }
        )
    return rows
