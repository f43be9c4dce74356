"""Mamba's convolution and selective scan over token-major sequences, for inference.

:class:`videostate.ssm.Mamba` lays its sequences out channel-major, ``(batch, d_inner, L)``, as mamba_ssm does:
the convolution turns the input projection's ``(batch, L, 2 d_inner)`` rows into that layout and the scan's
output is turned back before the output projection. For sequences shorter than ``SHORT_LENGTH`` steps, which the
step kernel walks one step at a time reading every channel of the step together, both turns are wasted copies,
and the channel-major reads are strided. Here every tensor stays token-major: the convolution reads ``x`` in
place from the projection's rows and writes ``(batch, L, d_inner)``, ``x_proj`` and ``dt_proj`` read and write
rows without copies (``x_proj``'s rows led by zero rows that align B and C), the scan reads ``u``, ``delta`` and
``z`` a step's channels at a time, and B and C as 64-bit words, and writes its output in the rows the output
projection reads. The values are those of the channel-major path. Forward only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .causal_conv import causal_conv1d_tokens, next_conv_state
from .selective_scan import FORWARD_TOKENS, runs_short_setting, scan_forward


def applies(length: int) -> bool:
    """Whether sequences of ``length`` steps take this path: those the channel-major scan walks step by step."""
    return runs_short_setting(length)


def aligned_lead(dt_rank: int, d_state: int) -> int:
    """Zero rows put before ``x_proj``'s ``(dt, B, C)`` rows so that its output rows, and B and C within them,
    start at multiples of 8 elements: the product then runs cuBLAS's aligned kernels (H100, bf16, 700k rows of
    96 channels: 0.15 -> 0.07 ms) and the scan reads B and C as 64-bit words (its ``PACKED`` loads)."""
    return -dt_rank % 8 if d_state % 8 == 0 else 0


def mamba_scan_tokens(
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    conv_state: torch.Tensor | None = None,
    ssm_state: torch.Tensor | None = None,
    *,
    final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The gated selective scan of one Mamba direction from its input projection.

    Args:
        xz: ``(batch, L, 2 * d_inner)``, the input projection's output (``x`` then ``z``).
        conv_weight: ``(d_inner, d_conv)``; conv_bias ``(d_inner,)`` or ``None``.
        x_proj_weight: ``(dt_rank + 2 * d_state, d_inner)``; dt_proj_weight ``(d_inner, dt_rank)``.
        dt_bias, D: ``(d_inner,)``; A: ``(d_inner, d_state)`` (``-exp(A_log)``), float32.
        conv_state: ``(batch, d_inner, d_conv)`` or ``None`` (zeros); ssm_state ``(batch, d_inner, d_state)``
            or ``None`` (zeros).

        final_state: whether to return the final scan state; an offline pass skips writing it.

    Returns:
        ``y (batch, L, d_inner)`` in ``xz``'s dtype, the next conv state (contiguous, in ``conv_state``'s dtype;
        ``None`` without ``conv_state``) and the final scan state ``(batch, d_inner, d_state)`` in float32
        (``None`` with ``final_state=False``).
    """
    d_inner = conv_weight.shape[0]
    d_state = A.shape[1]
    dt_rank = dt_proj_weight.shape[1]
    if xz.dim() != 3 or xz.shape[-1] != 2 * d_inner:
        raise ValueError(f"xz must have shape (batch, L, {2 * d_inner}); got {tuple(xz.shape)}")
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    u = causal_conv1d_tokens(x, conv_weight, conv_bias, conv_state)
    lead = aligned_lead(dt_rank, d_state)
    weight = F.pad(x_proj_weight, (0, 0, lead, 0)) if lead else x_proj_weight
    _, dt, B, C = F.linear(u, weight).split([lead, dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, dt_proj_weight)
    y = torch.empty_like(u)
    _, last = scan_forward(
        u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, dt_bias, True, ssm_state, y=y.mT, setting=FORWARD_TOKENS,
        final_state=final_state,
    )  # fmt: skip
    # compact, so that a carried state does not keep the whole input projection alive
    next_conv = None if conv_state is None else next_conv_state(x.mT, conv_state, conv_weight.shape[1]).contiguous()
    return y, next_conv, last
