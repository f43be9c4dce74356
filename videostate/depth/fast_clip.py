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

from ..ssm.cuda_graph import GraphedForward
from .teacher import check_rgb

if TYPE_CHECKING:
    from .model import VideoMambaDepth


class DepthFastClip(GraphedForward):
    """``depth = fast(rgb_clip (B, N, 3, H, W))``: the values of ``model(rgb_clip)``, the offline pass from fresh
    streams, ``(B, N, 1, H, W)``, replayed from a CUDA graph per clip shape, dtype and device
    (:class:`~videostate.ssm.cuda_graph.GraphedForward`: off CUDA it runs the model eagerly; inference only; moving
    or casting the model after a graph was recorded is an error)."""

    def __init__(self, model: VideoMambaDepth):
        super().__init__(model, model, "model.fast_clip()")

    def __call__(self, rgb_clip: torch.Tensor) -> torch.Tensor:
        check_rgb("rgb_clip", rgb_clip, frames=True)
        return super().__call__(rgb_clip)
