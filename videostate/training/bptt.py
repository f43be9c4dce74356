"""Truncated backpropagation through time over a clip split into chunks.

The clip runs chunk after chunk with the carried state; each chunk's loss is back-propagated at once
and the state is detached before the next chunk, so memory holds one chunk's graph, not the clip's.
With one chunk this is full BPTT; with several, gradients stop at chunk boundaries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass
class BPTTResult:
    """``loss``: the clip's loss (detached, the length-weighted mean of the chunk losses);
    ``state``: the detached state after the last chunk (carry it into the next clip of a stream)."""

    loss: torch.Tensor
    state: Any


def truncated_bptt(
    forward: Callable[[torch.Tensor, Any], tuple[Any, Any]],
    inputs: torch.Tensor,
    loss_fn: Callable[[Any, slice], torch.Tensor],
    state: Any,
    chunk_size: int,
    *,
    dim: int = 1,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> BPTTResult:
    """Run ``inputs`` in chunks of ``chunk_size`` along ``dim``, back-propagating per chunk.

    Args:
        forward: ``forward(chunk, state) -> (output, next_state)`` (a streaming model's
            ``model(x, state)``).
        inputs: the clip, e.g. ``(batch, frames, ...)`` with ``dim=1``.
        loss_fn: ``loss_fn(output, time_slice) -> scalar`` for the chunk covering ``time_slice`` of the
            clip (index targets with it), the mean over that chunk.
        state: the initial state (from ``init_state``, or carried from the previous clip).
        chunk_size: frames per chunk; the last chunk may be shorter.
        backward: called on each chunk's weighted loss (the trainer passes one that scales for
            gradient accumulation and mixed precision).

    Chunk ``c`` of length ``L_c`` of a clip of ``T`` frames contributes ``loss_c * L_c / T``, so the
    losses add up to the clip's mean and a single chunk gives exactly the full-BPTT gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    total = inputs.shape[dim]
    if total < 1:
        raise ValueError(f"inputs must have at least one step along dim {dim}; got shape {tuple(inputs.shape)}")
    clip_loss = None
    for start in range(0, total, chunk_size):
        span = slice(start, min(start + chunk_size, total))
        output, state = forward(inputs.narrow(dim, start, span.stop - start), state)
        loss = loss_fn(output, span) * ((span.stop - start) / total)
        backward(loss)
        clip_loss = loss.detach() if clip_loss is None else clip_loss + loss.detach()
        state = state.detach()
    return BPTTResult(clip_loss, state)
