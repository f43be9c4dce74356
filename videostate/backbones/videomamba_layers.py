"""Building blocks of VideoMamba: tubelet patch embedding, stochastic depth, the residual block.

The block is the official (mamba_ssm) prenorm block with VideoMamba's stochastic depth::

    residual = residual + drop_path(hidden)      (hidden itself in the first block)
    hidden   = mixer(norm(residual))

``fused_add_norm=True`` adds and normalises in one op computed in float32 (dispatched, so a fused GPU
kernel runs where one is registered); ``False`` is the official unfused path: add in the tensors'
dtype, cast to the norm's dtype, normalise. Both give the same model up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ssm import Mamba, MambaState, RMSNorm, rms_norm
from ..ssm.validation import compute_dtype


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class PatchEmbed(nn.Module):
    """``(B, C, T, H, W) -> (B, D, T // k, H // p, W // p)`` by a Conv3d with kernel = stride = ``(k, p, p)``.

    ``tubelet_size`` is ``k`` (the official ``kernel_size``); ``grid_size`` is ``(H // p, W // p)``.
    """

    def __init__(self, img_size=224, patch_size=16, kernel_size=1, in_chans=3, embed_dim=192):
        super().__init__()
        self.img_size = pair(img_size)
        self.patch_size = pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.tubelet_size = kernel_size
        self.proj = nn.Conv3d(
            in_chans,
            embed_dim,
            kernel_size=(kernel_size, *self.patch_size),
            stride=(kernel_size, *self.patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero whole samples with probability ``drop_prob`` and scale the
    kept ones by ``1 / (1 - drop_prob)``; the identity in evaluation."""

    def __init__(self, drop_prob: float):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1); got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def make_norm(dim: int, eps: float, rms: bool) -> nn.Module:
    """RMSNorm (key ``weight``) or LayerNorm (``weight``, ``bias``), as the official ``rms_norm`` flag."""
    return RMSNorm(dim, eps=eps) if rms else nn.LayerNorm(dim, eps=eps)


def layer_norm_add(x, weight, bias, residual, eps, prenorm, residual_in_fp32):
    """LayerNorm counterpart of :func:`videostate.ssm.rms_norm` (mamba_ssm's ``layer_norm_fn``):
    ``s = x + residual`` and its LayerNorm computed in float32; output in ``x``'s dtype."""
    dtype = compute_dtype(x.dtype)
    total = x.to(dtype) if residual is None else x.to(dtype) + residual.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    out = F.layer_norm(total, (total.shape[-1],), weight.to(dtype), bias, eps).to(x.dtype)
    if not prenorm:
        return out
    residual_dtype = (residual if residual is not None else x).dtype
    if residual_in_fp32:
        residual_dtype = torch.promote_types(residual_dtype, torch.float32)
    return out, total.to(residual_dtype)


def add_norm(
    norm: nn.Module,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    *,
    drop_path: nn.Module,
    fused: bool,
    residual_in_fp32: bool,
    prenorm: bool,
):
    """``residual + drop_path(hidden)`` (``hidden`` alone when there is no residual yet), normalised.

    Returns the normalised tensor in ``hidden``'s dtype, and with ``prenorm`` also the new residual.
    """
    if residual is not None:
        hidden = drop_path(hidden)
    if fused:
        if isinstance(norm, RMSNorm):
            return rms_norm(hidden, norm.weight, None, residual, norm.eps, prenorm, residual_in_fp32)
        return layer_norm_add(hidden, norm.weight, norm.bias, residual, norm.eps, prenorm, residual_in_fp32)
    residual = hidden if residual is None else residual + hidden
    out = norm(residual.to(norm.weight.dtype))
    if not prenorm:
        return out
    if residual_in_fp32:
        residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
    return out, residual


class VideoMambaBlock(nn.Module):
    """Add -> norm -> Mamba mixer, with stochastic depth on the incoming branch.

    ``forward(hidden (B, L, D), residual (B, L, D) | None, state=None)`` returns ``(hidden, residual)``,
    plus the mixer's ``next_state`` when ``state`` (a :class:`~videostate.ssm.MambaState`) is given.
    """

    def __init__(
        self,
        dim: int,
        mixer: Mamba,
        norm: nn.Module,
        drop_path: float = 0.0,
        fused_add_norm: bool = True,
        residual_in_fp32: bool = True,
    ):
        super().__init__()
        self.fused_add_norm = fused_add_norm
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None = None,
        state: MambaState | None = None,
        use_checkpoint: bool = False,
    ):
        hidden_states, residual = add_norm(
            self.norm,
            hidden_states,
            residual,
            drop_path=self.drop_path,
            fused=self.fused_add_norm,
            residual_in_fp32=self.residual_in_fp32,
            prenorm=True,
        )
        args = (hidden_states,) if state is None else (hidden_states, state)
        if use_checkpoint:
            out = checkpoint(self.mixer, *args, use_reentrant=False)
        else:
            out = self.mixer(*args)
        if state is None:
            return out, residual
        hidden_states, next_state = out
        return hidden_states, residual, next_state
