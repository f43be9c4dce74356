"""VLM² inside a transformers video LLM (LLaVA-OneVision, LLaVA-NeXT-Video).

The base model is used as it is; :class:`VLM2ForConditionalGeneration` computes the video features
itself and hands them to the base model's ``forward`` / ``generate`` through ``mm_encoder_outputs``:

    pixels → vision tower → selected layer (B·T, N, d_vision)
           → SpatialFusion(visual, 3D features)          # VLM-3R's insertion point, plus VLM² fusion
           → DualMemoryModule, per video, frame by frame  # residual: H_t + M_t
           → the base model's projector and pooling → LLM

With both additions switched off the features, logits and generated tokens equal the base model's
bit for bit. Memory lives per video: without ``video_ids`` every call starts from empty memories (one
training sample, one video); with ``video_ids`` the memories persist across calls (a video streamed in
chunks of frames) until :meth:`clear_video_memory`, bounded to ``L_w + L_e`` frames per video (``L_w``
or ``L_e`` alone for the ablations ``memory_mode="working_only"`` / ``"episodic_only"``).

With ``trace_memory`` set (or a memory loss weight above 0), each call keeps a
:class:`~videostate.vlm.memory.MemoryTrace` of what the memory did in ``last_memory_trace`` (plot it with
:func:`videostate.vlm.memory_utils.plot_memory`); with ``labels``, the weighted memory losses are added
to the language-model loss.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .config import VLM2Config
from .fusion import SpatialFusion
from .memory import DualMemoryModule, DualMemoryState, MemoryTrace
from .memory_utils import memory_consistency_loss, memory_utilization_loss
from .spatial import SpatialFeatures

BASE_CLASSES = {
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
    "llava_next_video": LlavaNextVideoForConditionalGeneration,
}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def vision_feature_width(base: nn.Module) -> int:
    cfg = base.config
    layers = cfg.vision_feature_layer
    return cfg.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))


class VLM2ForConditionalGeneration(nn.Module):
    """A transformers LLaVA video model with VLM²'s spatial fusion and dual memory.

    Args:
        base: a ``LlavaOnevisionForConditionalGeneration`` or ``LlavaNextVideoForConditionalGeneration``.
        config: the VLM² additions.
    """

    def __init__(self, base: nn.Module, config: VLM2Config):
        super().__init__()
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        if model_type not in BASE_CLASSES or not isinstance(base, BASE_CLASSES[model_type]):
            raise TypeError(
                f"base must be one of {[c.__name__ for c in BASE_CLASSES.values()]}; got {type(base).__name__}"
            )
        if "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
            raise RuntimeError(
                f"{type(base).__name__}.forward takes no mm_encoder_outputs, the argument that hands it the video "
                f"features (added in transformers 5.18; installed: {transformers.__version__}); its **kwargs would "
                "drop them silently. Install transformers >= 5.18"
            )
        width = vision_feature_width(base)
        if config.memory_feature_dim != width:
            raise ValueError(
                f"memory_feature_dim must equal the vision feature width of the base model ({width}); "
                f"got {config.memory_feature_dim}"
            )
        self.base = base
        self.config = config
        self.spatial_fusion = (
            SpatialFusion(
                width,
                config.spatial_feature_dim,
                num_heads=config.fusion_num_heads,
                alignment_heads=config.alignment_num_heads,
                dropout=config.fusion_dropout,
                use_viewpoint_alignment=config.use_viewpoint_alignment,
                use_coordinate_injection=config.use_coordinate_injection,
                coordinate_gate_type=config.coordinate_gate_type,
            )
            if config.use_spatial_fusion
            else None
        )
        self.dual_memory = (
            DualMemoryModule(
                width,
                config.memory_num_heads,
                L_w=config.memory_L_w,
                L_e=config.memory_L_e,
                dropout=config.memory_dropout,
                mode=config.memory_mode,
            )
            if config.use_dual_memory
            else None
        )
        self._video_memories: dict[Hashable, DualMemoryState] = {}
        self.trace_memory = False
        self.last_memory_trace: MemoryTrace | None = None
        base_dtype = next(base.parameters()).dtype
        self.vlm2_modules().to(base_dtype)

    # ------------------------------------------------------------------ construction and persistence

    def vlm2_modules(self) -> nn.ModuleDict:
        """Our modules alone (what :meth:`save_pretrained` writes)."""
        modules = {}
        if self.spatial_fusion is not None:
            modules["spatial_fusion"] = self.spatial_fusion
        if self.dual_memory is not None:
            modules["dual_memory"] = self.dual_memory
        return nn.ModuleDict(modules)

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path | nn.Module,
        vlm2_path: str | Path | None = None,
        config: VLM2Config | None = None,
        **base_kwargs,
    ) -> VLM2ForConditionalGeneration:
        """A base model (a folder or hub id loaded with transformers, or a model) plus our modules.

        Our modules come from ``vlm2_path`` (a folder written by :meth:`save_pretrained`; strict) or are
        freshly initialised from ``config`` (default: :class:`VLM2Config` with ``memory_feature_dim``
        taken from the base model). ``base_kwargs`` go to the base ``from_pretrained`` (``dtype``, ...).
        """
        if isinstance(base, nn.Module):
            base_model = base
        else:
            model_type = AutoConfig.from_pretrained(base).model_type
            if model_type not in BASE_CLASSES:
                raise ValueError(f"{base}: model_type must be one of {sorted(BASE_CLASSES)}; got {model_type!r}")
            base_model = BASE_CLASSES[model_type].from_pretrained(base, **base_kwargs)
        if vlm2_path is not None:
            if config is not None:
                raise ValueError("give either vlm2_path (saved modules and their config) or config, not both")
            config = VLM2Config.load(Path(vlm2_path) / CONFIG_NAME)
        elif config is None:
            config = VLM2Config(memory_feature_dim=vision_feature_width(base_model))
        model = cls(base_model, config)
        if vlm2_path is not None:
            model.load_vlm2_weights(Path(vlm2_path) / WEIGHTS_NAME)
        return model

    def save_pretrained(self, path: str | Path, base_parts: Sequence[str] = ()) -> None:
        """Write ``config.json`` and ``model.safetensors`` with our modules alone, plus the base model's
        parameters of ``base_parts`` (e.g. ``("mm_mlp_adapter",)`` after tuning the projector)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.vlm2_modules().state_dict().items()}
        for part in base_parts:
            for name, p in self.base_part_parameters(part):
                tensors[f"base.{name}"] = p.detach().contiguous()
        save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        payload = self.config.to_dict()
        (path / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")

    def load_vlm2_weights(self, file: str | Path) -> None:
        """Load a file written by :meth:`save_pretrained`; missing or unexpected keys raise."""
        tensors = load_file(str(file))
        ours = {k: v for k, v in tensors.items() if not k.startswith("base.")}
        base = {k[len("base.") :]: v for k, v in tensors.items() if k.startswith("base.")}
        expected = set(self.vlm2_modules().state_dict())
        base_known = dict(self.base.named_parameters())
        missing = sorted(expected - set(ours))
        unexpected = sorted(set(ours) - expected) + sorted(f"base.{k}" for k in set(base) - set(base_known))
        if missing or unexpected:
            raise KeyError(
                f"{file} does not match the VLM² modules: missing keys {missing}, unexpected keys {unexpected}"
            )
        self.vlm2_modules().load_state_dict(ours, strict=True)
        with torch.no_grad():
            for name, value in base.items():
                target = base_known[name]
                if target.shape != value.shape:
                    raise ValueError(f"base.{name} must have shape {tuple(target.shape)}; got {tuple(value.shape)}")
                target.copy_(value)

    # ------------------------------------------------------------------ trainability

    def base_part_parameters(self, part: str) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of one named part (see :data:`videostate.vlm.config.TUNABLE_PARTS`)."""
        if part == "mm_vision_tower":
            module_prefixes = ["model.vision_tower."]
        elif part == "mm_mlp_adapter":
            module_prefixes = ["model.multi_modal_projector.", "model.image_newline", "model.vision_resampler."]
        elif part == "mm_language_model":
            module_prefixes = ["model.language_model.", "lm_head."]
        else:
            raise ValueError(f"{part!r} is not a part of the base model")
        return [(n, p) for n, p in self.base.named_parameters() if any(n.startswith(m) for m in module_prefixes)]

    def apply_tunable_parts(self) -> list[str]:
        """Freeze everything, then unfreeze the parts of ``config.tunable_parts()``; returns the names of
        the trainable parameters."""
        self.requires_grad_(False)
        for part in sorted(self.config.tunable_parts()):
            if part in ("fusion_block", "dual_memory"):
                module = self.spatial_fusion if part == "fusion_block" else self.dual_memory
                if module is None:
                    raise ValueError(f"{part} is listed in mm_tunable_parts but the model has none")
                module.requires_grad_(True)
            else:
                for _, p in self.base_part_parameters(part):
                    p.requires_grad_(True)
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ video features

    def clear_video_memory(self, video_id: Hashable | None = None) -> None:
        """Forget the memories of ``video_id``, or of every video when ``None``."""
        if video_id is None:
            self._video_memories.clear()
        else:
            self._video_memories.pop(video_id, None)

    def retain_video_memories(self, video_ids: Sequence[Hashable]) -> None:
        """Forget the memories of every video not in ``video_ids`` (streams that have ended)."""
        keep = set(video_ids)
        for vid in [v for v in self._video_memories if v not in keep]:
            del self._video_memories[vid]

    def video_memory(self, video_id: Hashable) -> DualMemoryState:
        """The memories kept for ``video_id`` (batch of one); ``state_dict()`` of it saves the stream."""
        if video_id not in self._video_memories:
            raise KeyError(f"no memory is kept for video {video_id!r}; kept: {sorted(map(str, self._video_memories))}")
        return self._video_memories[video_id]

    def set_video_memory(self, video_id: Hashable, state: DualMemoryState) -> None:
        """Resume ``video_id`` from ``state`` (e.g. one rebuilt with ``init_state`` + ``load_state_dict``)."""
        if self.dual_memory is None:
            raise ValueError("use_dual_memory is off, so there is no memory to set")
        self.dual_memory.check_state(state.working, state.episodic)
        if state.batch_size != 1:
            raise ValueError(f"a video's memory has batch size 1; got {state.batch_size}")
        self._video_memories[video_id] = state

    def _memory_state(self, video_ids: Sequence[Hashable] | None, tokens: int, like: torch.Tensor):
        if video_ids is None:
            return None
        if len(set(video_ids)) != len(video_ids):
            raise ValueError(f"video_ids within one batch must be distinct; got {list(video_ids)}")
        states = []
        for vid in video_ids:
            state = self._video_memories.get(vid)
            if state is None:
                state = self.dual_memory.init_state(1, tokens, device=like.device, dtype=like.dtype)
            states.append(state)
        return DualMemoryState.cat(states)

    def vision_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """The vision tower's selected features, as the base model selects them:
        ``(batch, frames, channels, height, width)`` → ``(batch·frames, tokens, d_vision)``."""
        cfg = self.base.config
        layer = cfg.vision_feature_layer
        pixels = pixel_values_videos.flatten(0, 1)
        outputs = self.base.model.vision_tower(pixels, output_hidden_states=layer, return_dict=True)
        if isinstance(layer, int):
            selected = outputs.hidden_states[layer]
        else:
            selected = torch.cat([outputs.hidden_states[i] for i in layer], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return selected

    def project(self, features: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The base model's projector and pooling: ``(batch·frames, tokens, d_vision)`` →
        ``(batch, video tokens, d_text)``."""
        inner = self.base.model
        if self.base.config.model_type == "llava_onevision":
            projected = inner.apply_pooling(inner.multi_modal_projector(features))
            projected = projected.reshape(batch_size, -1, projected.shape[-1])
            newline = inner.image_newline[None, None, :].repeat(batch_size, 1, 1).to(projected.device)
            return torch.cat([projected, newline], dim=1)
        projected = inner.multi_modal_projector(inner.vision_resampler(features))
        return projected.reshape(batch_size, -1, projected.shape[-1])

    def encode_video(
        self,
        pixel_values_videos: torch.Tensor,
        spatial_features: SpatialFeatures | None = None,
        video_ids: Sequence[Hashable] | None = None,
    ) -> torch.Tensor:
        """Video tokens for the LLM: ``(batch, frames, 3, H, W)`` → ``(batch, video tokens, d_text)``.

        Args:
            pixel_values_videos: the processor's video tensor.
            spatial_features: 3D inputs for each frame (required when the spatial fusion is on).
            video_ids: one id per video to keep its memory across calls; ``None`` starts every video
                from empty memories.
        """
        if pixel_values_videos.dim() != 5:
            raise ValueError(
                f"pixel_values_videos must have shape (batch, frames, 3, H, W); got {tuple(pixel_values_videos.shape)}"
            )
        batch, frames = pixel_values_videos.shape[:2]
        if frames == 0:
            raise ValueError("every video needs at least one frame; got pixel_values_videos with 0 frames")
        if video_ids is not None and len(video_ids) != batch:
            raise ValueError(f"video_ids must name the {batch} videos of the batch; got {len(video_ids)} ids")
        features = self.vision_features(pixel_values_videos)
        if self.spatial_fusion is not None:
            if spatial_features is None:
                raise ValueError("use_spatial_fusion is on, so spatial_features are required; got None")
            if spatial_features.shape != (batch, frames):
                raise ValueError(
                    f"spatial_features must cover (batch, frames)=({batch}, {frames}); got {spatial_features.shape}"
                )
            sf = spatial_features.to(device=features.device)
            features = self.spatial_fusion(
                features,
                sf.patch_tokens.flatten(0, 1).to(features.dtype),
                sf.camera_tokens.flatten(0, 1).to(features.dtype),
                None if sf.points is None else sf.points.flatten(0, 1),
                None if sf.confidence is None else sf.confidence.flatten(0, 1),
            )
        elif spatial_features is not None:
            raise ValueError("spatial_features were given but use_spatial_fusion is off")
        if self.dual_memory is not None:
            per_video = features.unflatten(0, (batch, frames))
            state = self._memory_state(video_ids, per_video.shape[2], per_video)
            if self._tracing():
                per_video, next_state, self.last_memory_trace = self.dual_memory.trace_video(per_video, state)
            else:
                per_video, next_state = self.dual_memory.forward_video(per_video, state)
            if video_ids is not None:
                next_state = next_state.detach()
                for i, vid in enumerate(video_ids):
                    self._video_memories[vid] = next_state.index_select(torch.tensor([i], device=features.device))
            features = per_video.flatten(0, 1)
        elif video_ids is not None:
            raise ValueError("video_ids were given but use_dual_memory is off (there is no memory to keep)")
        return self.project(features, batch)

    def _tracing(self) -> bool:
        c = self.config
        return self.trace_memory or c.memory_consistency_weight > 0 or c.memory_utilization_weight > 0

    def memory_losses(self) -> dict[str, torch.Tensor]:
        """The weighted memory losses of the last encoded video batch (only those with a weight above 0)."""
        c, trace = self.config, self.last_memory_trace
        losses = {}
        if trace is None:
            return losses
        if c.memory_consistency_weight > 0:
            losses["memory_consistency"] = c.memory_consistency_weight * memory_consistency_loss(trace)
        if c.memory_utilization_weight > 0:
            losses["memory_utilization"] = c.memory_utilization_weight * memory_utilization_loss(trace)
        return losses

    def _mm_outputs(self, pixel_values_videos, spatial_features, video_ids) -> dict:
        video = self.encode_video(pixel_values_videos, spatial_features, video_ids)
        return {"video": BaseModelOutputWithPooling(pooler_output=video)}

    # ------------------------------------------------------------------ LLM entry points

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values_videos: torch.Tensor | None = None,
        spatial_features: SpatialFeatures | None = None,
        video_ids: Sequence[Hashable] | None = None,
        **kwargs,
    ):
        """The base model's forward (``labels``, ``attention_mask``, ... pass through) with our video tokens;
        with ``labels``, ``loss`` includes the weighted memory losses of this call's videos."""
        self.last_memory_trace = None
        if pixel_values_videos is not None:
            kwargs["mm_encoder_outputs"] = self._mm_outputs(pixel_values_videos, spatial_features, video_ids)
        out = self.base(input_ids=input_ids, **kwargs)
        if out.loss is not None:
            for value in self.memory_losses().values():
                out.loss = out.loss + value
        return out

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values_videos: torch.Tensor | None = None,
        spatial_features: SpatialFeatures | None = None,
        video_ids: Sequence[Hashable] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The base model's ``generate`` with our video tokens (encoded once, before prefill)."""
        if pixel_values_videos is not None:
            kwargs["mm_encoder_outputs"] = self._mm_outputs(pixel_values_videos, spatial_features, video_ids)
        return self.base.generate(input_ids=input_ids, **kwargs)


