"""Gradient (activation) checkpointing of chosen submodules: recompute their forward in backward.

The modules keep their names and parameters (state dicts are unchanged); only ``forward`` is
wrapped, and only while training with gradients enabled.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(module: nn.Module, forward, *args, **kwargs):
    if module.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: nn.Module, module_types: type | tuple[type, ...]) -> int:
    """Checkpoint every submodule of ``model`` that is an instance of ``module_types`` (e.g. the
    residual blocks); returns how many are checkpointed. Calling it again does not wrap twice."""
    matches = [m for m in model.modules() if isinstance(m, module_types)]
    if not matches:
        raise ValueError(f"no submodule of {type(model).__name__} is a {module_types}")
    for module in matches:
        if "forward" not in module.__dict__:
            module.forward = functools.partial(_checkpointed, module, module.forward)
    return len(matches)


def disable_gradient_checkpointing(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.forward
