"""Loading the official VideoMamba checkpoints into :mod:`videostate.backbones.videomamba` models.

Accepted: plain state dicts (a ``.pth``/``.pt`` file, a ``.safetensors`` file, or a dict), as released
for the video models (``video_sm`` classifiers: ``norm_f``, ``head``; ``video_mm`` / masked
pretraining: ``norm``, ``clip_decoder``) and, unwrapped, the ImageNet ones. What is adapted, and
reported in the returned :class:`LoadReport`:

- ``patch_embed.proj.weight`` of an image checkpoint (2D) is inflated to the 3D tubelet kernel
  (centre frame, as the official loader); its ``head`` is dropped and the model keeps its own head
  and (zero) temporal table.
- ``temporal_pos_embedding`` is interpolated linearly from ``ckpt_num_frame // kernel_size`` entries to
  the model's; ``pos_embed`` bicubically (cls slot kept) when the patch grid differs.
- the final norm is renamed between the two layouts (``norm_f`` <-> ``norm``).
- keys no model here holds are dropped: ``clip_decoder.*`` (masked-pretraining decoder) and
  ``head.*`` when the model has no classifier.
- ``pool_norm`` (absent from pretraining checkpoints) keeps its initialisation, with a warning.

Anything else that does not match is an error listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

FINAL_NORMS = ("norm_f", "norm")
DROPPED_PREFIXES = ("clip_decoder.",)


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_checkpoint` adapted.

    Attributes:
        resized: key -> how it was reshaped (inflation, interpolation).
        renamed: checkpoint key -> model key.
        dropped: checkpoint keys no part of the model holds.
        initialised: model keys the checkpoint lacks by design, kept at their initialisation.
    """

    resized: dict[str, str] = dataclasses.field(default_factory=dict)
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    dropped: list[str] = dataclasses.field(default_factory=list)
    initialised: list[str] = dataclasses.field(default_factory=list)


def read_state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """A state dict from a mapping, a ``.safetensors`` file or a ``torch.save`` file (read on CPU,
    tensors only). A ``{"model": ...}`` / ``{"module": ...}`` wrapper is an error saying how to unwrap."""
    if isinstance(source, Mapping):
        state_dict = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} is not a file")
        if path.suffix == ".safetensors":
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a checkpoint must hold a state dict; got {type(state_dict).__name__}")
    for wrapper in ("model", "module"):
        if isinstance(state_dict.get(wrapper), Mapping):
            raise ValueError(
                f"the checkpoint is wrapped as {{{wrapper!r}: state_dict, ...}} (keys {sorted(state_dict)}); "
                f"pass the plain state dict: load_checkpoint(model, torch.load(path)[{wrapper!r}], ...)"
            )
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise TypeError(f"a state dict maps names to tensors; these entries are not tensors: {not_tensors}")
    return state_dict


