"""Gated (shifted) window attention: branch B of the LGS block.

Self-attention inside non-overlapping ``window x window`` windows (Swin), optionally shifted by half
a window with the usual mask so tokens attend only within their original region. The attention
output is gated by ``sigmoid(gate(x))`` before the output projection (Qiu et al. 2025, "Gated
Attention"): one gate per head (``"headwise"``) or per channel (``"elementwise"``), computed from
the same normalised input as the queries. Attention runs through
``F.scaled_dot_product_attention`` on 4-D ``(batch, heads, tokens, head_dim)`` tensors (the fused
flash / memory-efficient kernels take nothing else): unshifted windows are batched as
``(B * nW, heads)``; shifted windows as ``(nW, B * heads)``, so the per-window additive mask
``(nW, 1, N, N)`` broadcasts over frames and heads without being copied.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GateKind = Literal["headwise", "elementwise"]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B, nH * nW, window * window, C)``; H and W must be multiples of ``window``."""
    return rearrange(x, "b (nh wh) (nw ww) c -> b (nh nw) (wh ww) c", wh=window, ww=window)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nH * nW, window * window, C) -> (B, H, W, C)``."""
    return rearrange(windows, "b (nh nw) (wh ww) c -> b (nh wh) (nw ww) c", nh=height // window, wh=window, ww=window)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Boolean ``(nH * nW, window**2, window**2)`` mask, True where two tokens of a window after a cyclic
    shift by ``-shift`` came from the same region of the unshifted map (Swin's mask). Every token is
    allowed to attend to itself, so no row is all False."""
    region = torch.zeros(height, width, dtype=torch.long, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[hs, ws] = label
            label += 1
    ids = window_partition(region[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    return ids[:, :, None] == ids[:, None, :]


class GatedWindowAttention(nn.Module):
    """Window multi-head self-attention with an output gate: ``(B, H, W, C) -> (B, H, W, C)``.

    Args:
        dim: channels C. num_heads: heads (must divide ``dim``). window_size: window side.
        shift_size: cyclic shift (0 or ``window_size // 2``); ignored (no shift) when the map is no
            larger than one window.
        gate: ``"headwise"`` (one sigmoid gate per head) or ``"elementwise"`` (one per channel).
        qkv_bias: bias in the fused ``qkv`` projection (rows ordered q, k, v; heads ``(h d)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        gate: GateKind = "headwise",
        qkv_bias: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}); got {shift_size}")
        if gate not in ("headwise", "elementwise"):
            raise ValueError(f"gate must be 'headwise' or 'elementwise'; got {gate!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.window_size, self.shift_size, self.gate_kind = window_size, shift_size, gate
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.gate = nn.Linear(dim, num_heads if gate == "headwise" else dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, H, W, C={self.dim}); got {tuple(x.shape)}")
        _, height, width, _ = x.shape
        ws = self.window_size
        if height % ws or width % ws:
            raise ValueError(f"feature map {height}x{width} must be a multiple of window_size={ws} on both sides")
        shift = self.shift_size if min(height, width) > ws else 0
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws)  # (B, nW, N, C)
        batch = windows.shape[0]
        q, k, v = rearrange(self.qkv(windows), "b w n (three h d) -> three b w h n d", three=3, h=self.num_heads)
        if shift:
            allowed = shifted_window_mask(height, width, ws, shift, device=x.device)[:, None]  # (nW, 1, N, N)
            mask = torch.zeros(allowed.shape, device=x.device, dtype=q.dtype).masked_fill_(~allowed, float("-inf"))
            q, k, v = (rearrange(t, "b w h n d -> w (b h) n d") for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = rearrange(out, "w (b h) n d -> b w h n d", b=batch)
        else:
            q, k, v = (rearrange(t, "b w h n d -> (b w) h n d") for t in (q, k, v))
            out = rearrange(F.scaled_dot_product_attention(q, k, v), "(b w) h n d -> b w h n d", b=batch)
        gate = torch.sigmoid(self.gate(windows))  # (B, nW, N, h or C)
        if self.gate_kind == "headwise":
            out = out * rearrange(gate, "b w n h -> b w h n 1")
        else:
            out = out * rearrange(gate, "b w n (h d) -> b w h n d", h=self.num_heads)
        out = self.proj(rearrange(out, "b w h n d -> b w n (h d)"))
        out = window_reverse(out, ws, height, width)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out
