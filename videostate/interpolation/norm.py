"""LayerNorm over the channels of the backbone's token maps ``(..., C)``, fast for inference under autocast.

PyTorch's CUDA LayerNorm runs one thread block per row: for the backbone's millions of tokens of 32 to
128 channels it is bound by block scheduling, many times slower than reading the map. Under autocast
``nn.LayerNorm`` also copies its input to float32 and returns float32, which the next linear layer casts
back. Without gradients under autocast, :class:`LayerNorm` instead takes the row statistics as two float32
reductions of the input (mean and mean square) and normalises in two fused multiply-adds, the second
writing the autocast dtype; otherwise it is ``nn.LayerNorm``.

The variance is ``E[x^2] - E[x]^2`` in float32: its cancellation error, ``2^-24 (mean / std)^2`` relative,
stays below the half-precision output's rounding unless a token's mean exceeds its spread ~180 times.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(dim)`` over the last dimension; for inference under autocast the output is in the
    autocast dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_grad_enabled() or not torch.is_autocast_enabled(device):
            return super().forward(x)
        f32 = torch.float32
        out = torch.empty_like(x, dtype=torch.get_autocast_dtype(device))
        with torch.autocast(device, enabled=False):  # autocast would copy x to float32 for addcmul
            mean = x.mean(-1, keepdim=True, dtype=f32)
            mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=f32).square() / x.shape[-1]
            rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + self.eps)
            normalised = torch.addcmul(-mean * rstd, x, rstd)  # (x - mean) * rstd, float32
            return torch.addcmul(self.bias.to(f32), normalised, self.weight.to(f32), out=out)
