"""VideoMamba (OpenGVLab): a bidirectional Mamba over the spatio-temporal tokens of a clip, with the
official modules, state-dict keys and numerics, on CPU and GPU, offline and chunk by chunk.

Two models share one trunk (:class:`VideoMambaTrunk`):

- :class:`VisionMamba` - the official video classifier (``video_sm``): ``forward(x) -> logits``,
  ``forward_features(x)`` the cls token after the final norm ``norm_f``; factories
  :func:`videomamba_tiny` (192/24), :func:`videomamba_small` (384/24), :func:`videomamba_middle` (576/32).
- :class:`VideoMambaEncoder` - the video_mm backbone built by :func:`build_videomamba` from a
  ``vision_encoder`` config: final norm ``norm``, pooled readout ``pool_norm(cls | avg | cls+avg)``.

Tokens (official order): each frame's ``H/p * W/p`` patches get ``pos_embed[1:]`` and the frame's
``temporal_pos_embedding``; the sequence is frame-major after one cls token (``cls_token +
pos_embed[0]``, no temporal embedding): ``L = 1 + (T / kernel_size) * num_patches``.

Streaming: ``init_state(batch)`` gives one ``(conv_state (B, D_inner, d_conv), ssm_state (B, D_inner,
d_state))`` per layer; ``forward(x_chunk, ssm_state=state, temporal_pos_offset=k)`` continues the
sequence, with ``k`` the chunk's first tubelet (``chunk_start // kernel_size``). Only the first chunk
(``k == 0``) carries the cls token, so the chunks concatenated form exactly the offline sequence.
The forward scan direction continues from the carried state, so with ``bimamba=False`` chunked
equals offline. The backward direction of ``bimamba=True`` reads the future: at token ``i`` it
summarises tokens ``i..L-1``, which a stream has not seen yet. It therefore runs over each chunk alone
(from a zero state); a single chunk holding the whole clip equals offline, smaller chunks give a
model that looks ahead only to the end of its chunk. Positions past the temporal table are an error,
or reuse its last entry with ``clamp_temporal_pos=True``. For inference on CUDA, the encoder's
``fast_step()`` replays each chunk from a CUDA graph, and ``fast()`` a whole clip.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from ..ssm import Mamba, StackState
from ..ssm.cuda_graph import GraphedForward, GraphedTraining
from .videomamba_checkpoint import LoadReport, load_checkpoint
from .videomamba_config import POOL_TYPES, VideoMambaConfig
from .videomamba_fast_step import VideoMambaFastStep
from .videomamba_layers import DropPath, PatchEmbed, VideoMambaBlock, add_norm, make_norm

__all__ = [
    "SIZES",
    "LoadReport",
    "VideoMambaConfig",
    "VideoMambaEncoder",
    "VideoMambaTrunk",
    "VisionMamba",
    "build_videomamba",
    "load_checkpoint",
    "videomamba_middle",
    "videomamba_small",
    "videomamba_tiny",
]

SIZES = {"tiny": (192, 24), "small": (384, 24), "middle": (576, 32)}
"""``(embed_dim, depth)`` of the released sizes."""

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class VideoMambaTrunk(nn.Module):
    """Embedding, the stack of bidirectional Mamba blocks and the final add + norm.

    Subclasses name the final norm (``final_norm_name``) and add the readout. ``self.config`` keeps the
    constructor arguments, which :meth:`save_pretrained` writes to ``config.json``.
    """

    final_norm_name: str

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        channels: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ssm_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        fused_add_norm: bool = True,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        bimamba: bool = True,
        kernel_size: int = 1,
        num_frames: int = 8,
        use_checkpoint: bool = False,
        checkpoint_num: int = 0,
        clamp_temporal_pos: bool = False,
    ):
        super().__init__()
        if num_frames % kernel_size:
            raise ValueError(f"num_frames={num_frames} must be a multiple of kernel_size={kernel_size}")
        if not 0 <= checkpoint_num <= depth:
            raise ValueError(f"checkpoint_num must be in [0, depth={depth}]; got {checkpoint_num}")
        self.embed_dim = self.num_features = self.d_model = embed_dim
        self.channels = channels
        self.fused_add_norm = fused_add_norm
        self.residual_in_fp32 = residual_in_fp32
        self.use_checkpoint = use_checkpoint
        self.checkpoint_num = checkpoint_num
        self.clamp_temporal_pos = clamp_temporal_pos

        self.patch_embed = PatchEmbed(img_size, patch_size, kernel_size, channels, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // kernel_size, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        # Block i gets the rate of block i - 1 of linspace(0, rate, depth): the official schedule.
        rates = [0.0, *torch.linspace(0, drop_path_rate, depth).tolist()]
        self.layers = nn.ModuleList(
            VideoMambaBlock(
                embed_dim,
                Mamba(embed_dim, layer_idx=i, bimamba=bimamba, **(ssm_cfg or {})),
                make_norm(embed_dim, norm_epsilon, rms_norm),
                drop_path=rates[i],
                fused_add_norm=fused_add_norm,
                residual_in_fp32=residual_in_fp32,
            )
            for i in range(depth)
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.add_module(self.final_norm_name, make_norm(embed_dim, norm_epsilon, rms_norm))

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self, self.final_norm_name)

    def init_weights(self) -> None:
        """The official initialisation, in its order: every Linear ``trunc_normal(std=0.02)`` with zero
        bias (the dt biases included), LayerNorms one/zero, ``pos_embed`` ``trunc_normal(std=0.02)``,
        then each ``out_proj`` Kaiming-uniform scaled by ``1 / sqrt(depth)``. ``cls_token`` and the
        temporal table stay zero; convolutions and ``A_log``/``D`` keep their own initialisation."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(len(self.layers))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> StackState:
        """Zero streaming state: one :class:`~videostate.ssm.MambaState` per layer."""
        return StackState([layer.mixer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers])

    def embed(self, x: torch.Tensor, temporal_pos_offset: int = 0) -> torch.Tensor:
        """``x (B, C, T, H, W)`` -> tokens ``(B, [1 +] (T / k) * num_patches, D)``, the cls token first
        when ``temporal_pos_offset == 0``."""
        frames = x.shape[2] // self.patch_embed.tubelet_size
        temporal_rows = self._temporal_positions(temporal_pos_offset, frames)
        return self.embed_with_rows(x, temporal_rows, with_cls=temporal_pos_offset == 0)

    def embed_with_rows(self, x: torch.Tensor, temporal_rows: torch.Tensor, with_cls: bool) -> torch.Tensor:
        """:meth:`embed` with the chunk's temporal embeddings given, ``temporal_rows (1, T / k, D)``, and the cls
        token first when ``with_cls``."""
        x = rearrange(self.patch_embed(x), "b d t h w -> b t (h w) d")
        x = x + self.pos_embed[:, None, 1:]
        x = x + temporal_rows[:, :, None]
        x = rearrange(x, "b t n d -> b (t n) d")
        if with_cls:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat((cls, x), dim=1)
        return self.pos_drop(x)

    def forward_tokens(self, x: torch.Tensor, ssm_state: StackState | None = None, temporal_pos_offset: int = 0):
        """Every token after the final norm: ``x (B, C, T, H, W)`` -> ``(B, [1 +] (T / k) * num_patches, D)``
        (the cls token first on the first chunk), plus ``next_state`` when ``ssm_state`` is given."""
        self._check_input(x, ssm_state, temporal_pos_offset)
        return self.mix_tokens(self.embed(x, temporal_pos_offset), ssm_state)

    def mix_tokens(self, hidden: torch.Tensor, ssm_state: StackState | None = None):
        """The blocks and the final add + norm: tokens ``(B, L, D)`` -> ``(B, L, D)``, plus ``next_state`` when
        ``ssm_state`` is given."""
        residual, next_states = None, []
        for i, layer in enumerate(self.layers):
            use_checkpoint = self.use_checkpoint and i < self.checkpoint_num
            if ssm_state is None:
                hidden, residual = layer(hidden, residual, use_checkpoint=use_checkpoint)
            else:
                hidden, residual, layer_state = layer(
                    hidden, residual, ssm_state.layers[i], use_checkpoint=use_checkpoint
                )
                next_states.append(layer_state)
        out = add_norm(
            self.final_norm,
            hidden,
            residual,
            drop_path=self.drop_path,
            fused=self.fused_add_norm,
            residual_in_fp32=self.residual_in_fp32,
            prenorm=False,
        )
        return out if ssm_state is None else (out, StackState(next_states))

    def _temporal_positions(self, offset: int, frames: int) -> torch.Tensor:
        """Rows ``offset .. offset + frames`` of the temporal table, ``(1, frames, D)``."""
        table = self.temporal_pos_embedding
        if offset + frames <= table.shape[1]:
            return table[:, offset : offset + frames]
        self.check_temporal_range(offset, frames)
        index = torch.arange(offset, offset + frames, device=table.device).clamp(max=table.shape[1] - 1)
        return table[:, index]

    def check_temporal_range(self, offset: int, frames: int) -> None:
        """Positions ``offset .. offset + frames - 1`` past the temporal table are an error unless
        ``clamp_temporal_pos``."""
        table = self.temporal_pos_embedding
        if offset + frames > table.shape[1] and not self.clamp_temporal_pos:
            raise ValueError(
                f"temporal positions {offset}..{offset + frames - 1} (temporal_pos_offset={offset}, "
                f"{frames} tubelets) run past the temporal_pos_embedding table of {table.shape[1]} "
                "entries (num_frames // kernel_size); build with a larger num_frames (checkpoints are "
                "interpolated on load) or set clamp_temporal_pos=True to reuse the last entry"
            )

    def _check_input(self, x, ssm_state, temporal_pos_offset) -> None:
        height, width = self.patch_embed.img_size
        k = self.patch_embed.tubelet_size
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, C, T, H, W)=(*, {self.channels}, *, {height}, {width}); got {got}")
        _, channels, frames, h, w = x.shape
        if channels != self.channels or (h, w) != (height, width) or frames == 0 or frames % k:
            raise ValueError(
                f"x must have shape (B, C, T, H, W)=(*, {self.channels}, T, {height}, {width}) with T a "
                f"positive multiple of kernel_size={k}; got {tuple(x.shape)}"
            )
        if isinstance(temporal_pos_offset, bool) or not isinstance(temporal_pos_offset, int) or temporal_pos_offset < 0:
            raise ValueError(f"temporal_pos_offset must be a non-negative int (tubelets); got {temporal_pos_offset!r}")
        if temporal_pos_offset > 0 and ssm_state is None:
            raise ValueError(
                f"temporal_pos_offset={temporal_pos_offset} continues a stream and needs ssm_state, the "
                "state returned by the previous chunk (start with init_state(batch_size))"
            )
        if ssm_state is not None and (
            not isinstance(ssm_state, StackState) or len(ssm_state.layers) != len(self.layers)
        ):
            got = f"{len(ssm_state.layers)} layers" if isinstance(ssm_state, StackState) else type(ssm_state).__name__
            raise ValueError(f"ssm_state must come from init_state(): {len(self.layers)} layers; got {got}")

    def fast(self) -> GraphedForward:
        """``fast(x)``: the values of ``model(x)`` for inference over whole clips (no state), replayed from a CUDA
        graph recorded once per clip shape (:class:`~videostate.ssm.cuda_graph.GraphedForward`; off CUDA the model
        runs eagerly). Moving or casting the model afterwards needs a new one."""
        return GraphedForward(self, self, "model.fast()")

    def fast_train(self) -> GraphedTraining:
        """``train(x)``: ``model(x)`` for training over whole clips, its forward and backward replayed from CUDA
        graphs recorded once per clip shape (:class:`~videostate.ssm.cuda_graph.GraphedTraining`; off CUDA the model
        runs eagerly): ``loss_fn(train(x)).backward()`` and the optimiser's step as usual. Moving or casting the model
        afterwards needs a new one."""
        return GraphedTraining(self, "model.fast_train()")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (class, constructor arguments, dtype) and ``model.safetensors``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"model_type": type(self).__name__, "torch_dtype": str(self.cls_token.dtype), **self.config}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides):
        """Load a folder written by :meth:`save_pretrained`; ``overrides`` replace config fields that do
        not change the weights (``use_checkpoint``, ``drop_path_rate``, ``keep_temporal`` ...)."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path} must be a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
        config = json.loads((path / CONFIG_NAME).read_text())
        model_type = config.pop("model_type", None)
        if model_type != cls.__name__:
            raise ValueError(f"{path} holds a {model_type}; load it with {model_type}.from_pretrained")
        dtype = getattr(torch, config.pop("torch_dtype").removeprefix("torch."))
        model = cls(**{**config, **overrides}).to(dtype)
        state_dict = load_file(str(path / WEIGHTS_NAME))
        missing = sorted(set(model.state_dict()) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(model.state_dict()))
        if missing or unexpected:
            raise KeyError(
                f"{path / WEIGHTS_NAME} does not match {cls.__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        model.load_state_dict(state_dict)
        return model


class VisionMamba(VideoMambaTrunk):
    """The official VideoMamba video classifier: ``x (B, C, T, H, W) -> logits (B, num_classes)``.

    Arguments are the official constructor's; ``drop_rate`` drops tokens after the embedding and
    ``fc_drop_rate`` the feature before ``head`` (``num_classes=0`` leaves no head).
    """

    final_norm_name = "norm_f"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        channels: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ssm_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        fused_add_norm: bool = True,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        bimamba: bool = True,
        kernel_size: int = 1,
        num_frames: int = 8,
        fc_drop_rate: float = 0.0,
        use_checkpoint: bool = False,
        checkpoint_num: int = 0,
    ):
        self_config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__(
            img_size,
            patch_size,
            depth,
            embed_dim,
            channels,
            drop_rate,
            drop_path_rate,
            ssm_cfg,
            norm_epsilon,
            fused_add_norm,
            rms_norm,
            residual_in_fp32,
            bimamba,
            kernel_size,
            num_frames,
            use_checkpoint,
            checkpoint_num,
        )
        self.config = self_config
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T, H, W)`` -> the cls token after the final norm, ``(B, D)``."""
        return self.forward_tokens(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T, H, W)`` -> ``(B, num_classes)``."""
        return self.head(self.head_drop(self.forward_features(x)))


class VideoMambaEncoder(VideoMambaTrunk):
    """The video_mm VideoMamba backbone (``PretrainVideoMamba`` without its CLIP distillation decoder).

    ``forward(x, ssm_state=None, temporal_pos_offset=0, keep_temporal=None)``:

    - ``add_pool_norm=True``: ``(x_vis (B, (T/k) * num_patches, D), x_pool)``, patch tokens only, with
      ``x_pool = pool_norm(readout)``: ``cls`` -> ``(B, 1, D)``; ``avg``/``cls+avg`` -> ``(B, 1, D)``, or
      ``(B, T/k, D)`` per frame with ``keep_temporal``.
    - ``add_pool_norm=False``: ``x_vis`` with the cls token first on the first chunk.
    - with ``ssm_state``: the same plus ``next_state`` last.

    On later chunks (``temporal_pos_offset > 0``) there is no cls token, so only ``pool_type='avg'``
    can pool them.

    Two departures from the official code, both where it cannot run or is wrong: a clip shorter than
    the temporal table uses the table's first rows (the official model requires exactly
    ``num_frames``), and ``keep_temporal`` groups tokens by tubelet (the official ``view(B, T, -1, C)``
    groups by input frame, which mixes frames when ``kernel_size > 1``; the same for the released
    ``kernel_size=1`` models).
    """

    final_norm_name = "norm"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        channels: int = 3,
        drop_path_rate: float = 0.0,
        ssm_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        fused_add_norm: bool = True,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        bimamba: bool = True,
        pool_type: str = "cls+avg",
        kernel_size: int = 1,
        num_frames: int = 8,
        use_checkpoint: bool = False,
        checkpoint_num: int = 0,
        add_pool_norm: bool = True,
        keep_temporal: bool = False,
        clamp_temporal_pos: bool = False,
    ):
        self_config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}; got {pool_type!r}")
        super().__init__(
            img_size,
            patch_size,
            depth,
            embed_dim,
            channels,
            0.0,
            drop_path_rate,
            ssm_cfg,
            norm_epsilon,
            fused_add_norm,
            rms_norm,
            residual_in_fp32,
            bimamba,
            kernel_size,
            num_frames,
            use_checkpoint,
            checkpoint_num,
            clamp_temporal_pos,
        )
        self.config = self_config
        self.pool_type = pool_type
        self.add_pool_norm = add_pool_norm
        self.keep_temporal = keep_temporal
        if add_pool_norm:
            self.pool_norm = nn.LayerNorm(embed_dim)
        self.init_weights()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor, ssm_state: StackState | None = None, temporal_pos_offset: int = 0):
        """Every token after the final norm, ``(B, [1 +] (T / k) * num_patches, D)`` (cls first on the
        first chunk), plus ``next_state`` when ``ssm_state`` is given."""
        return self.forward_tokens(x, ssm_state, temporal_pos_offset)

    def forward(
        self,
        x: torch.Tensor,
        ssm_state: StackState | None = None,
        temporal_pos_offset: int = 0,
        keep_temporal: bool | None = None,
    ):
        self.check_readout(temporal_pos_offset)
        out = self.forward_tokens(x, ssm_state, temporal_pos_offset)
        x_vis, next_state = (out, None) if ssm_state is None else out
        outputs = self.readout(x_vis, temporal_pos_offset == 0, keep_temporal)
        if ssm_state is not None:
            outputs = (*outputs, next_state)
        return outputs[0] if len(outputs) == 1 else outputs

    def fast_step(self) -> VideoMambaFastStep:
        """:meth:`forward` on a stream, replayed from CUDA graphs for inference: ``fast = model.fast_step()`` once,
        then ``*outputs, state = fast(x_chunk, state, temporal_pos_offset=k)`` per chunk (see
        :class:`~videostate.backbones.videomamba_fast_step.VideoMambaFastStep`)."""
        return VideoMambaFastStep(self)

    def check_readout(self, temporal_pos_offset: int) -> None:
        """Only the first chunk carries the cls token that ``pool_type`` 'cls' and 'cls+avg' read."""
        if self.add_pool_norm and self.pool_type != "avg" and temporal_pos_offset != 0:
            raise ValueError(
                f"pool_type={self.pool_type!r} reads the cls token, which only the first chunk "
                f"(temporal_pos_offset=0) carries; got temporal_pos_offset={temporal_pos_offset}. Pool "
                "later chunks with pool_type='avg' (keep_temporal=True for one feature per frame)"
            )

    def readout(self, tokens: torch.Tensor, has_cls: bool, keep_temporal: bool | None = None) -> tuple:
        """The outputs of :meth:`forward` from the tokens after the final norm, ``(B, [1 +] L, D)``: ``(x_vis,
        x_pool)`` with ``add_pool_norm``, else ``(tokens,)``."""
        if not self.add_pool_norm:
            return (tokens,)
        keep_temporal = self.keep_temporal if keep_temporal is None else keep_temporal
        x_pool, x_vis = self._pool(tokens, has_cls, keep_temporal)
        return x_vis, x_pool

    def _pool(self, tokens: torch.Tensor, has_cls: bool, keep_temporal: bool):
        """Returns ``(x_pool, patch tokens)``."""
        cls, patches = (tokens[:, :1], tokens[:, 1:]) if has_cls else (None, tokens)
        if self.pool_type == "cls":
            return self.pool_norm(cls), patches
        if keep_temporal:
            frames = rearrange(patches, "b (t n) d -> b t n d", n=self.patch_embed.num_patches)
            avg = frames.mean(2)
        else:
            avg = patches.mean(1, keepdim=True)
        return self.pool_norm(avg if self.pool_type == "avg" else cls + avg), patches


def _classifier(size: str, **kwargs) -> VisionMamba:
    embed_dim, depth = SIZES[size]
    for fixed in ("embed_dim", "depth", "patch_size"):
        if fixed in kwargs:
            raise TypeError(f"videomamba_{size} fixes {fixed}; build VisionMamba(...) to choose it")
    return VisionMamba(patch_size=16, embed_dim=embed_dim, depth=depth, **kwargs)


def videomamba_tiny(**kwargs) -> VisionMamba:
    """VideoMamba-Ti: width 192, 24 blocks, patch 16 (7.0M parameters with a 1000-class head)."""
    return _classifier("tiny", **kwargs)


def videomamba_small(**kwargs) -> VisionMamba:
    """VideoMamba-S: width 384, 24 blocks, patch 16."""
    return _classifier("small", **kwargs)


def videomamba_middle(**kwargs) -> VisionMamba:
    """VideoMamba-M: width 576, 32 blocks, patch 16."""
    return _classifier("middle", **kwargs)


def build_videomamba(config) -> VideoMambaEncoder:
    """The encoder of a ``vision_encoder`` config (see :class:`VideoMambaConfig`), with the
    ``pretrained`` checkpoint loaded (temporal table interpolated from ``ckpt_num_frame``)."""
    cfg = VideoMambaConfig.parse(config)
    model = VideoMambaEncoder(**cfg.model_kwargs())
    if cfg.pretrained is not None:
        load_checkpoint(model, cfg.pretrained, ckpt_num_frame=cfg.ckpt_num_frame)
    return model
