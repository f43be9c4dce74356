"""Tiny configurations shared by the interpolation tests."""

from __future__ import annotations

import dataclasses

import torch

from videostate.interpolation import HybridVFIConfig

TINY = HybridVFIConfig(
    embed_dims=(8, 16, 16),
    depths=(1, 2, 1),
    num_heads=(1, 2, 2),
    window_sizes=(4, 4, 2),
    mlp_ratio=2.0,
    mamba_d_state=8,
    mamba_headdim=8,
    mamba_chunk_size=32,
    flow_channels=(16, 12, 8),
    context_channels=4,
    refine_channels=8,
)


def tiny_config(**changes) -> HybridVFIConfig:
    return dataclasses.replace(TINY, **changes)


def random_pair(batch: int, height: int, width: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 3, height, width, generator=g, dtype=dtype),
        torch.rand(batch, 3, height, width, generator=g, dtype=dtype),
    )
