"""Configuration of :class:`~videostate.interpolation.HybridVFI`."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

BackboneMode = Literal["hybrid", "mamba2_only", "gated_attn_only"]


@dataclasses.dataclass
class HybridVFIConfig:
    """Settings of the hybrid Mamba2-Transformer interpolator.

    Attributes:
        phase: 1 = backbone + RefineNet (direct synthesis); 2 and 3 = with the flow estimator,
            two ContextNets and the context-aware RefineNet (phase 3 is phase 2's model trained on
            high-resolution data).
        embed_dims: channels of the backbone's stages; stage ``i`` runs at ``1 / 2**i`` resolution.
        depths: LGS blocks per stage (odd blocks use shifted windows).
        num_heads: attention heads per stage.
        window_sizes: attention window side per stage.
        mlp_ratio: hidden width of the blocks' MLP, relative to the stage width.
        backbone_mode: ``"hybrid"`` (both branches), ``"mamba2_only"`` or ``"gated_attn_only"``.
        scan_from_stage: the first stage whose blocks run the Mamba-2 branch; earlier stages run the
            attention branch alone (as ``"gated_attn_only"``). 0 (default, the seed's model) scans
            every stage, the full-resolution one included; 1 or 2 keep the scan, which costs far more
            per token than window attention, off the largest maps (VFIMamba scans only its 1/8 and
            1/16 stages). Needs ``backbone_mode="hybrid"`` when above 0.
        gate: gated attention's gate, ``"headwise"`` or ``"elementwise"``.
        use_ecab: fuse with ECA channel attention; False uses squeeze-excitation channel attention.
        use_mhc: manifold-constrained hyper-connections (``mhc_streams`` residual streams) instead
            of plain residuals.
        mhc_streams: residual streams with ``use_mhc``.
        mamba_d_state, mamba_d_conv, mamba_expand, mamba_headdim, mamba_chunk_size: the Mamba-2 branch.
        flow_channels: widths of the three IFBlocks of the flow estimator (coarse to fine).
        flow_scales: downscaling of the three IFBlocks (coarse to fine), at ``flow_scale=1``.
        context_channels: ContextNet width ``c`` (features ``c, 2c, 4c``).
        refine_channels: RefineNet decoder width ``c`` (``c`` and ``2c`` in its two up-steps).
    """

    phase: int = 1
    embed_dims: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (2, 4, 8)
    window_sizes: tuple[int, ...] = (8, 8, 8)
    mlp_ratio: float = 4.0
    backbone_mode: BackboneMode = "hybrid"
    scan_from_stage: int = 0
    gate: Literal["headwise", "elementwise"] = "headwise"
    use_ecab: bool = True
    use_mhc: bool = False
    mhc_streams: int = 4
    mamba_d_state: int = 64
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_headdim: int = 16
    mamba_chunk_size: int = 256
    flow_channels: tuple[int, int, int] = (240, 150, 90)
    flow_scales: tuple[int, int, int] = (4, 2, 1)
    context_channels: int = 32
    refine_channels: int = 32

    def __post_init__(self):
        for name in ("embed_dims", "depths", "num_heads", "window_sizes", "flow_channels", "flow_scales"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.phase not in (1, 2, 3):
            raise ValueError(f"phase must be 1, 2 or 3; got {self.phase!r}")
        n = len(self.embed_dims)
        if n != 3:
            raise ValueError(f"embed_dims must give 3 stages (the RefineNet decodes 3 scales); got {self.embed_dims}")
        for name in ("depths", "num_heads", "window_sizes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}); got {getattr(self, name)}")
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ValueError(f"num_heads {self.num_heads} must divide embed_dims {self.embed_dims} stage by stage")
        if self.backbone_mode not in ("hybrid", "mamba2_only", "gated_attn_only"):
            raise ValueError(
                f"backbone_mode must be 'hybrid', 'mamba2_only' or 'gated_attn_only'; got {self.backbone_mode!r}"
            )
        if not 0 <= self.scan_from_stage < n:
            raise ValueError(f"scan_from_stage must be a stage index in [0, {n}); got {self.scan_from_stage}")
        if self.scan_from_stage and self.backbone_mode != "hybrid":
            raise ValueError(
                "scan_from_stage > 0 runs the early stages on the attention branch alone, which needs "
                f"backbone_mode='hybrid'; got backbone_mode={self.backbone_mode!r}, "
                f"scan_from_stage={self.scan_from_stage}"
            )
        if self.use_mamba:
            for dim in self.embed_dims[self.scan_from_stage :]:
                if (self.mamba_expand * dim) % self.mamba_headdim:
                    raise ValueError(
                        f"mamba_expand * embed_dim must be a multiple of mamba_headdim={self.mamba_headdim}; "
                        f"got {self.mamba_expand} * {dim}"
                    )
        if self.use_mhc and self.mhc_streams < 2:
            raise ValueError(f"mhc_streams must be >= 2 with use_mhc; got {self.mhc_streams}")
        if len(self.flow_channels) != 3 or len(self.flow_scales) != 3:
            raise ValueError(
                f"flow_channels and flow_scales need 3 entries; got {self.flow_channels}, {self.flow_scales}"
            )
        if any(s < 1 for s in self.flow_scales):
            raise ValueError(f"flow_scales must be positive integers; got {self.flow_scales}")

    @property
    def use_flow(self) -> bool:
        return self.phase > 1

    @property
    def use_mamba(self) -> bool:
        return self.backbone_mode in ("hybrid", "mamba2_only")

    @property
    def use_attention(self) -> bool:
        return self.backbone_mode in ("hybrid", "gated_attn_only")

    def stage_mode(self, stage: int) -> BackboneMode:
        """The branches of stage ``stage``'s blocks: ``"gated_attn_only"`` before ``scan_from_stage``."""
        return "gated_attn_only" if stage < self.scan_from_stage else self.backbone_mode

    def pad_multiple(self, flow_scale: float = 1.0) -> int:
        """Input sides are padded to a multiple of this: every stage's map must tile into windows
        (``window * 2**i``) and, with flow, the coarsest IFBlock needs ``4 * scale`` (two stride-2 convs)."""
        multiple = 4  # the RefineNet and ContextNet halve the resolution twice
        for i, window in enumerate(self.window_sizes):
            multiple = math.lcm(multiple, window * 2**i)
        if self.use_flow:
            for s in self.flow_scales:
                multiple = math.lcm(multiple, 4 * flow_ifblock_scale(s, flow_scale))
        return multiple


def flow_ifblock_scale(scale: int, flow_scale: float) -> int:
    """The IFBlock downscaling used when the flow is estimated at ``flow_scale`` of the resolution."""
    value = scale / flow_scale
    if abs(value - round(value)) > 1e-9 or round(value) < 1:
        raise ValueError(f"flow_scale={flow_scale} must turn every flow scale into an integer >= 1; {scale} -> {value}")
    return round(value)
