"""VidEoMT: an encoder-only video mask transformer with temporal query propagation.

Built on transformers' ``VideomtForUniversalSegmentation`` (same ``VideomtConfig``, same parameter
names, so ``tue-mps/videomt-*`` checkpoints load with :meth:`VideomtForUniversalSegmentation.from_pretrained`).
The ViT layers, heads and embeddings are transformers' own; this class adds what the port lacks:

- batch-major outputs ``(batch, frames, queries, ...)`` (transformers concatenates frames first:
  row ``t * batch + b``; :func:`from_frame_major` converts),
- input checks (shape, image size, ``bool_masked_pos`` layout and dtype, ``patch_offsets``, unknown
  config fields) that raise instead of silently accepting,
- auxiliary predictions from every segmenter layer for training (``config.norm_queries`` as the
  official ``NORM_QUERIES``),
- the online API: :meth:`init_state` and :meth:`step` carry the propagated queries, so an unbounded video
  runs frame by frame with constant memory and gives the same result as the clip forward;
  :meth:`fast_step` replays that step from a CUDA graph (no per-frame Python or launch overhead).

Forward, per clip: layers ``[0, L - num_blocks)`` run on every frame at once; then frame by frame the
queries are prepended (frame 0: ``query.weight``; frame t: ``query_updater(q_{t-1}) + query.weight``, with
``q_{t-1}`` the previous frame's output query tokens before the final LayerNorm) and the last
``num_blocks`` layers run without attention mask, followed by ``layernorm`` and the mask/class heads.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from transformers import PreTrainedConfig, VideomtConfig
from transformers import VideomtForUniversalSegmentation as _TransformersVideomt
from transformers.models.videomt.modeling_videomt import VideomtEmbeddings
from transformers.utils import ModelOutput

from ..ssm.state import StreamState

if TYPE_CHECKING:
    from .fast_step import VideomtFastStep

# Fields this library adds to ``VideomtConfig``; everything else must be a field transformers knows.
EXTENSION_FIELDS = {
    "norm_queries": "bool, default False: auxiliary predictions and propagated queries pass through the final "
    "LayerNorm (the official NORM_QUERIES)",
}


def check_config(config: VideomtConfig) -> None:
    """Raise ``TypeError``/``ValueError`` for a config that is not a ``VideomtConfig`` or has unknown fields."""
    if not isinstance(config, VideomtConfig):
        raise TypeError(f"config must be a transformers VideomtConfig; got {type(config).__name__}")
    known = (
        {f.name for f in dataclasses.fields(VideomtConfig)} | set(PreTrainedConfig().to_dict()) | set(EXTENSION_FIELDS)
    )
    unknown = sorted(set(config.to_dict()) - known)
    if unknown:
        raise ValueError(
            f"unknown VideomtConfig fields {unknown}; expected the fields of transformers' VideomtConfig "
            f"or {sorted(EXTENSION_FIELDS)}"
        )
    norm_queries = getattr(config, "norm_queries", False)
    if not isinstance(norm_queries, bool):
        raise TypeError(f"config.norm_queries must be a bool; got {norm_queries!r}")
    if not 1 <= config.num_blocks <= config.num_hidden_layers:
        raise ValueError(
            f"config.num_blocks must be in [1, num_hidden_layers={config.num_hidden_layers}]; got {config.num_blocks}"
        )


def _grid(config: VideomtConfig) -> tuple[int, int]:
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, (list, tuple)) else (config.patch_size,) * 2
    return size[0] // patch[0], size[1] // patch[1]


def _check_bool_masked_pos(mask: torch.Tensor, pixel_values: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``bool_masked_pos`` as ``(frames, num_patches)``; raises for a wrong layout, size or dtype.

    For video input ``(B, T, C, H, W)`` it may be ``(B, T, N)`` or ``(B*T, N)``; for frames
    ``(F, C, H, W)`` it must be ``(F, N)``.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"bool_masked_pos must be a torch.Tensor; got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"bool_masked_pos must have dtype torch.bool; got {mask.dtype}")
    if pixel_values.ndim == 5:
        b, t = pixel_values.shape[:2]
        layouts = [(b, t, num_patches), (b * t, num_patches)]
        names = f"(B, T, N)=({b}, {t}, {num_patches}) or (B*T, N)=({b * t}, {num_patches})"
    else:
        layouts = [(pixel_values.shape[0], num_patches)]
        names = f"(frames, N)=({pixel_values.shape[0]}, {num_patches})"
    if tuple(mask.shape) not in layouts:
        raise ValueError(f"bool_masked_pos must have shape {names}; got {tuple(mask.shape)}")
    return mask.reshape(-1, num_patches)


class VideomtVideoEmbeddings(VideomtEmbeddings):
    """transformers' VidEoMT embeddings with a checked ``bool_masked_pos``.

    ``forward(pixel_values (B, T, C, H, W) or (F, C, H, W), bool_masked_pos=None) -> (B*T or F, 1 + R + N, D)``,
    frames in batch-major order (``b * T + t``). Masked patches are replaced by ``mask_token``.
    """

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_values.ndim not in (4, 5):
            raise ValueError(
                f"pixel_values must be (B, T, C, H, W) or (frames, C, H, W); got shape {tuple(pixel_values.shape)}"
            )
        if bool_masked_pos is not None:
            bool_masked_pos = _check_bool_masked_pos(bool_masked_pos, pixel_values, self.patch_embeddings.num_patches)
        return super().forward(pixel_values, bool_masked_pos)


@dataclasses.dataclass
class VideomtState(StreamState):
    """Propagated queries of a batch of streams.

    ``propagated (B, Q, D)``: the last frame's output query tokens (before the final LayerNorm unless
    ``config.norm_queries``); ``started (B,)`` bool: whether a frame has been seen. A stream that has not
    started (or was ``reset``) uses the learned queries, as frame 0 does.
    """

    propagated: torch.Tensor
    started: torch.Tensor


@dataclasses.dataclass
class VideomtVideoOutput(ModelOutput):
    """Batch-major VidEoMT outputs.

    - ``class_queries_logits (B, T, Q, num_labels + 1)``; the last class is "no object".
    - ``masks_queries_logits (B, T, Q, h, w)``, ``h = image_size / patch_size * 2**num_upscale_blocks``.
    - ``last_hidden_state (B, T, Q + 1 + R + N, D)``: the final LayerNorm's output.
    - ``auxiliary_logits``: when requested, one dict per segmenter layer (its input, as the official model),
      ``{"masks_queries_logits": (B, T, Q, h, w), "class_queries_logits": (B, T, Q, C + 1)}``.
    - ``hidden_states``: when requested, the embeddings and every encoder layer's output ``(B, T, 1 + R + N, D)``,
      then every segmenter layer's output ``(B, T, Q + 1 + R + N, D)``.
    - ``next_state``: the propagated queries after the last frame, when a ``state`` was passed.
    """

    class_queries_logits: torch.Tensor | None = None
    masks_queries_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    auxiliary_logits: tuple[dict[str, torch.Tensor], ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    next_state: VideomtState | None = None


def flatten_frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...) -> (B*T, ...)``, batch-major (row ``b * T + t``)."""
    return rearrange(x, "b t ... -> (b t) ...")


