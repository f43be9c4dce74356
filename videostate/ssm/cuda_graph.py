"""What the systems' fast online steps share: recording a step into a CUDA graph, and noticing when the
weights it reads have moved.

A graph replays kernels on the addresses they saw when recorded, so a fast step records its step once over
static buffers (:func:`record`) and refuses to replay once the model was moved or cast (:class:`WeightGuard`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

# Untimed runs before recording, on a side stream: cuBLAS/cuDNN handles, workspaces, Triton compilation and
# the attention kernels' lazy set-up happen there, never inside a graph.
WARMUP_RUNS = 2

T = TypeVar("T")


def record(run: Callable[[], T], device: torch.device, pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm ``run`` up on a side stream, then record one call of it into a CUDA graph on ``device``
    (sharing memory ``pool`` when given). Returns the graph and what the recorded call returned: the static
    outputs that every replay overwrites."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = run()
    return graph, outputs


class WeightGuard:
    """Remembers where a module's weights live; :meth:`check` raises once they were moved or cast.

    ``.to()``, ``.half()`` and the like replace every parameter and buffer, so watching the module's own
    and the first of each child's is enough and keeps the per-frame check to microseconds. In-place changes
    (``load_state_dict``) keep the addresses and pass."""

    def __init__(self, module: torch.nn.Module):
        self._tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for child in module.children():
            self._tensors.extend(list(child.parameters())[:1])
        self._pointers = [t.data_ptr() for t in self._tensors]

    def check(self) -> None:
        if [t.data_ptr() for t in self._tensors] != self._pointers:
            raise RuntimeError(
                "the model's weights were moved or cast after this fast step was set up; "
                "make another one with model.fast_step()"
            )
