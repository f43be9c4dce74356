"""Gated (shifted) window attention: branch B of the LGS block.

Self-attention inside non-overlapping ``window x window`` windows (Swin), optionally shifted by half
a window with the usual mask so tokens attend only within their original region. The attention
output is gated by ``sigmoid(gate(x))`` before the output projection (Qiu et al. 2025, "Gated
Attention"): one gate per head (``"headwise"``) or per channel (``"elementwise"``), computed from
the same normalised input as the queries. The ``qkv`` and ``gate`` projections run as one matrix
product (:meth:`GatedWindowAttention.project`): the gate's few output columns alone make a GEMM that costs
as much as the whole ``qkv`` one.

Attention runs through ``F.scaled_dot_product_attention`` on 4-D ``(batch * windows, heads, tokens,
head_dim)`` views of the ``qkv`` projection, without a mask, so the fused flash kernel applies. With a
shift only the windows on the last row and column of the window grid hold tokens from more than one
region of the unshifted map (every other window's mask allows every pair): those few windows are
attended again with Swin's mask, ``(windows, 1, N, N)`` broadcast over frames and heads, and replace
the unmasked result. The shifted windows (the map rolled by ``-shift``, then cut) are one gather of
the map's tokens and the way back one more, by indices cached per map size (:func:`shifted_windows`).

For inference on CUDA (no gradients) one Triton kernel (:mod:`videostate.ssm.kernels.window_attention`) does
all of the above from the merged projection of the map itself: it reads each (shifted) window's tokens where
they lie, applies Swin's mask and the gate, and writes the result back in place, so no window, gather or
scatter is materialised. The fast-path switches of :mod:`videostate.ssm.dispatch`
(``VIDEOSTATE_DISABLE_FUSED=1``) turn it off.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..ssm.dispatch import inference_kernel

GateKind = Literal["headwise", "elementwise"]
ROW_ALIGNMENT = 8  # elements: the merged projection's rows are padded to this, so q, k, v views stay aligned for SDPA


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B, nH * nW, window * window, C)``; H and W must be multiples of ``window``."""
    return rearrange(x, "b (nh wh) (nw ww) c -> b (nh nw) (wh ww) c", wh=window, ww=window)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nH * nW, window * window, C) -> (B, H, W, C)``."""
    return rearrange(windows, "b (nh nw) (wh ww) c -> b (nh wh) (nw ww) c", nh=height // window, wh=window, ww=window)


@dataclasses.dataclass(frozen=True)
class ShiftedWindows:
    """Where the tokens of the shifted windows of one map size come from.

    Attributes:
        gather: ``(nW * N,)`` map positions ``y * W + x`` of the shifted windows' tokens, window by window
            (``N = window**2`` tokens each, row-major within the window).
        scatter: ``(H * W,)`` the inverse permutation: each map position's index in ``gather``.
        border: ``(nB,)`` the windows on the last row or column of the window grid, the only ones whose
            tokens come from more than one region of the unshifted map.
        allowed: ``(nB, 1, N, N)`` True where two tokens of a border window come from the same region
            (Swin's mask; every token may attend to itself).
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    border: torch.Tensor
    allowed: torch.Tensor


def shifted_windows(height: int, width: int, window: int, shift: int, device) -> ShiftedWindows:
    """The :class:`ShiftedWindows` of an ``height x width`` map rolled by ``-shift`` on both axes, cached per
    ``(height, width, window, shift, device)`` (shared by every batch size and channel count; the most recent
    sizes are kept)."""
    return _shifted_windows(height, width, window, shift, torch.device(device))


@functools.lru_cache(maxsize=32)
def _shifted_windows(height: int, width: int, window: int, shift: int, device: torch.device) -> ShiftedWindows:
    rolled_y = (torch.arange(height) + shift) % height  # the rolled map's row y is the map's row (y + shift)
    rolled_x = (torch.arange(width) + shift) % width
    positions = rolled_y[:, None] * width + rolled_x[None, :]
    gather = window_partition(positions[None, :, :, None], window).flatten()
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel())
    # Swin's regions of the rolled map: bands [0, -window), [-window, -shift), [-shift, end) on each axis.
    bands_y = torch.bucketize(torch.arange(height), torch.tensor([height - window, height - shift]), right=True)
    bands_x = torch.bucketize(torch.arange(width), torch.tensor([width - window, width - shift]), right=True)
    region = window_partition((bands_y[:, None] * 3 + bands_x[None, :])[None, :, :, None], window)[0, :, :, 0]
    grid = torch.arange(region.shape[0]).view(height // window, width // window)
    border = torch.cat([grid[:-1, -1], grid[-1]])
    ids = region[border]
    return ShiftedWindows(
        gather=gather.to(device),
        scatter=scatter.to(device),
        border=border.to(device),
        allowed=(ids[:, :, None] == ids[:, None, :])[:, None].to(device),
    )


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
        batch, height, width, _ = x.shape
        ws = self.window_size
        if height % ws or width % ws:
            raise ValueError(f"feature map {height}x{width} must be a multiple of window_size={ws} on both sides")
        shift = self.shift_size if min(height, width) > ws else 0
        kernels = inference_kernel("window_attention", x)
        if kernels is not None:
            attended = kernels.window_attention_triton(
                self.merged_projection(x), self.dim, self.num_heads, ws, shift, self.gate_kind == "headwise"
            )
            return self.proj(attended)
        shifted = shifted_windows(height, width, ws, shift, x.device) if shift else None
        if shifted is None:
            windows = window_partition(x, ws)  # (B, nW, N, C)
        else:
            tokens = rearrange(x, "b h w c -> b (h w) c")[:, shifted.gather]
            windows = rearrange(tokens, "b (w n) c -> b w n c", n=ws * ws)
        qkv, gate = self.project(windows)
        q, k, v = rearrange(qkv, "b w n (three h d) -> three (b w) h n d", three=3, h=self.num_heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "(b w) h n d -> b w n h d", b=batch)
        gate = torch.sigmoid(gate)  # (B, nW, N, h or C)
        if self.gate_kind == "headwise":
            gate = rearrange(gate, "b w n h -> b w n h 1")
        else:
            gate = rearrange(gate, "b w n (h d) -> b w n h d", h=self.num_heads)
        out = out * gate
        if shifted is not None:
            out[:, shifted.border] = self._attend_border_windows(q, k, v, shifted, batch) * gate[:, shifted.border]
        out = self.proj(rearrange(out, "b w n h d -> b w n (h d)"))
        if shifted is None:
            return window_reverse(out, ws, height, width)
        return rearrange(rearrange(out, "b w n c -> b (w n) c")[:, shifted.scatter], "b (h w) c -> b h w c", h=height)

    def merged_projection(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., 3C + gates + pad)``: ``self.qkv(x)`` then ``self.gate(x)`` from one matrix product
        with the two weights stacked (and zero rows up to a multiple of :data:`ROW_ALIGNMENT`)."""
        dim, gates = 3 * self.dim, self.gate.out_features
        pad = -(dim + gates) % ROW_ALIGNMENT
        weight = torch.cat([self.qkv.weight, self.gate.weight, self.gate.weight.new_zeros(pad, self.dim)])
        qkv_bias = self.qkv.bias if self.qkv.bias is not None else self.gate.bias.new_zeros(dim)
        bias = torch.cat([qkv_bias, self.gate.bias, self.gate.bias.new_zeros(pad)])
        return F.linear(x, weight, bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self.qkv(x), self.gate(x))``: views of one :meth:`merged_projection`."""
        dim, gates = 3 * self.dim, self.gate.out_features
        out = self.merged_projection(x)
        return out[..., :dim], out[..., dim : dim + gates]

    @staticmethod
    def _attend_border_windows(q, k, v, shifted: ShiftedWindows, batch: int) -> torch.Tensor:
        """Attention in the shifted map's border windows under Swin's mask: ``q, k, v (B * nW, h, N, d)`` ->
        ``(B, nB, N, h, d)``. The windows are batched as ``(nB, B * h)`` so the mask broadcasts."""

        def border(t):
            t = rearrange(t, "(b w) h n d -> b w h n d", b=batch)[:, shifted.border]
            return rearrange(t, "b w h n d -> w (b h) n d")

        out = F.scaled_dot_product_attention(border(q), border(k), border(v), attn_mask=shifted.allowed)
        return rearrange(out, "w (b h) n d -> b w n h d", b=batch)
