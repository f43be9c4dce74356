"""Frozen Depth Anything teacher: multi-scale encoder features and per-frame relative depth.

The student (:class:`videostate.depth.model.VideoMambaDepth`) needs four things from a teacher:

- ``encode_frame(rgb (batch, 3, H, W)) -> {scale: (batch, C_scale, H_scale, W_scale)}``: the encoder's
  multi-scale features (for Depth Anything, the four reassembled neck maps, fine to coarse);
- ``predict_depth(rgb) -> (batch, 1, H, W)``: the teacher's own relative depth at input resolution;
- ``network_size(height, width) -> (h, w)``: the resolution the network runs at;
- ``build_decoder() -> DPTDecoder``: a trainable decoder initialised from the teacher's own.

:class:`DepthAnythingTeacher` implements them for Depth Anything V1/V2 through transformers'
``DepthAnythingForDepthEstimation``; another family (Depth Anything 3) only needs an adapter with the
same methods. Inputs are RGB in ``[0, 1]``; pre-processing follows the official Depth Anything V2
(``infer_image``): resize keeping the aspect ratio so the shorter side reaches ``input_size``, each side a
multiple of the patch size, ImageNet normalisation; depth is resized back with bilinear
(``align_corners=True``) interpolation.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import DPTDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Depth Anything V2 architectures as transformers converts them (``convert_depth_anything_to_hf.py``):
# backbone width, depth and heads, the layers feeding the neck, neck widths and fusion width.
DEPTH_ANYTHING_V2_ARCHITECTURES = {
    "small": {"hidden": 384, "layers": 12, "heads": 6, "out": [3, 6, 9, 12], "neck": [48, 96, 192, 384], "fusion": 64},
    "base": {
        "hidden": 768,
        "layers": 12,
        "heads": 12,
        "out": [3, 6, 9, 12],
        "neck": [96, 192, 384, 768],
        "fusion": 128,
    },
    "large": {
        "hidden": 1024,
        "layers": 24,
        "heads": 16,
        "out": [5, 12, 18, 24],
        "neck": [256, 512, 1024, 1024],
        "fusion": 256,
    },
}


def depth_anything_v2_config(size: str):
    """The ``DepthAnythingConfig`` of Depth Anything V2 ``size`` (``small``, ``base``, ``large``), relative depth."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if size not in DEPTH_ANYTHING_V2_ARCHITECTURES:
        raise ValueError(f"size must be one of {sorted(DEPTH_ANYTHING_V2_ARCHITECTURES)}; got {size!r}")
    arch = DEPTH_ANYTHING_V2_ARCHITECTURES[size]
    backbone = Dinov2Config(
        image_size=518,
        patch_size=14,
        hidden_size=arch["hidden"],
        num_hidden_layers=arch["layers"],
        num_attention_heads=arch["heads"],
        intermediate_size=4 * arch["hidden"],
        out_indices=arch["out"],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=arch["hidden"],
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=arch["neck"],
        fusion_hidden_size=arch["fusion"],
        head_hidden_size=32,
        depth_estimation_type="relative",
    )


def constrain_to_multiple(x: float, multiple: int, min_val: int) -> int:
    """Depth Anything's ``constrain_to_multiple_of``: round to a multiple, rounding up below ``min_val``."""
    y = round(x / multiple) * multiple
    if y < min_val:
        y = math.ceil(x / multiple) * multiple
    return int(y)


def network_size(height: int, width: int, input_size: int, multiple: int) -> tuple[int, int]:
    """Depth Anything V2's ``Resize(keep_aspect_ratio=True, resize_method="lower_bound")``: the size whose
    shorter side is at least ``input_size``, with the aspect kept and both sides multiples of ``multiple``."""
    scale = max(input_size / height, input_size / width)
    return (
        constrain_to_multiple(scale * height, multiple, input_size),
        constrain_to_multiple(scale * width, multiple, input_size),
    )


def resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``depth (batch, 1, h, w)`` -> ``(batch, 1, *size)``, bilinear with ``align_corners=True`` (official DA2)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=size, mode="bilinear", align_corners=True)


def check_rgb(name: str, rgb: torch.Tensor, frames: bool = False) -> None:
    """``rgb`` must be a floating ``(batch, 3, H, W)`` tensor (``(batch, frames, 3, H, W)`` with ``frames``)."""
    layout = "(batch, frames, 3, height, width)" if frames else "(batch, 3, height, width)"
    if not isinstance(rgb, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {layout}; got {type(rgb).__name__}")
    dims = 5 if frames else 4
    if rgb.dim() != dims or rgb.shape[-3] != 3:
        raise ValueError(f"{name} must have shape {layout}; got {tuple(rgb.shape)}")
    if not rgb.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1]; got dtype {rgb.dtype}")


