"""LayerNorm over the channels of token maps ``(..., C)``, fast for inference under autocast.

Used where the rows are many and short: the frame-interpolation backbone's token maps and the depth model's
temporal tokens. PyTorch's CUDA LayerNorm runs one thread block per row: for millions of tokens of 32 to
128 channels it is bound by block scheduling, many times slower than reading the map. Under autocast
``nn.LayerNorm`` also copies its input to float32 and returns float32, which the next linear layer casts
back. Without gradients under autocast, :class:`LayerNorm` instead returns the autocast dtype:

- on CUDA, from one Triton kernel (:mod:`videostate.ssm.kernels.layer_norm`: a program normalises a tile of
  rows, float32 statistics), which can also add a residual first (:meth:`LayerNorm.add_and_norm`). The
  fast-path switches of :mod:`videostate.ssm.dispatch` (``VIDEOSTATE_DISABLE_FUSED=1``) turn it off;
- elsewhere (and with the fast path off), from two float32 reductions of the input (mean and mean square)
  and two fused multiply-adds, the second writing the autocast dtype. The variance is ``E[x^2] - E[x]^2``
  in float32: its cancellation error, ``2^-24 (mean / std)^2`` relative, stays below the half-precision
  output's rounding unless a token's mean exceeds its spread ~180 times.

With gradients or without autocast it is ``nn.LayerNorm``.
"""

from __future__ import annotations

import torch
from torch import nn

from .dispatch import fused_disabled, kernel_module

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def layer_norm_kernels():
    """The Triton LayerNorm module, imported on first use (``None`` without Triton)."""
    return kernel_module("layer_norm")


def _inference_under_autocast(x: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type)


def can_use_layer_norm_kernel(*tensors: torch.Tensor) -> bool:
    """Whether the Triton LayerNorm can take ``tensors``: CUDA tensors of a dtype it handles, fused kernels not
    disabled (``VIDEOSTATE_DISABLE_FUSED``), Triton installed."""
    return (
        all(t.is_cuda and t.dtype in _KERNEL_DTYPES for t in tensors)
        and not fused_disabled()
        and layer_norm_kernels() is not None
    )


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(dim)`` over the last dimension; for inference under autocast the output is in the
    autocast dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _inference_under_autocast(x):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(x.device.type)
        if can_use_layer_norm_kernel(x):
            return layer_norm_kernels().layer_norm_triton(x, self.weight, self.bias, self.eps, dtype)
        return self._reference(x, dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, norm(s))`` with ``s = x + residual``; one kernel for inference under autocast on CUDA."""
        if _inference_under_autocast(x) and x.shape == residual.shape and can_use_layer_norm_kernel(x, residual):
            dtype = torch.get_autocast_dtype(x.device.type)
            return layer_norm_kernels().add_layer_norm_triton(x, residual, self.weight, self.bias, self.eps, dtype)
        summed = x + residual
        return summed, self(summed)

    def _reference(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        f32 = torch.float32
        out = torch.empty_like(x, dtype=dtype)
        with torch.autocast(x.device.type, enabled=False):  # autocast would copy x to float32 for addcmul
            mean = x.mean(-1, keepdim=True, dtype=f32)
            mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=f32).square() / x.shape[-1]
            rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + self.eps)
            normalised = torch.addcmul(-mean * rstd, x, rstd)  # (x - mean) * rstd, float32
            return torch.addcmul(self.bias.to(f32), normalised, self.weight.to(f32), out=out)
