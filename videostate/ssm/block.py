"""Residual blocks and stacks of Mamba / Mamba-2 mixers, carrying one state per layer.

``Block`` is mamba_ssm's (and VideoMamba's) prenorm block: add -> RMSNorm -> mixer, returning
``(hidden_states, residual)`` so the add and the norm can be fused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNorm
from .state import StreamState
from .validation import check_tensor


class Block(nn.Module):
    """``residual = x + residual; hidden = mixer(norm(residual))``.

    Args:
        dim: model width.
        mixer: a streaming mixer (:class:`Mamba` or :class:`Mamba2`).
        norm_epsilon: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in float32.
    """

    def __init__(
        self, dim: int, mixer: nn.Module, norm_epsilon: float = 1e-5, residual_in_fp32: bool = False
    ):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=norm_epsilon)

    def forward(self, hidden_states, residual=None, state=None):
        """Returns ``(hidden_states, residual)``, plus the mixer's ``next_state`` when ``state`` is given."""
        hidden_states, residual = self.norm(
            hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
        )
        if state is None:
            return self.mixer(hidden_states), residual
        hidden_states, next_state = self.mixer(hidden_states, state=state)
        return hidden_states, residual, next_state

    def step(self, hidden_states, residual, state):
        """One token ``(batch, dim)``; returns ``(hidden_states, residual, next_state)``."""
        hidden_states, residual = self.norm(
            hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
        )
        hidden_states, next_state = self.mixer.step(hidden_states, state)
        return hidden_states, residual, next_state


@dataclasses.dataclass
class StackState(StreamState):
    """One state per layer of a :class:`MambaStack`."""

    layers: list[StreamState]


class MambaStack(nn.Module):
    """A causal stack of residual Mamba / Mamba-2 blocks with a final RMSNorm.

    Args:
        dim: model width.
        mixers: one entry per layer, ``"mamba"`` or ``"mamba2"``.
        mamba_cfg, mamba2_cfg: keyword arguments of the two mixers.
    """

    def __init__(
        self,
        dim: int,
        mixers: Sequence[str],
        mamba_cfg: dict | None = None,
        mamba2_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
    ):
        super().__init__()
        builders = {
            "mamba": lambda i: Mamba(dim, layer_idx=i, **(mamba_cfg or {})),
            "mamba2": lambda i: Mamba2(dim, layer_idx=i, **(mamba2_cfg or {})),
        }
        unknown = sorted(set(mixers) - set(builders))
        if unknown:
            raise ValueError(f"mixers must be 'mamba' or 'mamba2'; got {unknown}")
        self.dim = dim
        self.layers = nn.ModuleList(
            Block(dim, builders[kind](i), norm_epsilon, residual_in_fp32) for i, kind in enumerate(mixers)
        )
        self.norm_f = RMSNorm(dim, eps=norm_epsilon)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> StackState:
        return StackState(
            [block.mixer.init_state(batch_size, device=device, dtype=dtype) for block in self.layers]
        )

    def forward(self, x: torch.Tensor, state: StackState | None = None):
        """``x (batch, L, dim)`` -> ``(batch, L, dim)``, plus ``next_state`` when ``state`` is given."""
        check_tensor("x", x, (None, None, self.dim), layout="(batch, L, dim)")
        self._check_state(state)
        hidden, residual, next_states = x, None, []
        for i, block in enumerate(self.layers):
            if state is None:
                hidden, residual = block(hidden, residual)
            else:
                hidden, residual, layer_state = block(hidden, residual, state=state.layers[i])
                next_states.append(layer_state)
        out = self.norm_f(hidden, residual)
        return out if state is None else (out, StackState(next_states))

    def step(self, x: torch.Tensor, state: StackState) -> tuple[torch.Tensor, StackState]:
        """One token ``x (batch, dim)`` -> ``(batch, dim)`` and the next state."""
        check_tensor("x", x, (None, self.dim), layout="(batch, dim)")
        self._check_state(state)
        hidden, residual, next_states = x, None, []
        for block, layer_state in zip(self.layers, state.layers, strict=True):
            hidden, residual, layer_state = block.step(hidden, residual, layer_state)
            next_states.append(layer_state)
        return self.norm_f(hidden, residual), StackState(next_states)

    def _check_state(self, state) -> None:
        if state is None:
            return
        if not isinstance(state, StackState) or len(state.layers) != len(self.layers):
            got = f"{len(state.layers)} layers" if isinstance(state, StackState) else type(state).__name__
            raise ValueError(
                f"state must be a StackState with {len(self.layers)} layers (from init_state); got {got}"
            )