class DepthAnythingTeacher(nn.Module):
    """Frozen ``DepthAnythingForDepthEstimation`` (V1/V2, relative or metric) with the teacher interface.

    Args:
        model: a ``transformers.DepthAnythingForDepthEstimation``; its parameters are frozen and it is
            kept in eval mode (``train()`` does not change that).
        input_size: shorter side of the network input (518 for the official models).
    """

    def __init__(self, model: nn.Module, input_size: int = 518):
        super().__init__()
        from transformers import DepthAnythingForDepthEstimation

        if not isinstance(model, DepthAnythingForDepthEstimation):
            raise TypeError(f"model must be a DepthAnythingForDepthEstimation; got {type(model).__name__}")
        self.patch_size = int(model.config.patch_size)
        if input_size < self.patch_size:
            raise ValueError(f"input_size must be at least the patch size {self.patch_size}; got {input_size}")
        self.model = model
        self.input_size = int(input_size)
        # Buffers, so that pre-processing copies nothing from the host (a CUDA graph can capture it).
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1), persistent=False
        )
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, input_size: int = 518, **kwargs) -> DepthAnythingTeacher:
        """Load a transformers Depth Anything checkpoint from a local folder or a hub id (e.g.
        ``depth-anything/Depth-Anything-V2-Small-hf``); ``kwargs`` go to transformers' ``from_pretrained``."""
        from transformers import DepthAnythingForDepthEstimation

        return cls(DepthAnythingForDepthEstimation.from_pretrained(path_or_id, **kwargs), input_size=input_size)

    @classmethod
    def from_config(cls, config, input_size: int = 518) -> DepthAnythingTeacher:
        """A randomly initialised teacher of the given ``DepthAnythingConfig`` (weights are loaded after)."""
        from transformers import DepthAnythingForDepthEstimation

        return cls(DepthAnythingForDepthEstimation(config), input_size=input_size)

    def train(self, mode: bool = True) -> DepthAnythingTeacher:
        """The teacher stays in eval mode whatever the parent does."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the ``encode_frame`` maps, fine to coarse (``neck_hidden_sizes``)."""
        return list(self.model.config.neck_hidden_sizes)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return network_size(height, width, self.input_size, self.patch_size)

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """``rgb (batch, 3, H, W)`` in [0, 1] -> normalised ``pixel_values (batch, 3, h, w)`` at ``network_size``."""
        check_rgb("rgb", rgb)
        size = self.network_size(*rgb.shape[-2:])
        x = rgb
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return (x - self.pixel_mean.to(x)) / self.pixel_std.to(x)

    @torch.no_grad()
    def encode_frame(self, rgb: torch.Tensor) -> dict[int, torch.Tensor]:
        """``rgb (batch, 3, H, W)`` in [0, 1] -> ``{i: (batch, C_i, H_i, W_i)}`` for ``i = 0..3``: the reassembled
        neck maps at ``4, 2, 1, 1/2`` times the patch grid (fine to coarse)."""
        pixel_values = self.preprocess(rgb)
        patch_h, patch_w = (s // self.patch_size for s in pixel_values.shape[-2:])
        feature_maps = self.model.backbone(pixel_values).feature_maps
        maps = self.model.neck.reassemble_stage(list(feature_maps), patch_h, patch_w)
        return dict(enumerate(maps))

    @torch.no_grad()
    def predict_depth(self, rgb: torch.Tensor) -> torch.Tensor:
        """``rgb (batch, 3, H, W)`` in [0, 1] -> the teacher's depth ``(batch, 1, H, W)`` (relative models:
        disparity-like, larger is nearer; metric models: metres)."""
        depth = self.model(pixel_values=self.preprocess(rgb)).predicted_depth
        return resize_depth(depth[:, None], tuple(rgb.shape[-2:]))

    def build_decoder(self) -> DPTDecoder:
        """A trainable copy of the teacher's DPT decoder (neck convs, fusion stage, head)."""
        cfg = self.model.config
        decoder = DPTDecoder(
            in_channels=list(cfg.neck_hidden_sizes),
            fusion_hidden_size=cfg.fusion_hidden_size,
            head_hidden_size=cfg.head_hidden_size,
            head_in_index=cfg.head_in_index,
            depth_estimation_type=cfg.depth_estimation_type,
            max_depth=float(cfg.max_depth),
        )
        decoder.load_from_depth_anything(self.model)
        param = next(self.model.parameters())
        return decoder.to(device=param.device, dtype=param.dtype)

    def export_config(self) -> dict:
        """What :meth:`from_exported_config` needs to rebuild this teacher (weights saved separately)."""
        return {"type": "depth_anything", "input_size": self.input_size, "model": self.model.config.to_dict()}

    @classmethod
    def from_exported_config(cls, data: dict) -> DepthAnythingTeacher:
        from transformers import DepthAnythingConfig

        if data.get("type") != "depth_anything":
            raise ValueError(f"teacher config type must be 'depth_anything'; got {data.get('type')!r}")
        return cls.from_config(DepthAnythingConfig.from_dict(data["model"]), input_size=data["input_size"])
