"""Per-scale temporal modules: spatial pre-mix, per-pixel tokens along time, positional encoding, Mamba blocks.

Each feature map ``(batch, frames, C, H, W)`` becomes ``batch*H*W`` independent sequences of ``frames``
tokens (``temporal_tokenize``), as Video Depth Anything's temporal attention does; a causal Mamba scans
each one, so a stream can be continued chunk by chunk or frame by frame from the carried state.

For inference the maps are large (DA2-S at 518x518: 700k sequences of 48 channels on the finest scale), so
the blocks are written to pass over them as few times as they can: the pre-mix convolution, the position encoding
and the token layout are one pass (:meth:`SpatialPreMix.tokens`), each residual add is fused with the pass after
it (:meth:`LayerNorm.add_and_norm`, the fused feed-forward kernel), and on CUDA the LayerNorms and feed-forward
layers run as Triton kernels, the Mamba keeps its tensors token-major (:mod:`videostate.ssm.kernels.mamba_tokens`),
and a block's end, from the Mamba's output projection to the feed-forward layers' residual add, is one pass
(:mod:`videostate.ssm.kernels.block_tail`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from einops import rearrange
from torch import nn

from videostate.ssm import Mamba, MambaState, StreamState
from videostate.ssm import layer_norm as norm
from videostate.ssm.dispatch import inference_kernel
from videostate.ssm.mamba import linear_tokens


def temporal_tokenize(feat: torch.Tensor) -> torch.Tensor:
    """``feat (B, N, C, H, W)`` -> ``tokens ((B*H*W), N, C)``: one time sequence per pixel."""
    if feat.dim() != 5:
        raise ValueError(f"feat must have shape (B, N, C, H, W); got {tuple(feat.shape)}")
    return rearrange(feat, "b n c h w -> (b h w) n c")


def temporal_detokenize(tokens: torch.Tensor, H: int, W: int, B: int) -> torch.Tensor:
    """The exact inverse of :func:`temporal_tokenize`: ``((B*H*W), N, C)`` -> ``(B, N, C, H, W)``."""
    if tokens.dim() != 3 or tokens.shape[0] != B * H * W:
        raise ValueError(f"tokens must have shape (B*H*W, N, C) with B*H*W={B * H * W}; got {tuple(tokens.shape)}")
    return rearrange(tokens, "(b h w) n c -> b n c h w", b=B, h=H, w=W)


def tokenize_with_position(feat: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """``temporal_tokenize(feat + pe[..., None, None])`` as a contiguous ``((B*H*W), N, C)`` tensor:
    ``feat (B, N, C, H, W)``, ``pe (B or 1, N, C)``.

    Without gradients the sum is written straight in token layout, one pass over the map (the add and the
    layout change that the first LayerNorm would otherwise make are the same pass)."""
    if feat.dim() != 5 or pe.dim() != 3 or pe.shape[1:] != feat.shape[1:3]:
        raise ValueError(
            f"feat must have shape (B, N, C, H, W) and pe (B or 1, N, C); got {tuple(feat.shape)}, {tuple(pe.shape)}"
        )
    if torch.is_grad_enabled() and (feat.requires_grad or pe.requires_grad):
        return temporal_tokenize(feat + pe[..., None, None]).contiguous()
    b, n, c, h, w = feat.shape
    tokens = feat.new_empty(b, h, w, n, c)
    torch.add(rearrange(feat, "b n c h w -> b h w n c"), pe[:, None, None].to(feat.dtype), out=tokens)
    return rearrange(tokens, "b h w n c -> (b h w) n c")


class SpatialPreMix(nn.Module):
    """Depthwise 3x3 convolution over ``(B*N, C, H, W)``, mixing each pixel with its neighbours before the
    per-pixel temporal scan."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.conv.in_channels:
            raise ValueError(f"x must have shape (B*N, {self.conv.in_channels}, H, W); got {tuple(x.shape)}")
        return self.conv(x)

    def tokens(self, feat: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """``tokenize_with_position(premix(feat), pe)``: ``feat (B, N, C, H, W)``, ``pe (B or 1, N, C)`` ->
        ``((B*H*W), N, C)``. For inference on CUDA a 3x3 pre-mix is one Triton pass that convolves, adds the
        encoding and writes the token layout (:mod:`videostate.ssm.kernels.depthwise_tokens`)."""
        kernels = inference_kernel("depthwise_tokens", feat, pe)
        if kernels is not None and self.conv.kernel_size == (kernels.KERNEL_SIZE,) * 2:
            return kernels.depthwise_tokens(feat, self.conv.weight, self.conv.bias, pe.to(feat.dtype))
        batch = feat.shape[0]
        z = rearrange(self(rearrange(feat, "b n c h w -> (b n) c h w")), "(b n) c h w -> b n c h w", b=batch)
        return tokenize_with_position(z, pe)


def temporal_position_encoding(positions: torch.Tensor, channels: int, max_period: float) -> torch.Tensor:
    """Sinusoidal encoding of frame indices: ``positions (...)`` -> ``(..., channels)``, with
    ``[sin(t w_i), cos(t w_i)]`` for ``w_i = max_period^(-i/half)`` (a zero last channel when odd).

    It depends on the absolute frame index only, so a stream continued from a carried ``frame_index``
    gets the same encoding as one offline pass."""
    half = channels // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float64) / max(half, 1)
    )
    angles = positions.to(torch.float64)[..., None] * freqs
    pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if channels % 2:
        pe = torch.cat([pe, torch.zeros_like(pe[..., :1])], dim=-1)
    return pe


