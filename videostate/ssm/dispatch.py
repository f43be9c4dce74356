"""One dispatch point for every op: ``backend="auto" | "reference" | <registered fast backend>``.

The reference implementations register themselves under ``"reference"``. Fast backends (GPU kernels)
register under their own name with an ``available(device)`` predicate; ``"auto"`` picks the first
available one on CUDA unless ``VIDEOSTATE_DISABLE_FUSED=1`` (or the VideoMamba spelling
``VIDEOMAMBA_DISABLE_FUSED=1``) is set, and the reference otherwise.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

DISABLE_ENV_VARS = ("VIDEOSTATE_DISABLE_FUSED", "VIDEOMAMBA_DISABLE_FUSED")


@dataclass(frozen=True)
class Implementation:
    fn: Callable
    available: Callable[[torch.device], bool]


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(
    op: str,
    backend: str,
    fn: Callable,
    available: Callable[[torch.device], bool] = lambda device: True,
) -> None:
    """Register ``fn`` as the ``backend`` implementation of ``op``."""
    _REGISTRY.setdefault(op, {})[backend] = Implementation(fn, available)


def fused_disabled() -> bool:
    """True when an environment variable switches the fast paths off."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes") for var in DISABLE_ENV_VARS)


def backends(op: str) -> list[str]:
    """Names of the backends registered for ``op``, reference first."""
    return list(_REGISTRY.get(op, {}))


def load_fast_backends() -> None:
    """Import the GPU kernels (they register themselves) when Triton is installed; once."""
    global _FAST_LOADED
    if not _FAST_LOADED:
        _FAST_LOADED = True
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("videostate.ssm.kernels")


_FAST_LOADED = False


_INFERENCE_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def inference_kernel(name: str, *tensors: torch.Tensor):
    """:func:`kernel_module` ``name`` where its forward-only kernels may take ``tensors``: no gradients recorded,
    CUDA tensors in float32, bfloat16 or float16, fast paths not switched off, Triton installed; else ``None``."""
    if torch.is_grad_enabled() or fused_disabled():
        return None
    if not all(t.is_cuda and t.dtype in _INFERENCE_KERNEL_DTYPES for t in tensors):
        return None
    return kernel_module(name)


@functools.cache
def kernel_module(name: str):
    """The Triton module ``videostate.ssm.kernels.<name>`` for callers outside the dispatch (kernels of other
    layers), imported on first use; ``None`` without Triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    return importlib.import_module(f"videostate.ssm.kernels.{name}")


def resolve(op: str, backend: str, device: torch.device) -> Callable:
    """The implementation of ``op`` to run on ``device`` for the requested ``backend``."""
    name = resolve_backend(op, backend, device)
    return _REGISTRY[op][name].fn


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """The name of the backend that runs ``op`` on ``device`` for the requested ``backend``."""
    if device.type == "cuda" or backend not in ("auto", "reference"):
        load_fast_backends()
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    if backend == "auto":
        if device.type == "cuda" and not fused_disabled():
            for name, impl in impls.items():
                if name != "reference" and impl.available(device):
                    return name
        return "reference"
    if backend not in impls:
        raise ValueError(f"backend for {op} must be 'auto' or one of {backends(op)}; got {backend!r}")
    if not impls[backend].available(device):
        raise ValueError(f"backend {backend!r} for {op} cannot run on device {device}")
    return backend
