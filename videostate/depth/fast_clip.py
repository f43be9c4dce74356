"""The offline clip pass replayed from a CUDA graph: :class:`DepthFastClip`, made by ``model.fast_clip()``.

The offline pass over a clip is a few hundred kernels (the teacher's encoder, the temporal blocks of four scales,
the DPT decoder) launched from Python. For the small architectures the GPU finishes many of them faster than the
host launches the next (DA2-S at 518x518: the temporal blocks of the two coarse scales take about 1 ms of host
time per block for a fraction of that on the GPU). A fast clip records ``model(clip)`` once per clip shape over a
static input buffer and replays it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ssm.cuda_graph import WeightGuard, record
from .teacher import check_rgb

if TYPE_CHECKING:
    from .model import VideoMambaDepth


class DepthFastClip:
    """``depth = fast(rgb_clip (B, N, 3, H, W))``: the values of ``model(rgb_clip)``, the offline pass from fresh
    streams, ``(B, N, 1, H, W)``.

    On CUDA the first clip of a shape, dtype and device records a graph; a clip of another one records anew and
    frees the previous graph's memory (its pool holds the pass's intermediate tensors). Off CUDA it runs the model
    eagerly: :attr:`cuda_graph` says which. The returned depth is a fresh tensor. Inference only: the model must
    be in eval mode; weights may change in place (``load_state_dict``), but moving or casting the model after a
    graph was recorded is an error, since the graph reads the weights where they were.
    """

    def __init__(self, model: VideoMambaDepth):
        self.model = model
        self._signature: tuple | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._clip: torch.Tensor | None = None
        self._depth: torch.Tensor | None = None
        self._weights: WeightGuard | None = None

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay a recorded CUDA graph (False before the first CUDA clip and off CUDA)."""
        return self._graph is not None

    @torch.no_grad()
    def __call__(self, rgb_clip: torch.Tensor) -> torch.Tensor:
        check_rgb("rgb_clip", rgb_clip, frames=True)
        if self.model.training:
            raise ValueError("a fast clip runs inference only; call model.eval() first (the model is in training mode)")
        if rgb_clip.device.type != "cuda":
            return self.model(rgb_clip)
        signature = (tuple(rgb_clip.shape), rgb_clip.dtype, rgb_clip.device)
        if signature != self._signature:
            self._record(rgb_clip, signature)
        self._weights.check()
        self._clip.copy_(rgb_clip)
        self._graph.replay()
        return self._depth.clone()

    def _record(self, rgb_clip: torch.Tensor, signature: tuple) -> None:
        self._signature = self._graph = self._clip = self._depth = None  # the old graph's memory goes first
        self._clip = rgb_clip.clone()
        self._weights = WeightGuard(self.model)
        self._graph, self._depth = record(lambda: self.model(self._clip), rgb_clip.device)
        self._signature = signature
