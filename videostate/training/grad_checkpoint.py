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
    residual blocks); returns how many were wrapped. Calling it again does not wrap twice."""
    count = 0
    for module in model.modules():
        if isinstance(module, module_types) and "forward" not in module.__dict__:
            module.forward = functools.partial(_checkpointed, module, module.forward)
            count += 1
    if count == 0:
        raise ValueError(f"no submodule of {type(model).__name__} is a {module_types}")
    return count


def disable_gradient_checkpointing(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.forward