def unflatten_frames(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(B*T, ...)`` batch-major ``-> (B, T, ...)``; inverse of :func:`flatten_frames`."""
    if x.shape[0] % batch_size:
        raise ValueError(f"{x.shape[0]} rows cannot be split into batch_size={batch_size} videos")
    return rearrange(x, "(b t) ... -> b t ...", b=batch_size)


def from_frame_major(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """transformers' frame-major ``(T*B, ...)`` (row ``t * B + b``) ``-> (B, T, ...)``."""
    if x.shape[0] % batch_size:
        raise ValueError(f"{x.shape[0]} rows cannot be split into batch_size={batch_size} videos")
    return rearrange(x, "(t b) ... -> b t ...", b=batch_size)


def to_frame_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...) -> (T*B, ...)``, transformers' row order; inverse of :func:`from_frame_major`."""
    return rearrange(x, "b t ... -> (t b) ...")


class VideomtForUniversalSegmentation(_TransformersVideomt):
    """VidEoMT for video instance / semantic / panoptic segmentation, offline on a clip or online per frame.

    ``forward(pixel_values_videos (B, T, C, H, W)) -> VideomtVideoOutput`` (batch-major). Streaming:
    ``state = model.init_state(B)`` then ``outputs, state = model.step(frames (B, C, H, W), state)``; for
    inference, ``fast = model.fast_step()`` once and ``outputs, state = fast(frames, state)`` (a CUDA graph).
    """

    def __init__(self, config: VideomtConfig):
        check_config(config)
        super().__init__(config)
        embeddings = VideomtVideoEmbeddings(config)
        embeddings.load_state_dict(self.embeddings.state_dict())
        self.embeddings = embeddings

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, but a checkpoint with missing, unexpected or mis-shaped weights is an error."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
        if problems:
            raise ValueError(f"checkpoint does not match VideomtForUniversalSegmentation: {problems}")
        return (model, info) if want_info else model

    @classmethod
    def from_eomt(cls, eomt, **config_overrides) -> VideomtForUniversalSegmentation:
        """A VidEoMT model from image-stage EoMT weights (an ``EomtForUniversalSegmentation`` or its folder).

        Every EoMT weight is copied; ``query_updater`` keeps its fresh initialisation (trained in the video
        stage) and ``embeddings.mask_token`` its zeros. With one frame the model then equals EoMT without
        masked attention. ``config_overrides`` (e.g. ``norm_queries=True``) go into the new config.
        """
        from transformers import EomtForUniversalSegmentation

        if not isinstance(eomt, EomtForUniversalSegmentation):
            eomt = EomtForUniversalSegmentation.from_pretrained(eomt)
        names = {f.name for f in dataclasses.fields(VideomtConfig)} - {"architectures", "transformers_version"}
        fields = {name: getattr(eomt.config, name) for name in names if hasattr(eomt.config, name)}
        model = cls(VideomtConfig(**{**fields, **config_overrides}))
        weights = {k: v for k, v in eomt.state_dict().items() if k != "attn_mask_probs"}
        result = model.load_state_dict(weights, strict=False)
        expected_missing = {"attn_mask_probs", "embeddings.mask_token", "query_updater.weight", "query_updater.bias"}
        if set(result.missing_keys) - expected_missing or result.unexpected_keys:
            raise ValueError(
                f"EoMT weights do not match VidEoMT: missing {sorted(set(result.missing_keys) - expected_missing)}, "
                f"unexpected {sorted(result.unexpected_keys)}"
            )
        return model

    @property
    def norm_queries(self) -> bool:
        return getattr(self.config, "norm_queries", False)

    @property
    def query_start(self) -> int:
        """Index of the first segmenter layer (where the queries are prepended)."""
        return self.config.num_hidden_layers - self.config.num_blocks

    def init_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> VideomtState:
        """A state for ``batch_size`` new streams: frame 0 will use the learned queries."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        weight = self.query.weight
        propagated = torch.zeros(batch_size, *weight.shape, device=device or weight.device, dtype=dtype or weight.dtype)
        return VideomtState(propagated, torch.zeros(batch_size, dtype=torch.bool, device=propagated.device))

    def _check_video(self, pixel_values_videos: torch.Tensor) -> None:
        if not isinstance(pixel_values_videos, torch.Tensor):
            raise TypeError(f"pixel_values_videos must be a torch.Tensor; got {type(pixel_values_videos).__name__}")
        c = self.config.num_channels
        h, w = (s * p for s, p in zip(_grid(self.config), self.embeddings.patch_embeddings.patch_size, strict=True))
        shape = tuple(pixel_values_videos.shape)
        if len(shape) != 5 or shape[2:] != (c, h, w) or 0 in shape[:2]:
            raise ValueError(f"pixel_values_videos must have shape (B, T, C, H, W)=(B, T, {c}, {h}, {w}); got {shape}")
        if not pixel_values_videos.is_floating_point():
            raise TypeError(f"pixel_values_videos must be a floating-point tensor; got {pixel_values_videos.dtype}")

    def _check_state(self, state: VideomtState, batch_size: int) -> None:
        if not isinstance(state, VideomtState):
            raise TypeError(f"state must be a VideomtState from init_state(); got {type(state).__name__}")
        expected = (batch_size, *self.query.weight.shape)
        if tuple(state.propagated.shape) != expected or tuple(state.started.shape) != (batch_size,):
            raise ValueError(
                f"state must hold propagated {expected} and started ({batch_size},); got "
                f"{tuple(state.propagated.shape)} and {tuple(state.started.shape)}"
            )

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        patch_offsets: list[torch.Tensor] | None = None,
        state: VideomtState | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool = False,
    ) -> VideomtVideoOutput:
        """Segment a clip.

        Args:
            pixel_values_videos: ``(B, T, C, H, W)`` normalized frames, ``H = W = config.image_size``.
            bool_masked_pos: optional bool ``(B, T, N)`` or ``(B*T, N)``, patches replaced by ``mask_token``.
            patch_offsets: not supported for video (an error if given).
            state: propagated queries from :meth:`init_state` or a previous call; ``next_state`` is returned.
            output_auxiliary_logits: predictions from every segmenter layer's input (default: ``self.training``).
            output_hidden_states: return the embeddings and every layer's output.
        """
        self._check_video(pixel_values_videos)
        if patch_offsets is not None:
            raise ValueError("patch_offsets is not supported for video inputs (B, T, C, H, W); got patch_offsets")
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if state is not None:
            self._check_state(state, batch_size)
        if output_auxiliary_logits is None:
            output_auxiliary_logits = self.training

        hidden = self.embeddings(pixel_values_videos, bool_masked_pos)  # (B*T, 1 + R + N, D)
        hidden_states = [hidden] if output_hidden_states else None
        for layer in self.layers[: self.query_start]:
            hidden = layer(hidden)
            if hidden_states is not None:
                hidden_states.append(hidden)
        hidden = unflatten_frames(hidden, batch_size)

        current = state if state is not None else self.init_state(batch_size, device=hidden.device, dtype=hidden.dtype)
        frames = []
        for t in range(num_frames):
            # offline, every stream starts at frame 0, so the masked choice of _frame_queries is known up front
            started = (t > 0) if state is None else (True if t > 0 else None)
            frame, current = self._segment_frame(
                hidden[:, t], current, started, output_auxiliary_logits, output_hidden_states
            )
            frames.append(frame)

        def stack(key: str, i: int | None = None) -> torch.Tensor:
            """``(B, T, ...)`` from every frame's ``key`` (its ``i``-th entry for a list)."""
            return torch.stack([f[key] if i is None else f[key][i] for f in frames], dim=1)

        sequence = self.layernorm(stack("output"))
        masks, classes = self._predict_frames(sequence)
        aux = None
        if output_auxiliary_logits:
            names = ("masks_queries_logits", "class_queries_logits")
            aux = tuple(
                dict(zip(names, self._predict_frames(stack("aux", i)), strict=True))
                for i in range(self.config.num_blocks)
            )
        if hidden_states is not None:
            hidden_states = [unflatten_frames(h, batch_size) for h in hidden_states]
            hidden_states += [stack("layers", i) for i in range(self.config.num_blocks)]
        return VideomtVideoOutput(
            class_queries_logits=classes,
            masks_queries_logits=masks,
            last_hidden_state=sequence,
            auxiliary_logits=aux,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            next_state=current if state is not None else None,
        )

    def _predict_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` on every frame at once: ``x (B, T, S, D)`` -> masks ``(B, T, Q, h, w)``, classes
        ``(B, T, Q, C + 1)``."""
        masks, classes = self.predict(flatten_frames(x))
        return unflatten_frames(masks, x.shape[0]), unflatten_frames(classes, x.shape[0])

    def _frame_queries(self, state: VideomtState, started: bool | None, like: torch.Tensor) -> torch.Tensor:
        """Queries ``(B, Q, D)``: learned where a stream starts, ``query_updater(propagated) + learned`` elsewhere.

        ``started``: ``False``/``True`` when every stream is known to be at its first / a later frame (skips
        the unused branch), ``None`` to read ``state.started`` per stream.
        """
        learned = self.query.weight[None].to(like.device)
        if started is False:
            return learned.expand(like.shape[0], -1, -1)
        updated = self.query_updater(state.propagated.to(like.dtype)) + learned
        if started is True:
            return updated
        return torch.where(state.started[:, None, None].to(like.device), updated, learned)

    def _segment_frame(
        self, tokens: torch.Tensor, state: VideomtState, started: bool | None, output_aux: bool, output_layers: bool
    ) -> tuple[dict, VideomtState]:
        """One frame through the segmenter layers. ``tokens (B, 1 + R + N, D)`` after the encoder layers.

        Returns ``{"output": the last layer's output, "layers": every segmenter layer's output when
        ``output_layers``, "aux": every segmenter layer's prediction input when ``output_aux``}`` (each
        ``(B, Q + 1 + R + N, D)``; the caller predicts for all frames at once) and the next state.
        """
        x = torch.cat((self._frame_queries(state, started, tokens), tokens), dim=1)
        aux, layers = [], []
        for layer in self.layers[self.query_start :]:
            if output_aux:
                aux.append(self.layernorm(x) if self.norm_queries else x)
            x = layer(x)
            if output_layers:
                layers.append(x)
        queries = x[:, : self.config.num_queries]
        # a compact copy: the state must not pin the frame's patch tokens
        propagated = self.layernorm(queries) if self.norm_queries else queries.contiguous()
        return {"output": x, "layers": layers, "aux": aux}, VideomtState(propagated, torch.ones_like(state.started))

    def step(
        self, frames: torch.Tensor, state: VideomtState, bool_masked_pos: torch.Tensor | None = None
    ) -> tuple[VideomtVideoOutput, VideomtState]:
        """One frame per stream: ``frames (B, C, H, W)`` (mask ``(B, N)``) -> (outputs with T = 1, next state)."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"step expects frames of shape (B, C, H, W); got {shape}")
        if state is None:
            raise ValueError("step needs a state; start with model.init_state(batch_size)")
        outputs = self.forward(frames[:, None], bool_masked_pos=bool_masked_pos, state=state)
        return outputs, outputs.next_state

    def fast_step(self) -> VideomtFastStep:
        """:meth:`step` replayed from a CUDA graph, for inference: ``fast = model.fast_step()``, then
        ``outputs, state = fast(frames, state)`` per frame, with the same values as ``model.step(frames, state)``.
        See :class:`~videostate.segmentation.fast_step.VideomtFastStep`."""
        from .fast_step import VideomtFastStep

        return VideomtFastStep(self)
