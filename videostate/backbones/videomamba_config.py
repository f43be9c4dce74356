"""The ``vision_encoder`` configuration of :func:`~videostate.backbones.videomamba.build_videomamba`.

:class:`VideoMambaConfig` holds the fields of the official video_mm ``vision_encoder`` section, with
the official defaults. :meth:`VideoMambaConfig.parse` reads it from a ``SimpleNamespace``, a dict
(JSON, YAML, EasyDict) or a dataclass, either the ``vision_encoder`` section itself or a config that
has one. Unknown fields are an error that lists the accepted ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

POOL_TYPES = ("cls", "avg", "cls+avg")


@dataclasses.dataclass
class VideoMambaConfig:
    """Fields of the encoder built by ``build_videomamba``.

    Attributes:
        channels: input channels (3 for RGB). Required: there is no ``in_chans`` fallback.
        img_size: input height and width (an int, or ``(height, width)``).
        patch_size: spatial patch size; ``kernel_size`` is the temporal one (the tubelet).
        depth, embed_dim: number of blocks and model width (Ti 24/192, S 24/384, M 32/576).
        drop_path_rate: stochastic depth; block ``i`` uses ``linspace(0, rate, depth)[i - 1]``.
        ssm_cfg: keyword arguments of every :class:`~videostate.ssm.Mamba` mixer (``d_state``,
            ``expand``, ``use_fast_path`` ...).
        norm_epsilon, rms_norm: the blocks' norm (RMSNorm, or LayerNorm when ``rms_norm=False``).
        fused_add_norm: add the residual and normalise in one op in float32 (a fused kernel where one
            is available); otherwise add, cast to the norm's dtype, normalise (the official unfused path).
        residual_in_fp32: keep the residual stream in float32.
        bimamba: bidirectional mixers (VideoMamba's default).
        pool_type: readout of ``forward``: ``"cls"``, ``"avg"`` or ``"cls+avg"``.
        num_frames: frames of the temporal position table (``num_frames // kernel_size`` entries).
        use_checkpoint, checkpoint_num: gradient checkpointing of the first ``checkpoint_num`` mixers.
        pretrained: path of an official checkpoint (a plain state dict) loaded after building.
        ckpt_num_frame: frames the checkpoint was trained with; required with ``pretrained``.
        add_pool_norm: ``forward`` returns ``(x_vis, x_pool)`` with a LayerNorm on the pooled feature;
            otherwise ``x_vis`` only.
        keep_temporal: pooled features per frame ``(B, T, C)`` instead of per clip ``(B, 1, C)``.
        clamp_temporal_pos: positions past the temporal table reuse its last entry instead of raising.
    """

    channels: int
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    depth: int = 24
    embed_dim: int = 192
    drop_path_rate: float = 0.0
    ssm_cfg: dict | None = None
    norm_epsilon: float = 1e-5
    fused_add_norm: bool = True
    rms_norm: bool = True
    residual_in_fp32: bool = True
    bimamba: bool = True
    pool_type: str = "cls+avg"
    kernel_size: int = 1
    num_frames: int = 8
    use_checkpoint: bool = False
    checkpoint_num: int = 0
    pretrained: str | None = None
    ckpt_num_frame: int | None = None
    add_pool_norm: bool = True
    keep_temporal: bool = False
    clamp_temporal_pos: bool = False

    def __post_init__(self):
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"vision_encoder.pool_type must be one of {POOL_TYPES}; got {self.pool_type!r}")
        if self.pretrained is not None and self.ckpt_num_frame is None:
            raise ValueError(
                "vision_encoder.ckpt_num_frame is required when vision_encoder.pretrained is set: the "
                f"number of frames {self.pretrained!r} was trained with (8 for the released checkpoints)"
            )
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)

    @classmethod
    def parse(cls, config: Any) -> VideoMambaConfig:
        """Read a config: this class, a ``SimpleNamespace``, a mapping or another dataclass, either the
        ``vision_encoder`` section or an object holding one under ``vision_encoder``."""
        if isinstance(config, cls):
            return config
        fields = _as_dict(config)
        if "vision_encoder" in fields:
            fields = _as_dict(fields["vision_encoder"])
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(accepted))
        if "channels" not in fields:
            hint = " (`in_chans` is not read)" if "in_chans" in fields else ""
            raise ValueError(f"vision_encoder.channels is required: the number of input channels, 3 for RGB{hint}")
        if unknown:
            raise ValueError(f"unknown vision_encoder fields {unknown}; accepted fields are {accepted}")
        return cls(**fields)

    def model_kwargs(self) -> dict:
        """Constructor arguments of :class:`~videostate.backbones.videomamba.VideoMambaEncoder`."""
        fields = dataclasses.asdict(self)
        del fields["pretrained"], fields["ckpt_num_frame"]
        return fields


def _as_dict(config: Any) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, SimpleNamespace):
        return vars(config).copy()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    raise TypeError(f"config must be a SimpleNamespace, a mapping or a dataclass instance; got {type(config).__name__}")
