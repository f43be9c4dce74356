"""Base class of the streaming contract's state dataclasses.

A state is a small dataclass whose fields are tensors with the batch first, ``None``, or lists of
states (a stack's per-layer states). The base class gives every state the same operations:
``detach``, ``to``, ``clone``, ``index_select`` / ``reset`` for streams that start or end
independently, and ``state_dict`` / ``load_state_dict`` so a stream can be saved and resumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch

S = TypeVar("S", bound="StreamState")


@dataclasses.dataclass
class StreamState:
    def _map(self: S, fn: Callable[[torch.Tensor], torch.Tensor]) -> S:
        def apply(value):
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, StreamState):
                return value._map(fn)
            if isinstance(value, list):
                return [apply(v) for v in value]
            return value

        return dataclasses.replace(
            self, **{f.name: apply(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, keyed by its dotted path (``"layers.3.ssm_state"``)."""
        out: dict[str, torch.Tensor] = {}
        _collect_tensors("", self, out)
        return out

    @property
    def batch_size(self) -> int:
        sizes = {t.shape[0] for t in self.tensors().values()}
        if len(sizes) != 1:
            raise ValueError(f"state tensors disagree on the batch size: {sorted(sizes)}")
        return sizes.pop()

    def detach(self: S) -> S:
        """The same values cut from the autograd graph (truncated BPTT between chunks)."""
        return self._map(torch.Tensor.detach)

    def clone(self: S) -> S:
        return self._map(torch.Tensor.clone)

    def to(self: S, *args, **kwargs) -> S:
        """Move or cast every tensor, as ``torch.Tensor.to``."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def index_select(self: S, batch_idx: torch.Tensor) -> S:
        """Keep (and reorder) the streams ``batch_idx``: a long tensor of batch positions."""
        if batch_idx.dtype != torch.long or batch_idx.dim() != 1:
            raise TypeError(
                f"batch_idx must be a 1-D long tensor; got dtype {batch_idx.dtype}, "
                f"shape {tuple(batch_idx.shape)}"
            )
        return self._map(lambda t: t.index_select(0, batch_idx.to(t.device)))

    def reset(self: S, batch_mask: torch.Tensor) -> S:
        """Zero the streams where ``batch_mask (batch,)`` is True (a new video starts there)."""
        batch = self.batch_size
        if batch_mask.dtype != torch.bool or tuple(batch_mask.shape) != (batch,):
            raise ValueError(
                f"batch_mask must be a bool tensor of shape (batch,)=({batch},); "
                f"got dtype {batch_mask.dtype}, shape {tuple(batch_mask.shape)}"
            )

        def zero_rows(t):
            mask = batch_mask.to(t.device).view(-1, *([1] * (t.dim() - 1)))
            return t.masked_fill(mask, 0)

        return self._map(zero_rows)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of every tensor (never views that would pin a larger buffer when saved)."""
        return {name: t.detach().clone() for name, t in self.tensors().items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace every tensor by the saved one (kept on this state's device and dtype), strictly."""
        current = self.tensors()
        missing = sorted(set(current) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(current))
        if missing or unexpected:
            raise KeyError(
                f"state_dict does not match {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        for name, tensor in current.items():
            if state_dict[name].shape != tensor.shape:
                raise ValueError(
                    f"{name} must have shape {tuple(tensor.shape)}; got {tuple(state_dict[name].shape)}"
                )
        with torch.no_grad():
            for name, tensor in current.items():
                tensor.copy_(state_dict[name])


def _collect_tensors(prefix: str, value, out: dict[str, torch.Tensor]) -> None:
    """Add every tensor under ``value`` to ``out`` by dotted path. A module-level function: a closure
    that calls itself is a reference cycle and would keep every state tensor alive until the cycle
    collector runs."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value
    elif isinstance(value, StreamState):
        for f in dataclasses.fields(value):
            _collect_tensors(f"{prefix}.{f.name}" if prefix else f.name, getattr(value, f.name), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _collect_tensors(f"{prefix}.{i}", v, out)
