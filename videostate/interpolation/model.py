"""HybridVFI: the hybrid Mamba2-Transformer frame interpolator (phases 1-3), with save/load.

Phase 1::

    feats = HybridBackbone(img0, img1)                     # three scales, both frames
    residual, m = RefineNet(feats, t)
    frame = clamp(sigmoid(m) * img0 + (1 - sigmoid(m)) * img1 + residual, 0, 1)

Phases 2 and 3::

    flow, m_flow = OpticalFlowEstimator(img0, img1, t)     # (B, 4, H, W), (B, 1, H, W)
    w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:])
    ctx0, ctx1 = ContextNet0(img0, flow[:, :2]), ContextNet1(img1, flow[:, 2:])
    feats = HybridBackbone(img0, img1)                     # on the original, unwarped frames
    residual, m = RefineNet(feats, t, ctx0, ctx1)
    frame = clamp(sigmoid(m_flow + m) * w0 + (1 - sigmoid(m_flow + m)) * w1 + residual, 0, 1)

Inputs of any size are padded (replicate, centred) to :meth:`HybridVFIConfig.pad_multiple` and the
outputs cropped back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import HybridBackbone
from .config import HybridVFIConfig
from .context import ContextNet
from .flow import OpticalFlowEstimator
from .refine import RefineNet
from .warp import warp

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclasses.dataclass
class VFIOutput:
    """Everything :meth:`HybridVFI.predict` computes, at the input size.

    Attributes:
        frame: ``(B, 3, H, W)`` in [0, 1].
        mask: ``(B, 1, H, W)`` blend weight of frame 0 (of the warped frame 0 in phases 2-3).
        residual: ``(B, 3, H, W)`` in (-1, 1), added to the blend.
        flow: ``(B, 4, H, W)`` (t -> 0, t -> 1) in phases 2-3, else None.
    """

    frame: torch.Tensor
    mask: torch.Tensor
    residual: torch.Tensor
    flow: torch.Tensor | None


def as_timestep(timestep, batch: int, device, dtype) -> torch.Tensor:
    """A float or a tensor of shape ``()``, ``(B,)`` or ``(B, 1, 1, 1)``, strictly inside (0, 1) -> ``(B,)``."""
    if isinstance(timestep, (int, float)):  # checked on the host: no device round trip per frame
        if not 0 < timestep < 1:
            raise ValueError(f"timestep must lie strictly between 0 and 1; got {timestep}")
        return torch.full((batch,), timestep, device=device, dtype=dtype)
    t = torch.as_tensor(timestep, device=device, dtype=dtype)
    if t.numel() == 1:
        t = t.reshape(1).expand(batch)
    elif t.numel() == batch and t.dim() in (1, 4):
        t = t.reshape(batch)
    else:
        raise ValueError(
            f"timestep must be a float or have shape (), ({batch},) or ({batch}, 1, 1, 1); got {tuple(t.shape)}"
        )
    if not bool(((t > 0) & (t < 1)).all()):
        raise ValueError(f"timestep must lie strictly between 0 and 1; got {t.tolist()}")
    return t


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` that bring ``height x width`` to multiples of ``multiple``, centred."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class HybridVFI(nn.Module):
    """Interpolate a frame between ``img0`` and ``img1`` ``(B, 3, H, W)`` in [0, 1] at time ``timestep``."""

    def __init__(self, config: HybridVFIConfig | None = None):
        super().__init__()
        config = config or HybridVFIConfig()
        if not isinstance(config, HybridVFIConfig):
            raise TypeError(f"config must be a HybridVFIConfig; got {type(config).__name__}")
        self.config = config
        self.backbone = HybridBackbone(config)
        features = tuple(2 * d for d in config.embed_dims)
        if config.use_flow:
            c = config.context_channels
            self.flow_estimator = OpticalFlowEstimator(config.flow_channels, config.flow_scales)
            self.context0, self.context1 = ContextNet(c), ContextNet(c)
            self.refine = RefineNet(features, config.refine_channels, context_channels=(c, 2 * c, 4 * c))
        else:
            self.refine = RefineNet(features, config.refine_channels)
        # Channels-last convolution weights: cuDNN then runs every convolution in the tensor cores' NHWC
        # layout, with no layout transform around it, and returns channels-last maps.
        self.to(memory_format=torch.channels_last)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep=0.5, *, flow_scale: float = 1.0) -> torch.Tensor:
        """``(B, 3, H, W)`` x 2 -> the frame at ``timestep``, ``(B, 3, H, W)`` in [0, 1]."""
        return self.predict(img0, img1, timestep, flow_scale=flow_scale).frame

    def predict(self, img0: torch.Tensor, img1: torch.Tensor, timestep=0.5, *, flow_scale: float = 1.0) -> VFIOutput:
        """Like ``forward``, returning the mask, residual and flow too (for losses and inspection).

        ``flow_scale`` (phases 2-3) estimates the flow at that fraction of the resolution (0.5 for
        2K, 0.25 for 4K); the rest of the model always runs at full resolution.
        """
        for name, img in (("img0", img0), ("img1", img1)):
            if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
                got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"{name} must be a tensor (B, 3, H, W); got {got}")
        if img0.shape != img1.shape:
            raise ValueError(f"img0 and img1 must have the same shape; got {tuple(img0.shape)} and {tuple(img1.shape)}")
        if not img0.is_floating_point() or not img1.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1]; got {img0.dtype} and {img1.dtype}")
        if flow_scale != 1.0 and not self.config.use_flow:
            raise ValueError(
                f"flow_scale applies to the flow estimator (phases 2-3); phase 1 got flow_scale={flow_scale}"
            )
        t = as_timestep(timestep, img0.shape[0], img0.device, img0.dtype)
        height, width = img0.shape[-2:]
        pad = centred_padding(height, width, self.config.pad_multiple(flow_scale))
        if any(pad):
            img0, img1 = F.pad(img0, pad, mode="replicate"), F.pad(img1, pad, mode="replicate")
        out = self._synthesise(img0, img1, t, flow_scale)
        if any(pad):
            left, _, top, _ = pad
            out = VFIOutput(
                *(
                    None if x is None else x[..., top : top + height, left : left + width]
                    for x in (out.frame, out.mask, out.residual, out.flow)
                )
            )
        return out

    def _synthesise(self, img0, img1, t, flow_scale) -> VFIOutput:
        feats = self.backbone(img0, img1)
        if not self.config.use_flow:
            residual, mask_logits = self.refine(feats, t)
            mask = torch.sigmoid(mask_logits)
            merged = mask * img0 + (1 - mask) * img1
            return VFIOutput(torch.clamp(merged + residual, 0, 1), mask, residual, None)
        flow, flow_mask = self.flow_estimator(img0, img1, t, flow_scale)
        flow_t0, flow_t1 = flow[:, :2], flow[:, 2:4]
        warped0, warped1 = warp(img0, flow_t0), warp(img1, flow_t1)
        ctx0, ctx1 = self.context0(img0, flow_t0), self.context1(img1, flow_t1)
        residual, mask_logits = self.refine(feats, t, ctx0, ctx1)
        mask = torch.sigmoid(flow_mask + mask_logits)
        merged = mask * warped0 + (1 - mask) * warped1
        return VFIOutput(torch.clamp(merged + residual, 0, 1), mask, residual, flow)

    # -- save / load ---------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> HybridVFI:
        """Load a folder written by :meth:`save_pretrained`; any key mismatch is a ValueError naming the keys."""
        path = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} has no {name} (expected a folder written by save_pretrained)")
        config = config_from_dict(json.loads((path / CONFIG_NAME).read_text()))
        model = cls(config)
        state = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
        load_state_dict_strict(model, state, source=str(path / WEIGHTS_NAME))
        return model.to(map_location)


def config_from_dict(data: dict) -> HybridVFIConfig:
    """A :class:`HybridVFIConfig` from a plain dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise TypeError(f"config must be a dict; got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(HybridVFIConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown HybridVFIConfig keys {unknown}; expected a subset of {sorted(fields)}")
    return HybridVFIConfig(**data)


def load_state_dict_strict(model: nn.Module, state: dict, source: str = "state dict") -> None:
    """Load ``state`` into ``model``; a missing, unexpected or mis-shaped key raises ValueError listing them."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(
        f"{k}: expected {tuple(target[k].shape)}, got {tuple(state[k].shape)}"
        for k in set(target) & set(state)
        if target[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not match {type(model).__name__}: missing keys {missing}, unexpected keys {unexpected}, "
            f"mismatched shapes {mismatched}"
        )
    model.load_state_dict(state)
