"""AdamW with warmup + cosine or poly schedules, and layer-wise learning-rate decay.

Schedules are multipliers of each parameter group's learning rate, as functions of the optimizer step
``s`` (0-based) with ``W`` warmup steps and ``T`` total steps:

- warmup (``s < W``): ``(s + 1) / W``
- ``"cosine"``: ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (s - W) / max(1, T - W)``
- ``"poly"``: ``m + (1 - m) * (1 - p) ** power``
- ``"constant"``: ``1``

where ``m = min_lr_ratio``; ``p`` is clamped to ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn


@dataclasses.dataclass
class OptimConfig:
    """AdamW and its schedule.

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not applied to biases, norms or other 1-D parameters).
        betas, eps: AdamW's.
        schedule: ``"cosine"``, ``"poly"`` or ``"constant"`` after warmup.
        warmup_steps: linear warmup length in optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        power: exponent of the poly schedule.
        layer_decay: layer-wise LR decay factor (``None`` = off); layer ``i`` of ``n`` gets
            ``lr * layer_decay ** (n + 1 - i)`` (see :func:`param_groups`).
    """

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    power: float = 0.9
    layer_decay: float | None = None


def lr_multiplier(step: int, config: OptimConfig, total_steps: int) -> float:
    """The schedule's multiplier at optimizer step ``step`` (see the module docstring)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)))
    m = config.min_lr_ratio
    if config.schedule == "cosine":
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "poly":
        return m + (1 - m) * (1 - progress) ** config.power
    raise ValueError(f"schedule must be 'cosine', 'poly' or 'constant'; got {config.schedule!r}")


_LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|blocks|layer)\.(\d+)\.")
_EMBED_PATTERN = re.compile(r"(?:^|\.)(?:embed|patch_embed|pos_embed|cls_token|tokens?_embed|embeddings)")


def default_layer_id(name: str, num_layers: int) -> int:
    """Layer of parameter ``name``: embeddings 0, ``layers.i`` / ``blocks.i`` ``i + 1``, the rest
    ``num_layers + 1`` (heads and final norms)."""
    if _EMBED_PATTERN.search(name):
        return 0
    match = _LAYER_PATTERN.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    num_layers: int | None = None,
    layer_id: Callable[[str, int], int] = default_layer_id,
) -> list[dict]:
    """Parameter groups: no weight decay on 1-D parameters (biases, norms, ``A_log``, ``D``) and, with
    ``layer_decay``, an ``lr_scale = layer_decay ** (num_layers + 1 - layer_id(name))`` per group.

    ``num_layers`` defaults to the number of distinct ``layers.i`` / ``blocks.i`` indices.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay is not None and num_layers is None:
        indices = {int(m.group(1)) for n, _ in named if (m := _LAYER_PATTERN.search(n))}
        num_layers = max(indices) + 1 if indices else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        decay = p.ndim > 1 and not name.endswith(".bias")
        layer = layer_id(name, num_layers) if layer_decay is not None else 0
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers + 1 - layer) if layer_decay is not None else 1.0,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(config: OptimConfig, groups: Iterable[dict]) -> torch.optim.AdamW:
    """AdamW over ``groups`` (from :func:`param_groups`), each at ``config.lr * lr_scale``."""
    groups = [dict(g, lr=config.lr * g.get("lr_scale", 1.0)) for g in groups]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler multiplying every group's initial lr by :func:`lr_multiplier`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, config, total_steps))