class LayerNorm(norm.LayerNorm):
    """``nn.LayerNorm(C)`` over the last dimension, one Triton pass for inference on CUDA.

    :class:`videostate.ssm.layer_norm.LayerNorm` takes the one-pass kernel for inference under autocast;
    this one also for inference without autocast (a model cast to bfloat16, as the benchmarks and the command
    line run it), in the input's dtype. PyTorch's kernel runs a thread block per row, slow for the depth
    model's hundreds of thousands of short rows. ``VIDEOSTATE_DISABLE_FUSED=1`` or gradients give
    ``nn.LayerNorm``.
    """

    @staticmethod
    def plain_inference(x: torch.Tensor, *others: torch.Tensor) -> bool:
        """Whether ``x`` (and ``others``) are normalised by the Triton kernels: inference without autocast on CUDA."""
        autocast = torch.is_autocast_enabled(x.device.type)
        return not torch.is_grad_enabled() and not autocast and norm.can_use_layer_norm_kernel(x, *others)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain_inference(x):
            return norm.layer_norm_kernels().layer_norm_triton(x, self.weight, self.bias, self.eps)
        return super().forward(x)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, norm(s))`` with ``s = x + residual``; one pass for inference on CUDA."""
        if x.shape == residual.shape and self.plain_inference(x, residual):
            return norm.layer_norm_kernels().add_layer_norm_triton(x, residual, self.weight, self.bias, self.eps)
        return super().add_and_norm(x, residual)


def with_update(x: torch.Tensor, update: torch.Tensor | None) -> torch.Tensor:
    """``x + update``, or ``x`` when the update was already added (``None``)."""
    return x if update is None else x + update


class MambaBlock(nn.Module):
    """``x + Mamba(LayerNorm(x))`` then ``x + FFN(LayerNorm(x))`` with ``FFN = Linear-SiLU-Linear``.

    ``(batch, L, C) -> (batch, L, C)``; the Mamba is causal, so the block streams exactly.
    """

    def __init__(
        self,
        C: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        ffn_ratio: float = 2.0,
        use_fast_path: bool = True,
    ):
        super().__init__()
        self.norm1 = LayerNorm(C)
        self.mamba = Mamba(C, d_state=d_state, d_conv=d_conv, expand=expand, use_fast_path=use_fast_path)
        self.norm2 = LayerNorm(C)
        hidden = max(1, round(ffn_ratio * C))
        self.ffn = nn.Sequential(nn.Linear(C, hidden), nn.SiLU(), nn.Linear(hidden, C))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MambaState:
        return self.mamba.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: MambaState | None = None):
        """``x (batch, L, C)`` -> ``(batch, L, C)``, plus the next state when ``state`` is given."""
        x, update, next_state = self.residual_stream(x, None, state)
        x = with_update(x, update)
        return x if state is None else (x, next_state)

    def residual_stream(
        self, x: torch.Tensor, update: torch.Tensor | None, state: MambaState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, MambaState | None]:
        """The block on the input ``x + update`` (``update=None``: on ``x``), returning its output as
        ``(x', update')`` with the last residual add, ``x' + update'``, left to the caller (``update' = None``:
        none is left, the fused feed-forward kernel made it), and the next state (``None`` without ``state``). A
        chain of blocks hands ``(x', update')`` on, so every residual add is fused with the pass after it."""
        if update is None:
            h = self.norm1(x)
        else:
            x, h = self.norm1.add_and_norm(x, update)
        y, next_state = self.mamba.gated_scan(h, state)
        tail = self._tail_kernels(x)
        if tail is not None:
            return self._fused_tail(tail, y, x), None, next_state
        x, h = self.norm2.add_and_norm(x, linear_tokens(y, self.mamba.out_proj))
        kernels = self._ffn_kernels(x, h)
        if kernels is not None:
            return self._fused_ffn(kernels, x, h), None, next_state
        return x, self.ffn(h), next_state

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token ``(batch, C)`` -> ``(batch, C)`` and the next state."""
        mixed, next_state = self.mamba.step(self.norm1(x), state)
        x, h = self.norm2.add_and_norm(x, mixed)
        kernels = self._ffn_kernels(x, h)
        return (x + self.ffn(h) if kernels is None else self._fused_ffn(kernels, x, h)), next_state

    def _tail_kernels(self, x: torch.Tensor):
        """The block-tail kernel module (:mod:`videostate.ssm.kernels.block_tail`: the Mamba's output projection,
        the residual add, ``norm2`` and the feed-forward layers in one pass) for plain inference on CUDA at widths
        it takes; ``None`` otherwise (gradients, autocast, the CPU, wide tokens)."""
        kernels = inference_kernel("block_tail", x)
        usable = kernels is not None and kernels.supports(x.shape[-1]) and self.norm2.plain_inference(x)
        return kernels if usable else None

    def _fused_tail(self, kernels, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``s + ffn(norm2(s))`` with ``s = x + mamba.out_proj(y)``, in one pass."""
        out_proj, fc1, fc2 = self.mamba.out_proj, self.ffn[0], self.ffn[2]
        return kernels.block_tail_triton(
            y, out_proj.weight, out_proj.bias, x, self.norm2.weight, self.norm2.bias, self.norm2.eps,
            fc1.weight, fc1.bias, fc2.weight, fc2.bias, activation="silu",
        )  # fmt: skip

    def _ffn_kernels(self, x: torch.Tensor, h: torch.Tensor):
        """The fused MLP kernel module (:mod:`videostate.ssm.kernels.mlp`) for inference on CUDA at widths it takes;
        ``None`` otherwise."""
        kernels = inference_kernel("mlp", x, h)
        return kernels if kernels is not None and kernels.supports(h.shape[-1]) else None

    def _fused_ffn(self, kernels, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``x + self.ffn(h)`` in one pass: the hidden activations never reach memory."""
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        fc1, fc2 = self.ffn[0], self.ffn[2]
        return kernels.mlp_triton(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias, x, dtype, activation="silu")


@dataclasses.dataclass
class TemporalScaleState(StreamState):
    """State of one :class:`TemporalMambaScale`, one :class:`~videostate.ssm.MambaState` per block, each of
    batch ``tokens = B*H*W`` (``conv_state (tokens, d_inner, d_conv)``, ``ssm_state (tokens, d_inner, d_state)``)."""

    blocks: list[MambaState]


class TemporalMambaScale(nn.Module):
    """``num_blocks`` :class:`MambaBlock` s applied in sequence along time: ``z_seq (tokens, N, C)``."""

    def __init__(self, C: int, num_blocks: int, **block_kwargs):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1; got {num_blocks}")
        self.blocks = nn.ModuleList(MambaBlock(C, **block_kwargs) for _ in range(num_blocks))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> TemporalScaleState:
        """Zero state for ``batch_size`` token sequences (``B*H*W``)."""
        return TemporalScaleState([b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks])

    def forward(
        self, z_seq: torch.Tensor, state: TemporalScaleState | None = None
    ) -> tuple[torch.Tensor, TemporalScaleState]:
        """``z_seq (tokens, N, C)`` -> ``(y_seq (tokens, N, C), new_state)``; ``state=None`` starts from zeros."""
        if state is None:
            state = self.init_state(z_seq.shape[0], device=z_seq.device, dtype=z_seq.dtype)
        if len(state.blocks) != len(self.blocks):
            raise ValueError(f"state must have {len(self.blocks)} block states; got {len(state.blocks)}")
        new_blocks, update = [], None
        for block, block_state in zip(self.blocks, state.blocks, strict=True):
            z_seq, update, block_state = block.residual_stream(z_seq, update, block_state)
            new_blocks.append(block_state)
        return with_update(z_seq, update), TemporalScaleState(new_blocks)

    def offline(self, z_seq: torch.Tensor) -> torch.Tensor:
        """``z_seq (tokens, N, C)`` -> ``y_seq``: :meth:`forward` from a zero state without forming the next state."""
        update = None
        for block in self.blocks:
            z_seq, update, _ = block.residual_stream(z_seq, update)
        return with_update(z_seq, update)

    def step(self, z: torch.Tensor, state: TemporalScaleState) -> tuple[torch.Tensor, TemporalScaleState]:
        """One frame ``z (tokens, C)`` -> ``(tokens, C)`` and the next state."""
        new_blocks = []
        for block, block_state in zip(self.blocks, state.blocks, strict=True):
            z, block_state = block.step(z, block_state)
            new_blocks.append(block_state)
        return z, TemporalScaleState(new_blocks)
