"""Tiny random Depth Anything teachers, saved and loaded back through the real loading code."""

from __future__ import annotations

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from videostate.depth import DepthAnythingTeacher

INPUT_SIZE = 28


def tiny_depth_anything_config(depth_estimation_type: str = "relative") -> DepthAnythingConfig:
    backbone = Dinov2Config(
        image_size=28,
        patch_size=14,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[4, 8, 8, 16],
        fusion_hidden_size=8,
        head_hidden_size=4,
        depth_estimation_type=depth_estimation_type,
        max_depth=1 if depth_estimation_type == "relative" else 20,
    )


def save_tiny_teacher(path, seed: int = 0, depth_estimation_type: str = "relative") -> None:
    """A random tiny model with unit-gain weights (so that its depth varies over the image), saved to ``path``."""
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(tiny_depth_anything_config(depth_estimation_type))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.copy_(torch.randn_like(param) / param[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
        model.head.conv3.bias.fill_(0.5)
    model.save_pretrained(path)


def load_tiny_teacher(path, dtype=torch.float32) -> DepthAnythingTeacher:
    return DepthAnythingTeacher.from_pretrained(path, input_size=INPUT_SIZE).to(dtype)
