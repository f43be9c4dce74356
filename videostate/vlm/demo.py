"""VLM² demo: a small random LLaVA-OneVision with spatial fusion and dual memory, a video encoded offline,
in chunks and frame by frame with the memory carried per video id.

With the RGB-D sample (``../shared/data/rgbd/icl_livingroom1``) present, the frames and the 3D inputs
(world points back-projected from depth and poses) are real; otherwise both are synthetic.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import VLM2Config
from .model import VLM2ForConditionalGeneration
from .spatial import SpatialFeatures, load_rgbd_sequence, spatial_features_from_rgbd

RGBD_SAMPLE = Path("../shared/data/rgbd/icl_livingroom1")
ICL_INTRINSICS = ((525.0, 0.0, 319.5), (0.0, 525.0, 239.5), (0.0, 0.0, 1.0))


def random_llava(
    kind: str = "onevision",
    vision_dim: int = 64,
    text_dim: int = 64,
    image_size: int = 64,
    patch_size: int = 8,
    vocab_size: int = 256,
    seed: int = 0,
):
    """A small LLaVA-OneVision (``kind="onevision"``) or LLaVA-NeXT-Video (``"nextvideo"``) with random
    weights: SigLIP vision tower and Qwen2 language model of 2 layers each. The last two vocabulary ids
    are the image and video placeholders."""
    from transformers import (
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    common = dict(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_dim,
            intermediate_size=2 * vision_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),
        image_token_index=vocab_size - 2,
        video_token_index=vocab_size - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[image_size, image_size]],
    )
    if kind == "onevision":
        return LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**common)).eval()
    if kind == "nextvideo":
        config = LlavaNextVideoConfig(**common, spatial_pool_mode="average", spatial_pool_stride=2)
        return LlavaNextVideoForConditionalGeneration(config).eval()
    raise ValueError(f"kind must be 'onevision' or 'nextvideo'; got {kind!r}")


def demo_inputs(frames: int, image_size: int, tokens: int, geom_dim: int, seed: int):
    """``(pixels (1, frames, 3, S, S) in [-1, 1], SpatialFeatures, source name)``."""
    if RGBD_SAMPLE.is_dir():
        seq = load_rgbd_sequence(
            RGBD_SAMPLE, torch.tensor(ICL_INTRINSICS, dtype=torch.float64), frame_indices=list(range(0, 6 * frames, 6))
        )
        pixels = (
            torch.nn.functional.interpolate(
                seq["frames"], size=(image_size, image_size), mode="bilinear", antialias=True
            )
            * 2
            - 1
        )
        spatial = spatial_features_from_rgbd(
            seq["points"].float(), seq["cam_to_world"].float(), tokens, geom_dim, frame_size=image_size
        )
        return pixels[None], spatial, f"RGB-D sample {RGBD_SAMPLE.name}"
    g = torch.Generator().manual_seed(seed)
    side = image_size
    spatial = SpatialFeatures(
        camera_tokens=torch.randn(1, frames, 1, geom_dim, generator=g),
        patch_tokens=torch.randn(1, frames, tokens, geom_dim, generator=g),
        points=torch.randn(1, frames, side, side, 3, generator=g),
    )
    return torch.rand(1, frames, 3, side, side, generator=g) * 2 - 1, spatial, "synthetic frames"


@torch.no_grad()
def vlm_streaming_demo(frames: int = 8, chunk: int = 2, seed: int = 0, device: str = "cpu") -> list[dict]:
    """Video tokens of one video three ways: offline, in chunks, frame by frame (memory kept per id).

    Returns rows ``mode``, ``tokens_per_s`` (visual tokens through tower, fusion and memory),
    ``max_abs_diff`` from the offline tokens, ``memory_bytes`` held for the video afterwards, ``source``.
    """
    if frames < 1 or chunk < 1:
        raise ValueError(f"frames and chunk must be positive; got frames={frames}, chunk={chunk}")
    dev = torch.device(device)
    base = random_llava(seed=seed)
    grid = (base.config.vision_config.image_size // base.config.vision_config.patch_size) ** 2
    geom_dim = 48
    config = VLM2Config(
        memory_feature_dim=base.config.vision_config.hidden_size,
        memory_num_heads=4,
        memory_L_w=4,
        memory_L_e=8,
        spatial_feature_dim=geom_dim,
        fusion_num_heads=4,
        alignment_num_heads=4,
        memory_dropout=0.0,
        fusion_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = VLM2ForConditionalGeneration(base, config).to(dev).eval()
    pixels, spatial, source = demo_inputs(frames, base.config.vision_config.image_size, grid, geom_dim, seed)
    pixels, spatial = pixels.to(dev), spatial.to(device=dev)
    per_frame = model.project(torch.zeros(1, grid, config.memory_feature_dim, device=dev), 1).shape[1] - 1
    model.encode_video(pixels[:, :1], _slice(spatial, 0, 1))  # warm-up

    def frame_tokens(tokens, count):
        return tokens[:, : count * per_frame]  # without OneVision's trailing newline token

    def streamed(step):
        model.clear_video_memory("demo")
        outs = []
        for start in range(0, frames, step):
            stop = min(frames, start + step)
            out = model.encode_video(pixels[:, start:stop], _slice(spatial, start, stop), video_ids=["demo"])
            outs.append(frame_tokens(out, stop - start))
        return torch.cat(outs, dim=1)

    rows = []
    start = time.perf_counter()
    offline = frame_tokens(model.encode_video(pixels, spatial), frames)
    rows.append(_row("offline", frames * grid, time.perf_counter() - start, 0.0, 0, source))
    for mode, step in ((f"chunks of {chunk}", chunk), ("frame by frame", 1)):
        start = time.perf_counter()
        out = streamed(step)
        seconds = time.perf_counter() - start
        held = sum(t.numel() * t.element_size() for t in model._video_memories["demo"].tensors().values())
        rows.append(_row(mode, frames * grid, seconds, (out - offline).abs().max().item(), held, source))
    return rows


def _slice(spatial: SpatialFeatures, start: int, stop: int) -> SpatialFeatures:
    return SpatialFeatures(
        camera_tokens=spatial.camera_tokens[:, start:stop],
        patch_tokens=spatial.patch_tokens[:, start:stop],
        points=None if spatial.points is None else spatial.points[:, start:stop],
        confidence=None if spatial.confidence is None else spatial.confidence[:, start:stop],
    )


def _row(mode: str, tokens: int, seconds: float, diff: float, held: int, source: str) -> dict:
    return {
        "mode": mode,
        "tokens_per_s": tokens / seconds,
        "max_abs_diff": diff,
        "memory_bytes": held,
        "source": source,
    }
