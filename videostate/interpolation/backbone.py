"""The hybrid backbone: LGS (local-global synergistic) blocks over both input frames.

An :class:`LGSBlock` works on the two frames' features batch-concatenated, ``(2B, H, W, C)`` (frame
0 first). Branch A (:class:`~.ss2d.InterleavedSS2D`, Mamba-2) scans the two frames interleaved and
so mixes them; branch B (:class:`~.attention.GatedWindowAttention`) attends locally within each
frame. In ``hybrid`` mode the branches are concatenated, merged by a 1x1 convolution and reweighted
by channel attention (ECA or squeeze-excitation); a single-branch mode applies channel attention to
its one branch. Then an MLP. Both sublayers are pre-norm residuals, or mHC connections
(:mod:`.mhc`) over ``mhc_streams`` residual streams (copies of the stage input, averaged at the
stage's end).

:class:`HybridBackbone` embeds each frame at full resolution and runs three stages (full, 1/2, 1/4
resolution by default) and returns, per stage, both frames' features stacked on channels. With
``scan_from_stage = k`` the first ``k`` stages run the attention branch alone, so the Mamba-2 scan
(whose cost per token is many times that of window attention) never sees the largest maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..ssm.dispatch import inference_kernel
from ..ssm.layer_norm import LayerNorm
from .attention import GatedWindowAttention
from .channel_attention import ECAB, ChannelAttention
from .config import BackboneMode, HybridVFIConfig
from .matvlm import MaTVLMReport, init_mamba2_from_attention
from .mhc import ManifoldHyperConnection, PlainResidual
from .ss2d import InterleavedSS2D


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` over the channels of ``(..., dim)`` tokens.

    For inference on CUDA (no gradients) :meth:`add_to` runs as one Triton kernel
    (:mod:`videostate.ssm.kernels.mlp`) that keeps the hidden activations on chip; the fast-path switches of
    :mod:`videostate.ssm.dispatch` (``VIDEOSTATE_DISABLE_FUSED=1``) turn it off.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``."""
        kernels = inference_kernel("mlp", x, residual)
        if kernels is not None:
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            return kernels.mlp_triton(
                x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, residual, dtype
            )
        return residual + self(x)


