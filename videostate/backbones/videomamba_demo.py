"""VideoMamba-Ti on a video, offline and streamed chunk by chunk with the carried state.

Two Ti-sized encoders (width 192, 24 blocks, random weights) read the same clip: the bidirectional
one (VideoMamba's default) and a forward-only one (``bimamba=False``). Each runs offline, then as a
stream of ``chunk_frames``-frame chunks carrying its state; the bidirectional one also as a single
chunk holding the whole clip. Rows report the largest difference from that model's offline output,
the throughput, and the size of the carried state, which is the same after every chunk.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from .videomamba import SIZES, VideoMambaEncoder

SAMPLE_VIDEOS = Path("../shared/data/videos")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_clip(path: str | Path | None, frames: int, img_size: int, seed: int) -> tuple[torch.Tensor, str]:
    """``(1, 3, frames, img_size, img_size)`` normalised clip and its source: the first ``frames``
    frames of ``path`` (default: the first sample video, when present), else a synthetic moving pattern."""
    if path is None:
        candidates = sorted(SAMPLE_VIDEOS.glob("*.mp4")) if SAMPLE_VIDEOS.is_dir() else []
        path = candidates[0] if candidates else None
    if path is not None:
        from ..data.video import VideoReader

        reader = VideoReader(path, format="tensor")
        clip = reader.read_clip(range(min(frames, len(reader))))  # (T, 3, H, W) in [0, 1]
        source = Path(path).name
    else:
        generator = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, img_size), torch.linspace(0, 1, img_size), indexing="ij")
        phase = torch.rand(3, 1, 1, generator=generator) * 6.28
        clip = torch.stack([0.5 + 0.5 * torch.sin(8 * (xx + 0.05 * t) + 4 * yy + phase) for t in range(frames)])
        source = "synthetic"
    clip = F.interpolate(clip, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return rearrange((clip - mean) / std, "t c h w -> 1 c t h w"), source


def _stream(model: VideoMambaEncoder, clip: torch.Tensor, chunk_frames: int):
    """Tokens of the whole stream ``(1, L, D)`` and the carried state's size in bytes after each chunk."""
    state = model.init_state(clip.shape[0], device=clip.device, dtype=clip.dtype)
    outputs, state_bytes = [], []
    for start in range(0, clip.shape[2], chunk_frames):
        tokens, state = model(clip[:, :, start : start + chunk_frames], ssm_state=state, temporal_pos_offset=start)
        outputs.append(tokens)
        state_bytes.append(sum(t.numel() * t.element_size() for t in state.tensors().values()))
    return torch.cat(outputs, dim=1), state_bytes


@torch.no_grad()
def videomamba_streaming_demo(
    video: str | Path | None = None,
    frames: int = 8,
    img_size: int = 64,
    chunk_frames: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Rows ``mode``, ``max_abs_diff`` (from the model's offline output), ``tokens_per_s``,
    ``state_bytes`` (carried per stream, ``None`` offline) and ``source`` (the clip)."""
    if frames < 1 or chunk_frames < 1:
        raise ValueError(f"frames and chunk_frames must be positive; got {frames}, {chunk_frames}")
    dev = torch.device(device)
    clip, source = load_clip(video, frames, img_size, seed)
    clip = clip.to(dev)
    frames = clip.shape[2]
    embed_dim, depth = SIZES["tiny"]
    rows = []
    for bimamba in (True, False):
        torch.manual_seed(seed)
        model = VideoMambaEncoder(
            img_size=img_size,
            embed_dim=embed_dim,
            depth=depth,
            num_frames=frames,
            bimamba=bimamba,
            add_pool_norm=False,
        )
        model = model.to(dev).eval()
        model(clip[:, :, :1])  # warm-up, so the first timed mode pays no one-off costs
        tokens = clip.shape[0] * (1 + frames * model.patch_embed.num_patches)
        name = "bi" if bimamba else "fwd"
        start = time.perf_counter()
        offline = model(clip)
        rows.append(_row(f"{name}: offline", offline, offline, start, tokens, None, source))
        modes = [(f"{name}: {chunk_frames}-frame chunks", chunk_frames)]
        if bimamba:
            modes.insert(0, (f"{name}: whole clip", frames))
        for mode, size in modes:
            start = time.perf_counter()
            streamed, state_bytes = _stream(model, clip, size)
            if len(set(state_bytes)) != 1:
                raise RuntimeError(f"the carried state changed size between chunks: {state_bytes}")
            rows.append(_row(mode, streamed, offline, start, tokens, state_bytes[0], source))
    return rows


def _row(mode, out, offline, start, tokens, state_bytes, source) -> dict:
    if out.device.type == "cuda":
        torch.cuda.synchronize(out.device)
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "max_abs_diff": (out - offline).abs().max().item(),
        "tokens_per_s": tokens / seconds,
        "state_bytes": state_bytes,
        "source": source,
    }