def inflate_weight(weight_2d: torch.Tensor, time_dim: int, center: bool = True) -> torch.Tensor:
    """``(out, in, p, p) -> (out, in, time_dim, p, p)``: the 2D kernel at the centre frame (zeros
    elsewhere), or spread evenly over the frames with ``center=False``."""
    if center:
        weight_3d = weight_2d.new_zeros(weight_2d.shape[0], weight_2d.shape[1], time_dim, *weight_2d.shape[2:])
        weight_3d[:, :, time_dim // 2] = weight_2d
        return weight_3d
    return weight_2d[:, :, None].repeat(1, 1, time_dim, 1, 1) / time_dim


def interpolate_temporal(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(1, T, D) -> (1, length, D)``, linear, ``align_corners=False``, computed in float32."""
    resized = F.interpolate(
        rearrange(table.float(), "1 t d -> 1 d t"), size=(length,), mode="linear", align_corners=False
    )
    return rearrange(resized, "1 d t -> 1 t d").to(table.dtype)


def interpolate_spatial(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + s*s, D) -> (1, 1 + gh*gw, D)``: the square patch grid resized bicubically
    (``align_corners=False``, float32), the cls slot kept."""
    side = math.isqrt(pos_embed.shape[1] - 1)
    if side * side != pos_embed.shape[1] - 1:
        raise ValueError(f"pos_embed must hold a cls slot and a square patch grid; got {pos_embed.shape[1]} positions")
    patches = rearrange(pos_embed[:, 1:].float(), "1 (h w) d -> 1 d h w", h=side)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = rearrange(patches, "1 d h w -> 1 (h w) d").to(pos_embed.dtype)
    return torch.cat((pos_embed[:, :1], patches), dim=1)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    *,
    ckpt_num_frame: int | None = None,
    center: bool = True,
) -> LoadReport:
    """Load an official VideoMamba checkpoint into ``model`` (a ``VisionMamba`` or ``VideoMambaEncoder``).

    Args:
        path_or_state_dict: a plain state dict or a file holding one.
        ckpt_num_frame: frames the checkpoint was trained with; required for a video checkpoint (one
            with ``temporal_pos_embedding``), and must agree with that table's length.
        center: how a 2D (image) patch kernel is inflated, see :func:`inflate_weight`.
    """
    state_dict = read_state_dict(path_or_state_dict)
    target = model.state_dict()
    report = LoadReport()
    tubelet = model.patch_embed.tubelet_size
    is_image = state_dict.get("patch_embed.proj.weight", torch.empty(0, 0, 0, 0, 0)).dim() == 4

    for key in list(state_dict):
        if key.startswith(DROPPED_PREFIXES) or (key.startswith("head.") and (is_image or key not in target)):
            report.dropped.append(key)
            del state_dict[key]
    _rename_final_norm(state_dict, model.final_norm_name, report)

    if is_image:
        key = "patch_embed.proj.weight"
        state_dict[key] = inflate_weight(state_dict[key], target[key].shape[2], center)
        report.resized[key] = f"inflated 2D -> 3D over {target[key].shape[2]} frames (center={center})"
        report.initialised += ["temporal_pos_embedding"] + [k for k in target if k.startswith("head.")]
    elif "temporal_pos_embedding" in state_dict:
        _resize_temporal(state_dict, target, ckpt_num_frame, tubelet, report)
    if "pos_embed" in state_dict and state_dict["pos_embed"].shape != target["pos_embed"].shape:
        old = state_dict["pos_embed"].shape[1] - 1
        state_dict["pos_embed"] = interpolate_spatial(state_dict["pos_embed"], model.patch_embed.grid_size)
        report.resized["pos_embed"] = f"bicubic {old} -> {model.patch_embed.num_patches} patches"
    if "pool_norm.weight" in target and not any(k.startswith("pool_norm.") for k in state_dict):
        report.initialised += ["pool_norm.weight", "pool_norm.bias"]

    _check_keys(state_dict, target, allowed_missing=set(report.initialised))
    model.load_state_dict(state_dict, strict=False)
    if report.initialised:
        warnings.warn(f"the checkpoint has no {report.initialised}; kept at their initialisation", stacklevel=2)
    logger.info("loaded VideoMamba checkpoint: %s", report)
    return report


def _rename_final_norm(state_dict: dict, name: str, report: LoadReport) -> None:
    other = next(n for n in FINAL_NORMS if n != name)
    if any(k.startswith(f"{name}.") for k in state_dict):
        return
    for key in [k for k in state_dict if k.startswith(f"{other}.")]:
        new = name + key[len(other) :]
        state_dict[new] = state_dict.pop(key)
        report.renamed[key] = new


def _resize_temporal(state_dict, target, ckpt_num_frame, tubelet, report) -> None:
    table = state_dict["temporal_pos_embedding"]
    if ckpt_num_frame is None:
        raise ValueError(
            "ckpt_num_frame is required for a video checkpoint: the number of frames it was trained "
            f"with (its temporal_pos_embedding has {table.shape[1]} entries, kernel_size={tubelet})"
        )
    if ckpt_num_frame // tubelet != table.shape[1]:
        raise ValueError(
            f"ckpt_num_frame={ckpt_num_frame} gives {ckpt_num_frame // tubelet} temporal positions "
            f"(kernel_size={tubelet}), but the checkpoint's temporal_pos_embedding has {table.shape[1]}"
        )
    length = target["temporal_pos_embedding"].shape[1]
    if length != table.shape[1]:
        state_dict["temporal_pos_embedding"] = interpolate_temporal(table, length)
        report.resized["temporal_pos_embedding"] = f"linear {table.shape[1]} -> {length} positions"


def _check_keys(state_dict: dict, target: dict, allowed_missing: set[str]) -> None:
    missing = sorted(set(target) - set(state_dict) - allowed_missing)
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(target[k].shape)}"
        for k in sorted(set(state_dict) & set(target))
        if state_dict[k].shape != target[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    message = (
        f"checkpoint does not match the model: missing keys {missing}, unexpected keys {unexpected}, "
        f"mismatched shapes {mismatched}"
    )
    if any(m.startswith("head.") for m in mismatched):
        message += ". To train a new classifier, drop the checkpoint's head.* entries before loading"
    prefix = _common_prefix(missing, unexpected)
    if prefix:
        message += (
            f". Its keys carry the prefix {prefix!r}; pass "
            f"{{k.removeprefix({prefix!r}): v for k, v in state_dict.items() if k.startswith({prefix!r})}}"
        )
    raise KeyError(message)


def _common_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """The prefix that turns unexpected keys into the missing ones (``"backbone."``), if one does."""
    pool = set(unexpected)
    for key in missing:
        for candidate in unexpected:
            if candidate.endswith("." + key):
                prefix = candidate[: -len(key)]
                if all(prefix + k in pool for k in missing):
                    return prefix
    return None