class LGSBlock(nn.Module):
    """One LGS block: ``(2B, H, W, C) -> (2B, H, W, C)``, or ``(n, 2B, H, W, C)`` streams with mHC.

    ``mode`` overrides ``config.backbone_mode`` for this block (the backbone passes
    :meth:`HybridVFIConfig.stage_mode`).
    """

    def __init__(
        self,
        config: HybridVFIConfig,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        first_in_stage: bool = False,
        last_in_stage: bool = False,
        mode: BackboneMode | None = None,
    ):
        super().__init__()
        self.mode = config.backbone_mode if mode is None else mode
        if self.mode not in ("hybrid", "mamba2_only", "gated_attn_only"):
            raise ValueError(f"mode must be 'hybrid', 'mamba2_only' or 'gated_attn_only'; got {self.mode!r}")
        self.norm1 = LayerNorm(dim)
        self.ss2d = (
            InterleavedSS2D(
                dim,
                d_state=config.mamba_d_state,
                d_conv=config.mamba_d_conv,
                expand=config.mamba_expand,
                headdim=config.mamba_headdim,
                chunk_size=config.mamba_chunk_size,
            )
            if self.mode != "gated_attn_only"
            else None
        )
        self.attn = (
            GatedWindowAttention(dim, num_heads, window_size, shift_size, gate=config.gate)
            if self.mode != "mamba2_only"
            else None
        )
        self.fuse = nn.Conv2d(2 * dim, dim, 1) if self.mode == "hybrid" else None
        self.channel_attention = ECAB(dim) if config.use_ecab else ChannelAttention(dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        if config.use_mhc:
            self.residual_mix = ManifoldHyperConnection(config.mhc_streams, mix_streams=not first_in_stage)
            self.residual_mlp = ManifoldHyperConnection(config.mhc_streams, mix_streams=not last_in_stage)
        else:
            self.residual_mix, self.residual_mlp = PlainResidual(), PlainResidual()

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The token-mixing sublayer (both branches, fusion, channel attention), without the residual."""
        h = self.norm1(x)
        if self.fuse is None:
            fused = self.ss2d(h) if self.ss2d is not None else self.attn(h)
        else:  # the 1x1 convolution as a linear layer over the channels-last branches
            weight = rearrange(self.fuse.weight, "o i 1 1 -> o i")
            fused = F.linear(torch.cat([self.ss2d(h), self.attn(h)], dim=-1), weight, self.fuse.bias)
        return rearrange(self.channel_attention(rearrange(fused, "b h w c -> b c h w")), "b c h w -> b h w c")

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.residual_mix, PlainResidual) and isinstance(self.residual_mlp, PlainResidual):
            x, h = self.norm2.add_and_norm(x, self.mix(x))  # the residual add and norm2 in one pass
            return self.mlp.add_to(x, h)
        return self.residual_mlp(self.residual_mix(x, self.mix), self.feed_forward)


class HybridBackbone(nn.Module):
    """Multi-scale features of a frame pair.

    ``forward(img0, img1)`` with images ``(B, 3, H, W)`` (H and W multiples of ``window * 2**i`` for
    every stage ``i``) returns a list over stages of ``(B, 2 * embed_dims[i], H / 2**i, W / 2**i)``:
    frame 0's features, then frame 1's.
    """

    def __init__(self, config: HybridVFIConfig):
        super().__init__()
        self.config = config
        dims = config.embed_dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, dims[0], 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dims[0], dims[0], 3, 1, 1),
            nn.LeakyReLU(0.1),
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                LGSBlock(
                    config,
                    dim,
                    heads,
                    window,
                    shift_size=0 if j % 2 == 0 else window // 2,
                    first_in_stage=j == 0,
                    last_in_stage=j == depth - 1,
                    mode=config.stage_mode(i),
                )
                for j in range(depth)
            )
            for i, (dim, depth, heads, window) in enumerate(
                zip(dims, config.depths, config.num_heads, config.window_sizes, strict=True)
            )
        )
        self.downsamplers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1), nn.LeakyReLU(0.1)) for i in range(len(dims) - 1)
        )
        self.to(memory_format=torch.channels_last)  # convolutions then run and return channels-last

    def required_multiple(self) -> int:
        return max(window * 2**i for i, window in enumerate(self.config.window_sizes))

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> list[torch.Tensor]:
        if img0.shape != img1.shape or img0.dim() != 4 or img0.shape[1] != 3:
            raise ValueError(
                f"img0 and img1 must both be (B, 3, H, W); got {tuple(img0.shape)} and {tuple(img1.shape)}"
            )
        height, width = img0.shape[-2:]
        for i, window in enumerate(self.config.window_sizes):
            if height % (window * 2**i) or width % (window * 2**i):
                raise ValueError(
                    f"HybridBackbone needs H and W divisible by window_size * 2**stage = {window * 2**i} "
                    f"(stage {i}); got {height}x{width} (HybridVFI pads automatically)"
                )
        # Channels-last convolutions: every stage's (2B, H, W, C) tokens are a contiguous view of their input.
        x = self.patch_embed(torch.cat([img0, img1], dim=0))  # (2B, C0, H, W)
        outputs = []
        for i, blocks in enumerate(self.stages):
            h = rearrange(x, "b c h w -> b h w c").contiguous()
            if self.config.use_mhc:
                h = repeat(h, "... -> n ...", n=self.config.mhc_streams)
            for block in blocks:
                h = block(h)
            if self.config.use_mhc:
                h = h.mean(dim=0)
            x = rearrange(h, "b h w c -> b c h w")
            outputs.append(torch.cat(x.chunk(2), dim=1))  # (f b) c h w -> b (f c) h w, staying channels-last
            if i < len(self.downsamplers):
                x = self.downsamplers[i](x)
        return outputs

    def init_mamba_from_attention(self) -> list[MaTVLMReport]:
        """MaTVLM initialisation of every hybrid block's Mamba-2 from its attention branch; one report
        per block, each listing what was copied and what could not be mapped."""
        if self.config.backbone_mode != "hybrid":
            raise ValueError(
                f"MaTVLM initialisation needs both branches (backbone_mode='hybrid'); got {self.config.backbone_mode!r}"
            )
        return [
            init_mamba2_from_attention(block.ss2d.mamba, block.attn, name=f"stages.{i}.{j}")
            for i, blocks in enumerate(self.stages)
            for j, block in enumerate(blocks)
            if block.ss2d is not None
        ]
