"""Helpers shared by the Triton kernels: numerically careful elementwise functions and launch utilities."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def cuda_available(device: torch.device) -> bool:
    """The Triton backend runs on CUDA devices only."""
    return device.type == "cuda"


def any_float64(*tensors: torch.Tensor | None) -> bool:
    """Float64 inputs keep the reference path: the kernels accumulate in float32."""
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def sm_count(device: torch.device) -> int:
    """How many SMs the CUDA ``device`` has, asked once per device: the launchers size their grids by it on every
    call, and each query of the device's properties costs about 9 us of host time (H100)."""
    return _sm_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` without overflow and with full relative precision for very negative ``x``."""
    e = tl.exp(-tl.abs(x))
    one_plus = 1.0 + e
    # Goldberg's log1p: exact to rounding even when 1 + e rounds to 1.
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * e / (one_plus - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def softplus_hw(x, FAST_MATH: tl.constexpr):
    """``log(1 + exp(x))``, the identity above 20, for the forward kernels; ``FAST_MATH``: the hardware's base-2
    logarithm (on the GPU: the interpreter has no libdevice)."""
    one_plus = 1.0 + tl.exp2(x * LOG2E)
    if FAST_MATH:
        log = libdevice.fast_log2f(one_plus) * LN2
    else:
        log = tl.log(one_plus)
    return tl.where(x > 20.0, x, log)


@triton.jit
def silu_hw(z, FAST_MATH: tl.constexpr):
    """``z * sigmoid(z)`` for the forward kernels; ``FAST_MATH``: the hardware's approximate division."""
    den = 1.0 + tl.exp2(-z * LOG2E)
    if FAST_MATH:
        return libdevice.fast_dividef(z, den)
    return z / den


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def scan_combine(a1, b1, a2, b2):
    """Compose two steps of ``h -> a * h + b`` (first ``1``, then ``2``)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def adjoint_combine(a1, p1, g1, a2, p2, g2):
    """Compose two runs of the adjoint ``q_t = g_t + a_{t+1} q_{t+1}`` in a reverse scan (run ``1`` later in
    time, run ``2`` just before it) with each step's own decay ``a_t``, so that no value is shifted by a step.
    A run holds its first step's ``a``, the product ``p`` of the ``a`` after its first step, and ``g``, its
    first step's ``q`` when the ``q`` after the run is zero; one step ``t`` is ``(a_t, 1, g_t)``."""
    bridge = p2 * a1
    return a2, bridge * p1, g2 + bridge * g1
