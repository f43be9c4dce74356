"""The VideoMamba encoder's streamed chunk replayed from CUDA graphs: :class:`VideoMambaFastStep`, made by
``model.fast_step()``.

A streamed chunk of a few frames is a few hundred small kernels, each launched from Python, so the GPU waits on
the host (H100, bf16, VideoMamba-Ti, batch 32: about 4 ms of kernels in a 44 ms eager chunk of one frame). A fast
step records each chunk shape once into a CUDA graph over static buffers - the chunk, the chunk's first temporal
position (a device scalar) and the carried state - which embeds the chunk, runs the blocks, reads out and writes
the next state back into the state buffers. Per chunk it copies the chunk in, sets the position and replays.
Graphs are kept per ``(chunk shape, first chunk, keep_temporal)`` and share one memory pool.

**States.** A fast step returns its own state buffers, which the next call advances in place. Passing them back
costs nothing; passing any other state (a fresh ``init_state``, a saved one, ``state.reset(mask)``) copies it
into the buffers first and never modifies it. Keep a state across calls with ``state.clone()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ssm import StackState
from ..ssm.cuda_graph import GraphSet, WeightGuard, copy_state_into

if TYPE_CHECKING:
    from .videomamba import VideoMambaEncoder


class VideoMambaFastStep:
    """``*outputs, state = fast(x_chunk, state, temporal_pos_offset=k)``: the values of ``model(x_chunk,
    ssm_state=state, temporal_pos_offset=k)``, with the same checks and errors.

    The first call fixes the batch size, dtype and device of the chunks and the shapes of the state; a chunk or
    state that differs is a ``ValueError`` (make another fast step for it). Chunks may vary in length: each new
    shape records a graph. On CUDA the graphs are recorded there; elsewhere the same buffered computation runs
    eagerly (same values, no speed-up): :attr:`cuda_graph` says which.

    The outputs are fresh tensors; the returned state is the step's buffers (see the module docstring). Inference
    only: the model must be in eval mode; its weights may change in place (``load_state_dict``), but moving or
    casting it after the first call is an error, since the graphs read the weights where they were.
    """

    def __init__(self, model: VideoMambaEncoder):
        self.model = model
        self._signature: tuple | None = None
        self._weights: WeightGuard | None = None
        self._offset: torch.Tensor | None = None
        self._state: StackState | None = None
        self._chunks: dict[tuple, torch.Tensor] = {}
        self._graphs = GraphSet()

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay recorded CUDA graphs (False before the first CUDA chunk and off CUDA)."""
        return bool(self._graphs)

    @torch.no_grad()
    def __call__(
        self,
        x: torch.Tensor,
        state: StackState,
        temporal_pos_offset: int = 0,
        keep_temporal: bool | None = None,
    ) -> tuple:
        """One chunk ``x (B, C, T, H, W)`` of every stream, as :meth:`VideoMambaEncoder.forward`."""
        model = self.model
        if model.training:
            raise ValueError("a fast step runs inference only; call model.eval() first (the model is in training mode)")
        if state is None:
            raise ValueError("a fast step carries a state: pass model.init_state(batch_size) on the first chunk")
        model.check_readout(temporal_pos_offset)
        model._check_input(x, state, temporal_pos_offset)
        model.check_temporal_range(temporal_pos_offset, x.shape[2] // model.patch_embed.tubelet_size)
        if self._signature is None:
            self._setup(x, state)
        self._weights.check()
        signature = (x.shape[0], x.dtype, x.device)
        if signature != self._signature:
            raise ValueError(
                f"this fast step was set up for chunks of (batch, dtype, device) = {self._signature}; got "
                f"{signature}; make another one with model.fast_step()"
            )
        if state is not self._state:
            copy_state_into(self._state, state, "state does not match this fast step's first state")
        keep_temporal = model.keep_temporal if keep_temporal is None else keep_temporal
        key = (tuple(x.shape), temporal_pos_offset == 0, keep_temporal)
        self._offset.fill_(temporal_pos_offset)
        outputs = self._replay(key, x)
        return (*(out.clone() for out in outputs), self._state)

    def _setup(self, x: torch.Tensor, state: StackState) -> None:
        """Static buffers: the chunk's first temporal position and the state, shaped as the first one given."""
        devices = {t.device for t in state.tensors().values()}
        if devices != {x.device} or state.batch_size != x.shape[0]:
            raise ValueError(
                f"state must hold {x.shape[0]} streams on {x.device}, as the chunk; got {state.batch_size} on "
                f"{sorted(map(str, devices))}"
            )
        self._weights = WeightGuard(self.model, "model.fast_step()")
        self._offset = torch.zeros((), dtype=torch.long, device=x.device)
        self._state = state.clone()
        self._signature = (x.shape[0], x.dtype, x.device)

    def _run(self, key: tuple, x: torch.Tensor) -> tuple:
        """One eager chunk on the buffers: the computation a graph records. Returns the readout's outputs."""
        _, with_cls, keep_temporal = key
        model = self.model
        table = model.temporal_pos_embedding
        frames = x.shape[2] // model.patch_embed.tubelet_size
        index = (self._offset + torch.arange(frames, device=x.device)).clamp(max=table.shape[1] - 1)
        tokens = model.embed_with_rows(x, table[:, index], with_cls)
        out, next_state = model.mix_tokens(tokens, self._state)
        for dst, src in zip(self._state.tensors().values(), next_state.tensors().values(), strict=True):
            dst.copy_(src)
        return model.readout(out, with_cls, keep_temporal)

    def _replay(self, key: tuple, x: torch.Tensor) -> tuple:
        if x.device.type != "cuda":
            return self._run(key, x)
        if key not in self._graphs:
            self._chunks[key] = x.clone()
            saved = self._state.clone()  # the warm-up runs advance the state buffers; undone below
            self._graphs.record(key, lambda: self._run(key, self._chunks[key]), x.device)
            copy_state_into(self._state, saved, "the saved state")
        self._chunks[key].copy_(x)
        return self._graphs.replay(key)
