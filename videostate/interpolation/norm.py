"""LayerNorm over the channels of the backbone's token maps ``(..., C)``, fast under autocast.

PyTorch's CUDA LayerNorm runs one thread block per row: for the backbone's millions of tokens of 32 to
128 channels it is bound by block scheduling, many times slower than reading the map. Under autocast
(where ``nn.LayerNorm`` would also cast its input to float32 and return float32, which the next linear
layer casts back) :class:`LayerNorm` takes the row statistics as two float32 reductions (mean and mean
square) and normalises in two fused multiply-adds, the second writing the autocast dtype (with gradients
enabled, from a float32 copy of the input to a float32 result and a cast). Without autocast it is
``nn.LayerNorm``.

The variance is ``E[x^2] - E[x]^2`` in float32: its cancellation error, ``2^-24 (mean / std)^2`` relative,
stays below the half-precision output's rounding unless a token's mean exceeds its spread ~180 times.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(dim)`` over the last dimension; under autocast the output is in the autocast dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        f32, device = torch.float32, x.device.type
        dtype = torch.get_autocast_dtype(device)
        grad = torch.is_grad_enabled()
        with torch.autocast(device, enabled=False):  # autocast would copy x to float32 for addcmul
            # With gradients, from a float32 copy: the statistics' gradients, which nearly cancel when a
            # token's mean is large, add up in float32 before they are cast to x's dtype.
            source = x.float() if grad else x
            mean = source.mean(-1, keepdim=True, dtype=f32)
            mean_square = torch.linalg.vector_norm(source, dim=-1, keepdim=True, dtype=f32).square() / x.shape[-1]
            rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + self.eps)
            normalised = torch.addcmul(-mean * rstd, source, rstd)  # (x - mean) * rstd, float32
            affine = (self.bias.to(f32), normalised, self.weight.to(f32))
            if grad:  # an out= argument records no gradient
                return torch.addcmul(*affine).to(dtype)
            return torch.addcmul(*affine, out=torch.empty_like(x, dtype=dtype))
