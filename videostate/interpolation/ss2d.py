"""Interleaved SS2D with a Mamba-2 (SSD) mixer: branch A of the LGS block (VFIMamba's cross-frame scan).

The two frames' feature maps are interleaved token by token into one sequence of length ``2 H W``,
``f0[p0], f1[p0], f0[p1], f1[p1], ...``, in four orders: row-major (H then W), column-major (W then
H), and both reversed. One :class:`videostate.ssm.Mamba2` runs over the four sequences (stacked in
the batch); the outputs are put back in pixel order, summed over the directions and split per frame.
The recurrent state thus alternates between the frames at every pixel, mixing them in time.

Differences from VFIMamba's ``SS2D`` (a Mamba-1 selective scan): the mixer is Mamba-2, whose short
convolution is the causal 1-D one along each sequence (VFIMamba uses a depthwise 3x3 conv before
scanning), and the four directions share the mixer's parameters (VFIMamba keeps per-direction
``x_proj``/``dt_proj``/``A``/``D``). Under autocast the mixer runs like any other layer (as mamba_ssm's
Mamba-2 does): projections, convolution and the scan's inputs and output in the autocast dtype, the scan's
states, decays and sums in float32. VFIMamba casts its scan's inputs (already rounded to half precision by
its projections) to float32; here the within-chunk products take them in half precision, with float32
accumulation.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..ssm import Mamba2

NUM_DIRECTIONS = 4
# Inference runs the four directions in one Mamba-2 call up to this many elements (tokens 4 * 2B * H * W times
# channels C), else one direction at a time, each in segments of at most a quarter of it with the Mamba-2 state
# carried from one to the next (exact: the streaming contract). A call's in_proj and convolution outputs take
# about 28 bytes per element in bfloat16 at 32 channels (452 columns per token): a 4K frame pair's
# full-resolution scan (67M tokens of 32 channels) would take 60 GB in one call. The 1080p full-resolution scan
# (16.7M tokens of 32) is one call.
MAX_INFERENCE_ELEMENTS = 2**29


def interleaved_scan(x: torch.Tensor) -> torch.Tensor:
    """``(2B, H, W, C)`` (frame 0 batch first, then frame 1) -> ``(4 * B, 2 H W, C)``.

    Directions, each a block of B sequences: row-major, column-major, row-major reversed, column-major reversed.
    """
    if x.dim() != 4 or x.shape[0] % 2:
        raise ValueError(f"x must have shape (2B, H, W, C) with frame 0 then frame 1; got {tuple(x.shape)}")
    pair = _pair(x)
    rows = rearrange(pair, "b h w f c -> b (h w f) c")
    cols = rearrange(pair, "b h w f c -> b (w h f) c")
    return torch.cat([rows, cols, rows.flip(1), cols.flip(1)], dim=0)


def interleaved_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse ordering of :func:`interleaved_scan`, summing the directions: ``(4 * B, 2 H W, C) -> (2B, H, W, C)``."""
    if y.dim() != 3 or y.shape[0] % NUM_DIRECTIONS or y.shape[1] != 2 * height * width:
        raise ValueError(f"y must have shape (4B, 2*{height}*{width}, C); got {tuple(y.shape)}")
    rows, cols, rows_rev, cols_rev = y.chunk(NUM_DIRECTIONS, dim=0)
    return _merge(rows + rows_rev.flip(1), cols + cols_rev.flip(1), height, width)


def _pair(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "(f b) h w c -> b h w f c", f=2)


def _merge(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Row-major and column-major sequences ``(B, 2 H W, C)``, each summed with its reversed scan ->
    ``(2B, H, W, C)``."""
    pair = rearrange(rows, "b (h w f) c -> b h w f c", h=height, w=width, f=2) + rearrange(
        cols, "b (w h f) c -> b h w f c", h=height, w=width, f=2
    )
    return rearrange(pair, "b h w f c -> (f b) h w c")


class InterleavedSS2D(nn.Module):
    """Cross-frame Mamba-2 over interleaved scans: ``(2B, H, W, C) -> (2B, H, W, C)``.

    Args:
        dim: channels. d_state, d_conv, expand, headdim, chunk_size: the :class:`~videostate.ssm.Mamba2`
        settings (``expand * dim`` must be a multiple of ``headdim``).
    """

    def __init__(
        self, dim: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 16, chunk_size: int = 256
    ):
        super().__init__()
        self.mamba = Mamba2(dim, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, chunk_size=chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        if torch.is_grad_enabled() or NUM_DIRECTIONS * x.numel() <= MAX_INFERENCE_ELEMENTS:
            return interleaved_merge(self.mamba(interleaved_scan(x)), height, width)
        # One direction at a time (the sequences are independent, so the result is the same).
        pair = _pair(x)
        rows = rearrange(pair, "b h w f c -> b (h w f) c")
        rows = self._scan_in_segments(rows) + self._scan_in_segments(rows.flip(1)).flip(1)
        cols = rearrange(pair, "b h w f c -> b (w h f) c")
        cols = self._scan_in_segments(cols) + self._scan_in_segments(cols.flip(1)).flip(1)
        return _merge(rows, cols, height, width)

    def _scan_in_segments(self, seq: torch.Tensor) -> torch.Tensor:
        """``self.mamba(seq)`` for ``seq (B, L, C)``, run over segments of at most ``MAX_INFERENCE_ELEMENTS / 4``
        elements with the state carried between them."""
        batch, _, channels = seq.shape
        length = max(1, MAX_INFERENCE_ELEMENTS // NUM_DIRECTIONS // (batch * channels))
        if seq.shape[1] <= length:
            return self.mamba(seq)
        device = seq.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else seq.dtype
        state = self.mamba.init_state(batch, device=seq.device, dtype=dtype)
        out = []
        for segment in seq.split(length, dim=1):
            y, state = self.mamba(segment, state)
            out.append(y)
        return torch.cat(out, dim=1)
