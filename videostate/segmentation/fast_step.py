"""The online step replayed from a CUDA graph: :class:`VideomtFastStep`, made by ``model.fast_step()``.

The eager :meth:`VideomtForUniversalSegmentation.step` runs a frame as a few hundred small kernels, each
launched from Python through transformers' modules; at batch 1 the GPU waits on the host. A fast step
captures one whole step (embeddings, encoder and segmenter layers, heads, query propagation) once into a
CUDA graph over static frame and state buffers, then per frame copies the frame and state in, replays
the graph (one launch, no host work) and copies the outputs out. The step path has no host
synchronisation (no ``.item()``, no boolean indexing), so it can be captured at all.

Because the state is an input (copied into the static buffers every call), everything that works with
:meth:`~VideomtForUniversalSegmentation.step` works here: a fresh ``init_state``, ``state.reset(mask)``,
a state restored with ``load_state_dict``, stepping twice from the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ssm.cuda_graph import WeightGuard, record
from .model import VideomtState, VideomtVideoOutput

if TYPE_CHECKING:
    from .model import VideomtForUniversalSegmentation

OUTPUT_FIELDS = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")


class VideomtFastStep:
    """``outputs, state = fast(frames (B, C, H, W), state)``: the values of ``model.step(frames, state)``,
    replayed from a CUDA graph.

    The first call fixes what the step runs on: the frames' shape, dtype and device, the state's dtypes and
    whether autocast is on. On CUDA it captures the step into a CUDA graph there; every call copies ``frames``
    and ``state`` into the graph's static buffers, replays it, and returns copies of its outputs and next state
    (earlier outputs and states stay valid, as with the eager step). Frames or a state of another shape, dtype
    or device, or another autocast setting, are a ``ValueError``: make another fast step for them.
    On other devices the same buffered step runs eagerly (same values, no speed-up); :attr:`cuda_graph` says
    which.

    Inference only: the model must be in eval mode, no autograd graph is recorded, and ``bool_masked_pos``
    (a training input) is not taken. Weights may change in place (``load_state_dict``); moving or casting
    the model after the first call is an error, since the graph reads the weights where they were.
    """

    def __init__(self, model: VideomtForUniversalSegmentation):
        self.model = model
        self._signature: tuple | None = None
        self._weights: WeightGuard | None = None
        self._frames: torch.Tensor | None = None
        self._state: VideomtState | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor] | None = None

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay a captured CUDA graph (False before the first call and off CUDA)."""
        return self._graph is not None

    def _run(self) -> dict[str, torch.Tensor]:
        """One eager step on the static buffers: the computation the graph records."""
        outputs = self.model.forward(self._frames[:, None], state=self._state)
        result = {name: getattr(outputs, name) for name in OUTPUT_FIELDS}
        result["propagated"] = outputs.next_state.propagated
        result["started"] = outputs.next_state.started
        return result

    @staticmethod
    def _describe(frames: torch.Tensor, state: VideomtState) -> tuple:
        return (
            tuple(frames.shape),
            frames.dtype,
            frames.device,
            state.propagated.dtype,
            state.propagated.device,
            state.started.dtype,
            state.started.device,
            torch.is_autocast_enabled(frames.device.type),
        )

    def _check(self, frames: torch.Tensor, state: VideomtState) -> None:
        model = self.model
        if model.training:
            raise ValueError("a fast step runs inference only; call model.eval() first (the model is in training mode)")
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"a fast step expects frames of shape (B, C, H, W); got {shape}")
        if state is None:
            raise ValueError("a fast step needs a state; start with model.init_state(batch_size)")
        model._check_video(frames[:, None])
        model._check_state(state, frames.shape[0])
        for name, tensor in (("state.propagated", state.propagated), ("state.started", state.started)):
            if tensor.device != frames.device:
                raise ValueError(f"{name} must be on the frames' device {frames.device}; got {tensor.device}")

    def _setup(self, frames: torch.Tensor, state: VideomtState) -> None:
        self._weights = WeightGuard(self.model)
        self._frames = frames.clone()
        self._state = VideomtState(state.propagated.clone(), state.started.clone())
        if frames.device.type == "cuda":
            self._graph, self._static = record(self._run, frames.device)
        self._signature = self._describe(frames, state)  # last: a failed capture is retried, never skipped

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, state: VideomtState) -> tuple[VideomtVideoOutput, VideomtState]:
        """One frame per stream, as :meth:`VideomtForUniversalSegmentation.step` (without ``bool_masked_pos``)."""
        self._check(frames, state)
        if self._signature is None:
            self._setup(frames, state)
        signature = self._describe(frames, state)
        if signature != self._signature:
            fields = "frames shape, dtype, device; propagated dtype, device; started dtype, device; autocast"
            raise ValueError(
                f"this fast step was set up for ({fields}) = {self._signature}; got {signature}; "
                "make another one with model.fast_step()"
            )
        self._weights.check()
        self._frames.copy_(frames)
        self._state.propagated.copy_(state.propagated)
        self._state.started.copy_(state.started)
        if self._graph is not None:
            self._graph.replay()
            result = {name: tensor.clone() for name, tensor in self._static.items()}
        else:
            result = self._run()
        next_state = VideomtState(result.pop("propagated"), result.pop("started"))
        return VideomtVideoOutput(**result, next_state=next_state), next_state
