"""The streaming step replayed from CUDA graphs: :class:`DepthFastStep`, made by ``model.fast_step()``.

At batch 1 the eager :meth:`VideoMambaDepth.step` is a few hundred small kernels (the teacher's encoder, the
temporal blocks of four scales, the DPT decoder), each launched from Python: the GPU waits on the host. A fast
step captures two CUDA graphs once, over static buffers:

- *encode*: frame -> the teacher's four feature maps;
- *step*: feature maps + states -> depth, the next states written back into the state buffers (and, for the
  keyframe streamer, the terms of the relative state change).

Per frame it copies the frame in and replays the graphs. The model's step path has no host synchronisation
(no ``.item()``, no host-to-device copies), which is what lets it be captured at all. The keyframe rules
(:mod:`videostate.depth.streaming`) run between the two graphs.

**States.** The per-frame states are large (per pixel of each scale: 343 MB for DA2-S at 518x518), so a fast
step does not copy them out: it returns its own state buffers, which the next call advances in place. Passing
them back costs nothing; passing any other state (a fresh ``init_states``, a keyframe's, a loaded one) copies it
into the buffers first, and never modifies it. Keep a state across calls with ``states.clone()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ssm.cuda_graph import GraphSet, WeightGuard, copy_state_into
from .model import VideoMambaDepthState
from .streaming import state_change_terms
from .teacher import check_rgb

if TYPE_CHECKING:
    from .model import VideoMambaDepth


class DepthFastStep:
    """``depth, states = fast(rgb_frame (B, 3, H, W), states)``: the values of ``model.step(rgb_frame, states)``.

    The first call fixes the frame's shape, dtype and device; a frame or state of another shape, dtype or device
    is a ``ValueError`` (make another fast step for it). On CUDA it captures the graphs there; on other devices
    the same buffered computation runs eagerly (same values, no speed-up): :attr:`cuda_graph` says which.

    The returned ``depth`` is a fresh tensor; the returned ``states`` are the step's buffers (see the module
    docstring). Inference only: the model must be in eval mode; weights may change in place
    (``load_state_dict``), but moving or casting the model after the first call is an error, since the graphs
    read the weights where they were.
    """

    def __init__(self, model: VideoMambaDepth):
        self.model = model
        self._signature: tuple | None = None
        self._weights: WeightGuard | None = None
        self._rgb: torch.Tensor | None = None
        self._features: list[torch.Tensor] = []
        self._states: VideoMambaDepthState | None = None
        self._image_size: tuple[int, int] = (0, 0)
        self._graphs = GraphSet()

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay captured CUDA graphs (False before the first call and off CUDA)."""
        return bool(self._graphs)

    # ------------------------------------------------------------------------------------------ public

    @torch.no_grad()
    def __call__(
        self, rgb_frame: torch.Tensor, states: VideoMambaDepthState
    ) -> tuple[torch.Tensor, VideoMambaDepthState]:
        """One frame per stream, as :meth:`VideoMambaDepth.step`."""
        features = self.frame_features(rgb_frame)
        depth, states, _ = self.step_features(features, tuple(rgb_frame.shape[-2:]), states)
        return depth, states

    step = __call__

    @torch.no_grad()
    def frame_features(self, rgb_frame: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's maps ``(B, C_i, h_i, w_i)`` of ``rgb_frame``, as :meth:`VideoMambaDepth.frame_features`.
        They are the step's static buffers: the next call overwrites them."""
        self._check_model()
        check_rgb("rgb_frame", rgb_frame)
        if self._signature is None:
            self._setup(rgb_frame)
        signature = self._describe(rgb_frame)
        if signature != self._signature:
            raise ValueError(
                f"this fast step was set up for frames of (shape, dtype, device) = {self._signature}; got "
                f"{signature}; make another one with model.fast_step()"
            )
        self._rgb.copy_(rgb_frame)
        self._replay("encode")
        return self._features

    @torch.no_grad()
    def step_features(
        self,
        features: list[torch.Tensor],
        image_size: tuple[int, int],
        states: VideoMambaDepthState,
        *,
        change: bool = False,
    ) -> tuple[torch.Tensor, VideoMambaDepthState, torch.Tensor | None]:
        """As :meth:`VideoMambaDepth.step_features`, plus (with ``change``) the state change terms
        ``(|new - old|^2, |old|^2)`` of :func:`~videostate.depth.streaming.state_change_terms`, else ``None``."""
        self._check_model()
        if self._signature is None:
            raise ValueError("call frame_features (or the fast step itself) first: it fixes the frame size")
        if tuple(image_size) != self._image_size:
            raise ValueError(
                f"this fast step was set up for frames of size {self._image_size}; got {tuple(image_size)}"
            )
        if features is not self._features:
            self._load_features(features)
        if states is not self._states:
            self._load_states(states)
        kind = "step_change" if change else "step"
        depth, terms = self._replay(kind)
        return depth.clone(), self._states, None if terms is None else terms.clone()

    # ------------------------------------------------------------------------------------------ set-up

    def _check_model(self) -> None:
        if self.model.training:
            raise ValueError("a fast step runs inference only; call model.eval() first (the model is in training mode)")
        if self._weights is not None:
            self._weights.check()

    @staticmethod
    def _describe(rgb_frame: torch.Tensor) -> tuple:
        return (tuple(rgb_frame.shape), rgb_frame.dtype, rgb_frame.device)

    def _setup(self, rgb_frame: torch.Tensor) -> None:
        """Static buffers from one eager frame: the frame, its features and full-size zero states."""
        model = self.model
        self._weights = WeightGuard(model)
        self._image_size = tuple(rgb_frame.shape[-2:])
        self._rgb = rgb_frame.clone()
        self._features = [f.clone() for f in model.frame_features(self._rgb)]
        batch = rgb_frame.shape[0]
        _, full = model.step_features(
            self._features, self._image_size, model.init_states(batch, device=rgb_frame.device)
        )
        self._states = full.clone()
        for t in self._states.tensors().values():
            t.zero_()
        self._signature = self._describe(rgb_frame)

    def _run(self, kind: str) -> tuple:
        """One eager pass of ``kind`` on the static buffers: the computation a graph records."""
        if kind == "encode":
            return tuple(self.model.frame_features(self._rgb))
        depth, next_states = self.model.step_features(self._features, self._image_size, self._states)
        terms = state_change_terms(next_states, self._states) if kind == "step_change" else None
        for dst, src in zip(self._states.tensors().values(), next_states.tensors().values(), strict=True):
            dst.copy_(src)
        return depth, terms

    def _replay(self, kind: str) -> tuple:
        if self._rgb.device.type != "cuda":
            out = self._run(kind)
            if kind == "encode":
                for dst, src in zip(self._features, out, strict=True):
                    dst.copy_(src)
            return out
        if kind not in self._graphs:
            self._capture(kind)
        return self._graphs.replay(kind)

    def _capture(self, kind: str) -> None:
        """Warm up on a side stream, then record ``kind``; the warm-up's writes to the state buffers are undone."""
        saved = self._states.clone()
        out = self._graphs.record(kind, lambda: self._run(kind), self._rgb.device)
        if kind == "encode":  # the graph's outputs become the static features the step graphs read
            self._features = list(out)
        self._copy_states(saved)

    # ------------------------------------------------------------------------------------------ inputs

    def _load_features(self, features: list[torch.Tensor]) -> None:
        shapes = [(tuple(f.shape), f.dtype, f.device) for f in self._features]
        got = [(tuple(f.shape), f.dtype, f.device) if isinstance(f, torch.Tensor) else type(f) for f in features]
        if got != shapes:
            raise ValueError(f"features must be {len(shapes)} maps of (shape, dtype, device) {shapes}; got {got}")
        for dst, src in zip(self._features, features, strict=True):
            dst.copy_(src)

    def _load_states(self, states: VideoMambaDepthState) -> None:
        """Copy ``states`` into the buffers; a fresh stream (no scale states yet) zeroes them."""
        self.model._check_states(states, self._rgb.shape[0])
        if states.frame_index.device != self._rgb.device:
            raise ValueError(
                f"states must be on the frames' device {self._rgb.device}; got {states.frame_index.device}"
            )
        if not states.scales:
            self._states.frame_index.copy_(states.frame_index)
            for scale in self._states.scales:
                for t in (*scale.conv_states, *scale.ssm_states):
                    t.zero_()
            return
        self._copy_states(states)

    def _copy_states(self, states: VideoMambaDepthState) -> None:
        copy_state_into(
            self._states,
            states,
            "states do not match this fast step's frame size and dtypes; a stream keeps one frame size: start a new "
            "one with model.init_states",
        )
