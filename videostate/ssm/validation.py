"""Input checks shared by the ops: every error names what was expected and what was received."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    tensor: torch.Tensor,
    shape: Sequence[int | None],
    *,
    layout: str,
    floating: bool = True,
) -> None:
    """Raise unless ``tensor`` is a tensor of the given shape (``None`` entries match any size).

    ``layout`` names the dimensions for the message, e.g. ``"(batch, dim, L)"``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}; got {type(tensor).__name__}")
    expected = tuple(shape)
    if tensor.dim() != len(expected) or any(
        e is not None and e != s for e, s in zip(expected, tensor.shape, strict=True)
    ):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(
            f"{name} must have shape {layout}={shown}; got {tuple(tensor.shape)}".replace("'*'", "*")
        )
    if floating and tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {tensor.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """Raise unless every given tensor is on one device; return that device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listed}")
    return next(iter(devices.values()))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan accumulates in: float32 for half inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Parameters kept in float32 by mamba_ssm (A, D, dt bias): float32, or float64 in a float64 model."""
    return tensor.to(compute_dtype(tensor.dtype))
