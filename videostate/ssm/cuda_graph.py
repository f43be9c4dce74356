"""What the systems' fast paths share: recording a step into a CUDA graph, noticing when the weights it reads
have moved, and an offline forward replayed from a graph per input shape.

A graph replays kernels on the addresses they saw when recorded, so a fast step records its step once over
static buffers (:func:`record`) and refuses to replay once the model was moved or cast (:class:`WeightGuard`).
:class:`GraphedForward` does this for a whole forward pass of one input tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from .state import StreamState

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


class GraphSet:
    """CUDA graphs recorded on demand under keys, sharing one memory pool. Each keeps the outputs its recording
    returned, which every replay overwrites. A graph's outputs may lie where a graph recorded before it keeps its
    intermediate tensors: take (copy) them before replaying an earlier one. Buffers allocated outside the graphs, and
    the outputs of earlier graphs, which stay allocated, are never overwritten by a later graph."""

    def __init__(self):
        self._graphs: dict = {}
        self._outputs: dict = {}
        self._pool = None

    def __bool__(self) -> bool:
        return bool(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key) -> bool:
        return key in self._graphs

    def record(self, key, run: Callable[[], T], device: torch.device) -> T:
        """Record ``run`` (:func:`record`) as the graph of ``key``; returns its static outputs."""
        graph, outputs = record(run, device, self._pool)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[key], self._outputs[key] = graph, outputs
        return outputs

    def replay(self, key):
        """Replay the graph of ``key``; returns its static outputs."""
        self._graphs[key].replay()
        return self._outputs[key]


def copy_state_into(buffers: StreamState, state: StreamState, mismatch: str) -> None:
    """Copy every tensor of ``state`` into the same-named buffer of ``buffers``. A tensor of another shape, dtype or
    device (or a missing or extra one) is a ``ValueError``: ``mismatch``, then the first few differences."""
    own, new = buffers.tensors(), state.tensors()
    expected = {k: (tuple(t.shape), t.dtype, t.device) for k, t in own.items()}
    got = {k: (tuple(t.shape), t.dtype, t.device) for k, t in new.items()}
    if got != expected:
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        details = ", ".join(f"{k}: expected {expected.get(k)}, got {got.get(k)}" for k in wrong[:4])
        raise ValueError(f"{mismatch} ({details})")
    for k, t in own.items():
        t.copy_(new[k])


def fresh(outputs):
    """Copies of a graph's static outputs (a tensor or a tuple of them), which its next replay overwrites."""
    return tuple(out.clone() for out in outputs) if isinstance(outputs, tuple) else outputs.clone()


class WeightGuard:
    """Remembers where a module's weights live; :meth:`check` raises once they were moved or cast.

    ``.to()``, ``.half()`` and the like replace every parameter and buffer, so watching the module's own
    and the first of each child's is enough and keeps the per-frame check to microseconds. In-place changes
    (``load_state_dict``) keep the addresses and pass."""

    def __init__(self, module: torch.nn.Module, remake: str = "model.fast_step()"):
        self._remake = remake
        self._tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for child in module.children():
            self._tensors.extend(list(child.parameters())[:1])
        self._pointers = [t.data_ptr() for t in self._tensors]

    def check(self) -> None:
        if [t.data_ptr() for t in self._tensors] != self._pointers:
            raise RuntimeError(
                f"the model's weights were moved or cast after this fast path was set up; make another one with "
                f"{self._remake}"
            )


