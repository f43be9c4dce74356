"""VideoMambaDepth: a frozen teacher encoder, per-scale temporal Mamba modules and a trainable DPT decoder.

For each of the teacher's four feature maps ``f (B, N, C, h, w)``::

    z = SpatialPreMix(f)                         # depthwise 3x3 per frame
    t = temporal_tokenize(z) + PE(frame index)   # ((B*h*w), N, C), PE continues across chunks
    y = TemporalMambaScale(t, state)             # causal Mamba blocks along time
    f' = f + temporal_detokenize(Readout(y))     # W y / C + b, zero at the start

and the decoder turns ``f'`` into depth frame by frame. With the zero-initialised read-outs and the decoder
copied from the teacher, a fresh model reproduces the teacher exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from videostate.ssm import MambaState, StreamState
from videostate.ssm.dispatch import inference_kernel

from .teacher import DepthAnythingTeacher, check_rgb, resize_depth
from .temporal import (
    SpatialPreMix,
    TemporalMambaScale,
    TemporalScaleState,
    temporal_position_encoding,
)

if TYPE_CHECKING:
    from .fast_clip import DepthFastClip
    from .fast_step import DepthFastStep

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class TemporalReadout(nn.Linear):
    """The read-out of a temporal stream into a residual of the teacher features: ``y (..., C) -> W y / C + b``,
    with ``W`` and ``b`` zero at initialisation.

    The ``1 / C`` weight multiplier (the read-out parametrisation of muP) keeps the residual's growth under Adam
    independent of the width. Adam moves every weight by about the learning rate per step whatever the gradient's
    size, and the first updates of a zero matrix are rank one and aligned with its input, so ``(dW) y`` grows like
    ``lr * C * |y|``: at ``C = 384`` and ``lr = 1e-3`` a plain zero-initialised Linear makes the residual as large
    as the teacher's features within a few dozen steps, whatever the loss asks for. With the multiplier a step moves
    the residual by about ``lr * |y|``, the rate of the bias, at every scale.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels)
        self.multiplier = 1.0 / channels
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, self.weight * self.multiplier, self.bias)

    def frames(self, y: torch.Tensor, H: int, W: int, B: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """``temporal_detokenize(self(y), H, W, B)`` as a contiguous ``(B, N, C, H, W)`` tensor: ``y ((B*H*W), N, C)``;
        with ``base (B, N, C, H, W)`` the maps it is added to, ``base + that``.

        For inference on CUDA one Triton pass reads the token rows and writes the frames' maps with the base added
        (:mod:`videostate.ssm.kernels.token_readout`). Otherwise per stream one batched matrix product over the
        frames, ``W y_n^T / C + b`` with ``y_n^T (C, H*W)`` read in place, writes the frames' maps directly (no
        layout change after the product)."""
        if y.dim() != 3 or y.shape[0] != B * H * W or y.shape[2] != self.in_features:
            raise ValueError(
                f"y must have shape (B*H*W, N, C) with B*H*W={B * H * W}, C={self.in_features}; got {tuple(y.shape)}"
            )
        kernels = inference_kernel("token_readout", y, self.weight, *(() if base is None else (base,)))
        if kernels is not None and (base is None or base.dtype == y.dtype):
            return kernels.token_readout(y, self.weight * self.multiplier, self.bias, B, H, W, base)
        tokens = rearrange(y, "(b p) n c -> b n c p", b=B)
        frames, channels, positions = tokens.shape[1:]
        weight = (self.weight * self.multiplier).expand(frames, channels, channels)
        bias = self.bias[:, None].expand(frames, channels, positions)
        out = [torch.baddbmm(bias, weight, t) for t in tokens.unbind(0)]
        out = out[0][None] if B == 1 else torch.stack(out)
        out = rearrange(out, "b n c (h w) -> b n c h w", h=H, w=W)
        return out if base is None else base + out


@dataclasses.dataclass
class VideoMambaDepthConfig:
    """Temporal modules of :class:`VideoMambaDepth`.

    Attributes:
        num_blocks: Mamba blocks per feature scale, fine to coarse (two on the coarse scales).
        d_state: SSM state size of each Mamba.
        d_conv: width of each Mamba's causal convolution.
        expand: Mamba inner width as a multiple of the scale's channels.
        ffn_ratio: hidden width of each block's feed-forward layer as a multiple of the channels.
        premix_kernel_size: kernel of the depthwise spatial pre-mix convolution.
        max_period: longest period of the sinusoidal temporal position encoding, in frames.
        use_fast_path: use the fused GPU scans where available (the model is the same either way).
        use_temporal: ``False`` builds no temporal modules: the student is the teacher's encoder and a trainable
            decoder, frame by frame (the ablation baseline of the temporal blocks).
    """

    num_blocks: tuple[int, ...] = (1, 1, 2, 2)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    ffn_ratio: float = 2.0
    premix_kernel_size: int = 3
    max_period: float = 10000.0
    use_fast_path: bool = True
    use_temporal: bool = True

    def __post_init__(self):
        self.num_blocks = tuple(int(n) for n in self.num_blocks)
        if any(n < 1 for n in self.num_blocks):
            raise ValueError(f"num_blocks must all be >= 1; got {self.num_blocks}")
        for name in ("d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.ffn_ratio <= 0 or self.max_period <= 1:
            raise ValueError(f"ffn_ratio must be > 0 and max_period > 1; got {self.ffn_ratio}, {self.max_period}")

    @classmethod
    def from_dict(cls, data: dict) -> VideoMambaDepthConfig:
        """Strict: an unknown key is an error listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown VideoMambaDepthConfig keys {unknown}; valid keys are {sorted(names)}")
        return cls(**data)


@dataclasses.dataclass
class ScaleStreamState(StreamState):
    """One scale's temporal state in stream layout (batch first, so streams can be selected or reset).

    Attributes:
        conv_states: per block, ``(batch, h*w, d_inner, d_conv)``.
        ssm_states: per block, ``(batch, h*w, d_inner, d_state)``.
    """

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]

    @property
    def positions(self) -> int:
        return self.conv_states[0].shape[1]

    def tokens(self) -> TemporalScaleState:
        """The same values in the token layout of :class:`TemporalMambaScale` (batch ``batch*h*w``)."""
        return TemporalScaleState(
            [
                MambaState(rearrange(c, "b p d w -> (b p) d w"), rearrange(s, "b p d n -> (b p) d n"))
                for c, s in zip(self.conv_states, self.ssm_states, strict=True)
            ]
        )

    @classmethod
    def from_tokens(cls, state: TemporalScaleState, batch: int) -> ScaleStreamState:
        return cls(
            [rearrange(b.conv_state, "(b p) d w -> b p d w", b=batch) for b in state.blocks],
            [rearrange(b.ssm_state, "(b p) d n -> b p d n", b=batch) for b in state.blocks],
        )


@dataclasses.dataclass
class VideoMambaDepthState(StreamState):
    """Streaming state of :class:`VideoMambaDepth`.

    Attributes:
        frame_index: ``(batch,)`` long, the index of the next frame of each stream (the position encoding's
            offset, the seed's ``temporal_pos_offset``).
        scales: one :class:`ScaleStreamState` per feature scale, fine to coarse; empty until the first frame
            fixes the feature sizes (a stream keeps one frame size).
    """

    frame_index: torch.Tensor
    scales: list[ScaleStreamState]


class VideoMambaDepthOutput(NamedTuple):
    """``depth (B, N, 1, H, W)``; ``temporal``: per scale the temporal residual added to the teacher
    features, ``(B, N, C_i, h_i, w_i)`` (the per-frame read-out of the carried state); ``states``;
    ``head_output (B, N, 1, h, w)``: the decoder head's output before its final activation, at the network's
    resolution (``depth`` is its activation resized to the input); ``features``: the teacher's maps per scale,
    ``(B, N, C_i, h_i, w_i)``, before the temporal residuals."""

    depth: torch.Tensor
    temporal: list[torch.Tensor]
    states: VideoMambaDepthState
    head_output: torch.Tensor
    features: list[torch.Tensor]


class VideoMambaDepth(nn.Module):
    """Temporally consistent, streaming depth on top of a frozen teacher.

    Args:
        teacher: an object with ``encode_frame``, ``predict_depth``, ``network_size``, ``feature_channels``
            and ``build_decoder`` (see :mod:`videostate.depth.teacher`), e.g. :class:`DepthAnythingTeacher`.
        config: the temporal modules (default :class:`VideoMambaDepthConfig`).

    ``forward(rgb_clip (B, N, 3, H, W)) -> depth (B, N, 1, H, W)`` offline; ``forward(rgb_clip, states)``
    also returns the next states; ``step(rgb_frame (B, 3, H, W), states) -> (depth (B, 1, H, W), states)``.
    """

    def __init__(self, teacher: nn.Module, config: VideoMambaDepthConfig | None = None):
        super().__init__()
        self.config = config or VideoMambaDepthConfig()
        channels = list(teacher.feature_channels)
        if len(self.config.num_blocks) != len(channels):
            raise ValueError(
                f"config.num_blocks must give one count per teacher scale ({len(channels)} scales, channels "
                f"{channels}); got {self.config.num_blocks}"
            )
        self.teacher = teacher
        self.channels = channels
        cfg = self.config
        temporal_channels = channels if cfg.use_temporal else []
        self.premix = nn.ModuleList(SpatialPreMix(c, cfg.premix_kernel_size) for c in temporal_channels)
        self.temporal = nn.ModuleList(
            TemporalMambaScale(
                c,
                n,
                d_state=cfg.d_state,
                d_conv=cfg.d_conv,
                expand=cfg.expand,
                ffn_ratio=cfg.ffn_ratio,
                use_fast_path=cfg.use_fast_path,
            )
            for c, n in zip(temporal_channels, cfg.num_blocks, strict=False)
        )
        self.temporal_out = nn.ModuleList(TemporalReadout(c) for c in temporal_channels)
        self.decoder = teacher.build_decoder()
        self._offline_encodings: dict[tuple, torch.Tensor] = {}
        param = next(teacher.parameters())
        self.to(device=param.device, dtype=param.dtype)

    # ----------------------------------------------------------------------------------------- states

    def init_states(self, batch_size: int = 1, *, device=None, dtype=None) -> VideoMambaDepthState:
        """Fresh streams at frame 0; the per-scale states are created (zero) on the first frame."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        device = device or self.decoder.head.conv3.weight.device
        return VideoMambaDepthState(torch.zeros(batch_size, dtype=torch.long, device=device), [])

    def load_states(self, state_dict: dict[str, torch.Tensor]) -> VideoMambaDepthState:
        """Streams saved with ``states.state_dict()`` (at any point, even before the first frame), rebuilt on this
        model's device; a missing or unexpected key is an error naming it."""
        device = self.decoder.head.conv3.weight.device
        expected = ["frame_index"]
        if any(k.startswith("scales.") for k in state_dict):
            for i, n in enumerate(self.config.num_blocks if self.config.use_temporal else ()):
                expected += [f"scales.{i}.{kind}.{j}" for kind in ("conv_states", "ssm_states") for j in range(n)]
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise KeyError(f"not a VideoMambaDepthState of this model: missing keys {missing}, unexpected {unexpected}")
        scales = [
            ScaleStreamState(
                [state_dict[f"scales.{i}.conv_states.{j}"].to(device) for j in range(n)],
                [state_dict[f"scales.{i}.ssm_states.{j}"].to(device) for j in range(n)],
            )
            for i, n in enumerate(self.config.num_blocks)
            if f"scales.{i}.conv_states.0" in state_dict
        ]
        return VideoMambaDepthState(state_dict["frame_index"].to(device), scales)

    def _scale_state(self, states: VideoMambaDepthState, i: int, batch: int, positions: int, like: torch.Tensor):
        if not states.scales:
            return self.temporal[i].init_state(batch * positions, device=like.device, dtype=like.dtype)
        state = states.scales[i]
        if state.positions != positions:
            raise ValueError(
                f"states were made for a feature map of {state.positions} positions at scale {i}; this input gives "
                f"{positions} (a stream must keep one frame size; start a new stream with init_states)"
            )
        return state.tokens()

    def _check_states(self, states: VideoMambaDepthState, batch: int) -> None:
        if not isinstance(states, VideoMambaDepthState):
            raise TypeError(f"states must be a VideoMambaDepthState (from init_states); got {type(states).__name__}")
        if states.frame_index.shape != (batch,):
            raise ValueError(f"states are for {states.frame_index.shape[0]} streams; the input has batch {batch}")
        if states.scales and len(states.scales) != len(self.channels):
            raise ValueError(f"states must have {len(self.channels)} scales; got {len(states.scales)}")

    # ---------------------------------------------------------------------------------------- forward

    def encode(self, rgb_clip: torch.Tensor) -> list[torch.Tensor]:
        """``rgb_clip (B, N, 3, H, W)`` -> the teacher's maps per scale, ``(B, N, C_i, h_i, w_i)`` (no gradient)."""
        batch = rgb_clip.shape[0]
        feats = self.teacher.encode_frame(rearrange(rgb_clip, "b n c h w -> (b n) c h w"))
        return [rearrange(feats[i], "(b n) c h w -> b n c h w", b=batch) for i in range(len(self.channels))]

    def temporal_mix(
        self, feats: list[torch.Tensor], states: VideoMambaDepthState | None, *, add_features: bool = False
    ) -> tuple[list[torch.Tensor], VideoMambaDepthState | None]:
        """Per scale, the temporal residual ``(B, N, C_i, h_i, w_i)`` of ``feats`` given the carried states, and the
        next states. ``states=None`` runs offline from frame 0 and zero states without forming the next states
        (no zero state is allocated, no final state is written) and returns ``None`` for them. ``add_features``
        returns the mixed maps ``feats + residual`` instead, the add made in the read-out's pass."""
        batch, frames = feats[0].shape[:2]
        carry = states is not None
        if not self.config.use_temporal:
            residuals = list(feats) if add_features else [torch.zeros_like(f) for f in feats]
            return residuals, VideoMambaDepthState(states.frame_index + frames, []) if carry else None
        steps = torch.arange(frames, device=feats[0].device)
        positions = states.frame_index[:, None] + steps if carry else None
        residuals, new_scales = [], []
        for i, f in enumerate(feats):
            h, w = f.shape[-2:]
            if carry:
                pe = temporal_position_encoding(positions, f.shape[2], self.config.max_period).to(f)
            else:
                pe = self._offline_encoding(frames, f)
            tokens = self.premix[i].tokens(f, pe)
            if carry:
                y, scale_state = self.temporal[i](tokens, self._scale_state(states, i, batch, h * w, tokens))
                new_scales.append(ScaleStreamState.from_tokens(scale_state, batch))
            else:
                y = self.temporal[i].offline(tokens)
            residuals.append(self.temporal_out[i].frames(y, h, w, batch, f if add_features else None))
        return residuals, VideoMambaDepthState(states.frame_index + frames, new_scales) if carry else None

    def _offline_encoding(self, frames: int, feat: torch.Tensor) -> torch.Tensor:
        """The position encoding of frames ``0 .. frames - 1`` at ``feat``'s channels, dtype and device, ``(1, frames,
        C)``: computed once and kept, so an offline pass (and the graph a fast clip replays) runs no kernels for it.
        One made while a CUDA graph is being captured lives in the graph's memory and is not kept."""
        key = (frames, feat.shape[2], self.config.max_period, feat.dtype, feat.device)
        pe = self._offline_encodings.get(key)
        if pe is None:
            positions = torch.arange(frames, device=feat.device)[None]
            pe = temporal_position_encoding(positions, feat.shape[2], self.config.max_period).to(feat)
            if not (feat.is_cuda and torch.cuda.is_current_stream_capturing()):
                self._offline_encodings[key] = pe
        return pe

    def decode(self, feats: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Per-frame DPT decoding of ``(B, N, C_i, h_i, w_i)`` maps -> ``depth (B, N, 1, H, W)`` at ``image_size``."""
        return self._decode(feats, image_size)[0]

    def _decode(self, feats: list[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` and the head's output before its final activation, ``(B, N, 1, h, w)``."""
        batch = feats[0].shape[0]
        flat = [rearrange(f, "b n c h w -> (b n) c h w") for f in feats]
        raw = self.decoder(flat, self.teacher.network_size(*image_size), activate=False)
        depth = resize_depth(self.decoder.head.activate(raw), image_size)
        depth, raw = (rearrange(x, "(b n) 1 h w -> b n 1 h w", b=batch) for x in (depth, raw))
        return depth, raw

    def run(self, rgb_clip: torch.Tensor, states: VideoMambaDepthState | None = None) -> VideoMambaDepthOutput:
        """The clip ``rgb_clip (B, N, 3, H, W)`` in [0, 1] from ``states`` (fresh streams when ``None``):
        depth, the temporal residuals and the next states."""
        self._check_clip(rgb_clip, states)
        if states is None:
            states = self.init_states(rgb_clip.shape[0], device=rgb_clip.device)
        feats = self.encode(rgb_clip)
        residuals, next_states = self.temporal_mix(feats, states)
        depth, raw = self._decode([f + r for f, r in zip(feats, residuals, strict=True)], tuple(rgb_clip.shape[-2:]))
        return VideoMambaDepthOutput(depth, residuals, next_states, raw, feats)

    def forward(
        self, rgb_clip: torch.Tensor, states: VideoMambaDepthState | None = None, *, output_temporal: bool = False
    ):
        """``rgb_clip (B, N, 3, H, W)`` in [0, 1] -> ``depth (B, N, 1, H, W)``, plus the next states when
        ``states`` is given (chunked streaming; equal to one offline pass). ``output_temporal=True`` returns the
        whole :class:`VideoMambaDepthOutput` instead (training uses its temporal read-outs)."""
        if output_temporal:
            return self.run(rgb_clip, states)
        self._check_clip(rgb_clip, states)
        mixed, next_states = self.temporal_mix(self.encode(rgb_clip), states, add_features=True)
        depth = self.decode(mixed, tuple(rgb_clip.shape[-2:]))
        return depth if states is None else (depth, next_states)

    def _check_clip(self, rgb_clip: torch.Tensor, states: VideoMambaDepthState | None) -> None:
        check_rgb("rgb_clip", rgb_clip, frames=True)
        if states is not None:
            self._check_states(states, rgb_clip.shape[0])

    def step_features(
        self, feats: list[torch.Tensor], image_size: tuple[int, int], states: VideoMambaDepthState
    ) -> tuple[torch.Tensor, VideoMambaDepthState]:
        """One frame from already encoded maps ``(B, C_i, h_i, w_i)`` -> ``(depth (B, 1, H, W), next states)``."""
        batch = feats[0].shape[0]
        self._check_states(states, batch)
        if not self.config.use_temporal:
            depth = self.decode([f[:, None] for f in feats], image_size)[:, 0]
            return depth, VideoMambaDepthState(states.frame_index + 1, [])
        mixed, new_scales = [], []
        for i, f in enumerate(feats):
            h, w = f.shape[-2:]
            pe = temporal_position_encoding(states.frame_index, f.shape[1], self.config.max_period).to(f)
            tokens = self.premix[i].tokens(f[:, None], pe[:, None])[:, 0]
            y, scale_state = self.temporal[i].step(tokens, self._scale_state(states, i, batch, h * w, tokens))
            mixed.append(self.temporal_out[i].frames(y[:, None], h, w, batch, f[:, None])[:, 0])
            new_scales.append(ScaleStreamState.from_tokens(scale_state, batch))
        depth = self.decode([f[:, None] for f in mixed], image_size)[:, 0]
        return depth, VideoMambaDepthState(states.frame_index + 1, new_scales)

    def frame_features(self, rgb_frame: torch.Tensor) -> list[torch.Tensor]:
        """``rgb_frame (B, 3, H, W)`` in [0, 1] -> the teacher's maps ``(B, C_i, h_i, w_i)``, fine to coarse."""
        check_rgb("rgb_frame", rgb_frame)
        feats = self.teacher.encode_frame(rgb_frame)
        return [feats[i] for i in range(len(self.channels))]

    def step(self, rgb_frame: torch.Tensor, states: VideoMambaDepthState) -> tuple[torch.Tensor, VideoMambaDepthState]:
        """One frame ``rgb_frame (B, 3, H, W)`` in [0, 1] -> ``(depth (B, 1, H, W), next states)``.

        The step has no host synchronisation, so it can be captured in a CUDA graph: :meth:`fast_step`."""
        return self.step_features(self.frame_features(rgb_frame), tuple(rgb_frame.shape[-2:]), states)

    def fast_step(self) -> DepthFastStep:
        """``fast(rgb_frame, states)``: the values of :meth:`step`, replayed from CUDA graphs (see
        :class:`~videostate.depth.fast_step.DepthFastStep`)."""
        from .fast_step import DepthFastStep

        return DepthFastStep(self)

    def fast_clip(self) -> DepthFastClip:
        """``fast(rgb_clip)``: the values of ``model(rgb_clip)``, replayed from a CUDA graph per clip shape (see
        :class:`~videostate.depth.fast_clip.DepthFastClip`)."""
        from .fast_clip import DepthFastClip

        return DepthFastClip(self)

    # ------------------------------------------------------------------------------------ save / load

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (temporal config and teacher config) and ``model.safetensors`` (all weights,
        teacher included, so the folder is self-contained)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": "videomamba_depth",
            "config": dataclasses.asdict(self.config),
            "teacher": self.teacher.export_config(),
        }
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device=None, dtype=None) -> VideoMambaDepth:
        """Load a folder written by :meth:`save_pretrained`; a missing or unexpected weight is an error."""
        path = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a VideoMambaDepth folder: {name} is missing")
        data = json.loads((path / CONFIG_NAME).read_text())
        if data.get("model_type") != "videomamba_depth":
            raise ValueError(
                f"{path / CONFIG_NAME} has model_type {data.get('model_type')!r}; expected 'videomamba_depth'"
            )
        teacher = DepthAnythingTeacher.from_exported_config(data["teacher"])
        model = cls(teacher, VideoMambaDepthConfig.from_dict(data["config"]))
        load_strict(model, load_file(str(path / WEIGHTS_NAME)), source=str(path / WEIGHTS_NAME))
        return model.to(device=device, dtype=dtype)


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` that names every missing / unexpected / mis-shaped key in a ValueError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match {type(module).__name__}: missing keys {missing}, unexpected keys "
            f"{unexpected}, wrong shapes {shapes}"
        )
    module.load_state_dict(state, strict=True)
