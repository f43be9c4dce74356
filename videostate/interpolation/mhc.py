"""Manifold-constrained hyper-connections (mHC, Xie et al. 2025) for the LGS block's residuals.

The residual stream is widened to ``n`` streams ``x (n, ...)``. A sublayer ``F`` is applied as::

    x_next = H_res @ x + H_post (outer) F(H_pre . x)

with ``H_res (n, n)`` projected onto the doubly-stochastic matrices (Birkhoff polytope) by
Sinkhorn-Knopp iterations on ``exp(logits)``, ``H_pre = sigmoid(.)`` and ``H_post = 2 sigmoid(.)``
non-negative ``(n,)`` weights. The connections here are static (learned, input-independent).
Initialisation: ``H_res`` close to the identity, ``H_pre = 1/n`` (the mean of the streams), and
``H_post = 2 sigmoid(linspace(-0.5, 0.5, n))`` (0.76 .. 1.24): unequal, so the streams, which start
as copies of one input, differ after the first sublayer and the mixing has something to mix.

Where mixing cannot change the result, ``H_res`` is the identity (``mix_streams=False``): on the
first connection of a backbone stage (its streams are identical copies, and a doubly-stochastic
matrix maps identical streams to themselves) and on the last (the stage output is the mean of the
streams, and the column sums of ``H_res`` are 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def sinkhorn(logits: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Doubly-stochastic ``(n, n)`` matrix from ``exp(logits)`` by alternate row and column normalisation
    (in log space). Columns sum to 1 exactly; rows to within the convergence of ``iterations``."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be a square matrix (n, n); got {tuple(logits.shape)}")
    log_p = logits
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
    return log_p.exp()


class ManifoldHyperConnection(nn.Module):
    """One mHC residual connection over ``num_streams`` streams ``(n, ...)``."""

    def __init__(self, num_streams: int, sinkhorn_iterations: int = 20, mix_streams: bool = True):
        super().__init__()
        if num_streams < 2:
            raise ValueError(f"num_streams must be >= 2; got {num_streams}")
        self.num_streams, self.sinkhorn_iterations = num_streams, sinkhorn_iterations
        self.res_logits = (
            nn.Parameter(torch.full((num_streams, num_streams), -8.0).fill_diagonal_(0.0)) if mix_streams else None
        )
        self.pre_logits = nn.Parameter(torch.full((num_streams,), -math.log(num_streams - 1)))
        self.post_logits = nn.Parameter(torch.linspace(-0.5, 0.5, num_streams))

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``H_res (n, n)``, ``H_pre (n,)``, ``H_post (n,)``."""
        n = self.num_streams
        return (
            torch.eye(n, device=self.pre_logits.device)
            if self.res_logits is None
            else sinkhorn(self.res_logits, self.sinkhorn_iterations),
            torch.sigmoid(self.pre_logits),
            2 * torch.sigmoid(self.post_logits),
        )

    def forward(self, streams: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if streams.shape[0] != self.num_streams:
            raise ValueError(f"streams must have {self.num_streams} leading streams; got shape {tuple(streams.shape)}")
        h_res, h_pre, h_post = (m.to(streams.dtype) for m in self.matrices())
        out = sublayer(torch.einsum("s,s...->...", h_pre, streams))
        return torch.einsum("ts,s...->t...", h_res, streams) + torch.einsum("t,...->t...", h_post, out)


class PlainResidual(nn.Module):
    """``x + F(x)``: the residual connection used without mHC."""

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return x + sublayer(x)
