"""Tiny random VidEoMT configs and models for CPU tests."""

from __future__ import annotations

import torch

from videostate.segmentation import VideomtConfig, VideomtForUniversalSegmentation

IMAGE_SIZE = 16
PATCH_SIZE = 4
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2


def tiny_config(**overrides) -> VideomtConfig:
    """3 layers, 2 of them segmenter layers; masks (h, w) = (8, 8); 5 queries, 3 classes."""
    fields = dict(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_queries=5,
        num_register_tokens=2,
        num_blocks=2,
        num_labels=3,
        num_upscale_blocks=1,
        train_num_points=64,
    )
    fields.update(overrides)
    return VideomtConfig(**fields)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> VideomtForUniversalSegmentation:
    """A random model with non-trivial mask token, register tokens and layer scales (zeros at init)."""
    torch.manual_seed(seed)
    model = VideomtForUniversalSegmentation(tiny_config(**overrides)).to(dtype).eval()
    with torch.no_grad():
        model.embeddings.mask_token.normal_()
        model.embeddings.register_tokens.normal_()
    return model


def random_video(batch: int, frames: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, dtype=dtype)


def random_patch_mask(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.4