def load_vlm3r_weights(model: VLM2ForConditionalGeneration, source: str | Path | dict) -> list[str]:
    """Load VLM-3R's trained non-LoRA weights (``non_lora_trainables.bin``): its cross-attention fusion
    block into ``spatial_fusion.fusion`` and, when present, its ``mm_projector`` (mlp2x_gelu: layers 0 and
    2) into the base model's projector (``linear_1``, ``linear_2``).

    Keys are matched by what follows ``fusion_block.`` / ``mm_projector.`` (any prefix, e.g.
    ``base_model.model.model.``). The fusion block must be complete; returns the parameter names set.
    """
    if model.spatial_fusion is None:
        raise ValueError("the model has no spatial fusion to load VLM-3R's fusion block into")
    state = source if isinstance(source, dict) else torch.load(Path(source), map_location="cpu", weights_only=True)
    fusion, projector = {}, {}
    for key, value in state.items():
        if "fusion_block." in key:
            fusion[key.split("fusion_block.", 1)[1]] = value
        elif "mm_projector." in key:
            layer, _, param = key.split("mm_projector.", 1)[1].partition(".")
            names = {"0": "linear_1", "2": "linear_2"}
            if layer not in names:
                raise KeyError(f"unexpected mm_projector key {key!r}; VLM-3R's mlp2x_gelu has layers 0 and 2")
            projector[f"{names[layer]}.{param}"] = value
    target = model.spatial_fusion.fusion
    expected = set(target.state_dict())
    missing, unexpected = sorted(expected - set(fusion)), sorted(set(fusion) - expected)
    if missing or unexpected:
        raise KeyError(f"VLM-3R fusion block does not match: missing keys {missing}, unexpected keys {unexpected}")
    target.load_state_dict(fusion, strict=True)
    loaded = [f"spatial_fusion.fusion.{k}" for k in sorted(fusion)]
    if projector:
        model.base.model.multi_modal_projector.load_state_dict(projector, strict=True)
        loaded += [f"base.model.multi_modal_projector.{k}" for k in sorted(projector)]
    return loaded