class GraphedForward:
    """``fast(x)``: the values of ``forward(x)`` (``no_grad``), replayed from a CUDA graph.

    On CUDA the first input of a shape, dtype and device records ``forward`` over a static copy of it; an input of
    another one records anew and frees the previous graph's memory (its pool holds the pass's intermediate
    tensors). Off CUDA ``forward`` runs eagerly: :attr:`cuda_graph` says which. The outputs (a tensor or a tuple of
    them) are fresh tensors. Inference only: ``module`` must be in eval mode; its weights may change in place
    (``load_state_dict``), but moving or casting it after a graph was recorded is an error naming ``remake``, the
    call that makes a new fast path.

    For the small models of this library the GPU finishes many kernels faster than Python launches them (a profile
    on an H100, bf16, VideoMamba-Ti at batch 32 and 8 frames: 23 ms of kernels in a 54 ms eager pass).
    """

    def __init__(self, module: torch.nn.Module, forward: Callable[[torch.Tensor], T], remake: str):
        self.module = module
        self._forward = forward
        self._remake = remake
        self._signature: tuple | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._input: torch.Tensor | None = None
        self._output: T | None = None
        self._weights: WeightGuard | None = None

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay a recorded CUDA graph (False before the first CUDA input and off CUDA)."""
        return self._graph is not None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> T:
        if self.module.training:
            raise ValueError(
                "a fast forward runs inference only; call model.eval() first (the model is in training mode)"
            )
        if x.device.type != "cuda":
            return self._forward(x)
        signature = (tuple(x.shape), x.dtype, x.device)
        if signature != self._signature:
            self._record(x, signature)
        self._weights.check()
        self._input.copy_(x)
        self._graph.replay()
        return fresh(self._output)

    def _record(self, x: torch.Tensor, signature: tuple) -> None:
        self._signature = self._graph = self._input = self._output = None  # the old graph's memory goes first
        self._input = x.clone()
        self._weights = WeightGuard(self.module, self._remake)
        self._graph, self._output = record(lambda: self._forward(self._input), x.device)
        self._signature = signature


class GraphedTraining:
    """``train(x)``: ``module(x)`` for training, its forward and its backward replayed from CUDA graphs.

    Use it in place of the module in a training step: ``out = train(x)``, a loss from ``out``,
    ``loss.backward()`` and the optimiser's step as usual. The gradients reach the parameters' ``.grad`` as after
    an eager pass; the loss, the optimiser and anything else outside the module run eagerly. On CUDA the first input
    of a shape, dtype and device (and autocast setting, training mode, parameters requiring gradients) records the
    pass with :func:`torch.cuda.make_graphed_callables` over a static copy of the input; another one records anew
    and frees the previous graphs' memory. Recording runs the pass and its backward a few times without touching
    ``.grad`` or the weights. Without CUDA or with gradients off the module runs eagerly: :attr:`cuda_graph` says
    which. The outputs (a tensor or a tuple of them) are fresh tensors.

    Autocast applies as it was when the pass was recorded (its weight cache switched off while recording, as the
    graphs require). The weights may change in place (an optimiser, ``load_state_dict``); moving or casting the
    module after a graph was recorded is an error naming ``remake``, the call that makes a new one. Random ops
    (stochastic depth) draw new values at every replay.
    """

    def __init__(self, module: torch.nn.Module, remake: str):
        self.module = module
        self._remake = remake
        self._signature: tuple | None = None
        self._graphed: Callable | None = None
        self._params: tuple[torch.nn.Parameter, ...] = ()
        self._weights: WeightGuard | None = None

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay recorded CUDA graphs (False before the first CUDA input and off CUDA)."""
        return self._graphed is not None

    def __call__(self, x: torch.Tensor):
        if x.device.type != "cuda" or not torch.is_grad_enabled():
            return self.module(x)
        autocast = {"enabled": torch.is_autocast_enabled("cuda"), "dtype": torch.get_autocast_dtype("cuda")}
        signature = (
            tuple(x.shape), x.dtype, x.device, x.requires_grad, self.module.training, tuple(autocast.values()),
            tuple(p.requires_grad for p in self.module.parameters()),
        )  # fmt: skip
        if signature != self._signature:
            self._record(x, signature, autocast)
        self._weights.check()
        return fresh(self._graphed(*FreshGradients.apply(x, *self._params)))

    def _record(self, x: torch.Tensor, signature: tuple, autocast: dict) -> None:
        self._signature = self._graphed = None  # the old graphs' memory goes first
        self._params = tuple(self.module.parameters())
        self._weights = WeightGuard(self.module, self._remake)
        static_input = x.detach().clone().requires_grad_(x.requires_grad)

        def run(inputs: torch.Tensor, *params: torch.nn.Parameter):
            return self.module(inputs)

        with torch.cuda.device(x.device), torch.autocast("cuda", **autocast, cache_enabled=False):
            # the parameters enter as inputs, so that the backward graph computes their gradients
            self._graphed = torch.cuda.make_graphed_callables(
                run, (static_input, *self._params), num_warmup_iters=WARMUP_RUNS, allow_unused_input=True
            )
        self._signature = signature


class FreshGradients(torch.autograd.Function):
    """The identity on its inputs, whose backward hands on copies of their gradients. The backward graph of
    :func:`torch.cuda.make_graphed_callables` returns its static buffers; ``.grad`` would take them over and the next
    replay overwrite them (gradients accumulated over two backward passes would be twice the second's)."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return tuple(None if g is None else g.clone() for g in grads)
