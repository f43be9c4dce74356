"""RMSNorm, fused add + RMSNorm (``prenorm``, ``residual_in_fp32``) and gated RMSNorm (Mamba-2).

Semantics follow mamba_ssm's ``rms_norm_ref`` / ``rmsnorm_fn``: statistics in float32 (float64 for
float64 inputs), output in the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .dispatch import register, resolve
from .validation import check_tensor, compute_dtype


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-6,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    *,
    backend: str = "auto",
):
    """``s = x + residual``; ``out = s / sqrt(mean(s^2) + eps) * weight + bias`` over the last dim.

    Args:
        x, residual: ``(..., hidden)``. weight, bias: ``(hidden,)``.
        prenorm: also return the sum ``s`` (the residual stream for the next block).
        residual_in_fp32: return ``s`` in float32 instead of the residual's (or ``x``'s) dtype.

    Returns:
        ``out`` in ``x``'s dtype, or ``(out, s)`` with ``prenorm``.
    """
    hidden = x.shape[-1]
    check_tensor("weight", weight, (hidden,), layout="(hidden,)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}; got {tuple(residual.shape)}")
    fn = resolve("rms_norm", backend, x.device)
    return fn(x, weight, bias, residual, eps, prenorm, residual_in_fp32)


def rms_norm_gated(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Gated RMSNorm of Mamba-2: ``norm(x) * silu(z)`` or ``norm(x * silu(z))`` (``norm_before_gate=False``).

    With ``group_size`` the statistics are taken over consecutive groups of that many channels.
    """
    hidden = x.shape[-1]
    check_tensor("weight", weight, (hidden,), layout="(hidden,)")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}; got {tuple(z.shape)}")
    if group_size is not None and hidden % group_size:
        raise ValueError(f"group_size={group_size} must divide the hidden size {hidden}")
    fn = resolve("rms_norm_gated", backend, x.device)
    return fn(x, weight, z, eps, group_size, norm_before_gate, bias)


def rms_norm_reference(x, weight, bias, residual, eps, prenorm, residual_in_fp32):
    dtype = compute_dtype(x.dtype)
    total = x.to(dtype) if residual is None else x.to(dtype) + residual.to(dtype)
    out = total * torch.rsqrt(total.square().mean(-1, keepdim=True) + eps) * weight.to(dtype)
    if bias is not None:
        out = out + bias.to(dtype)
    out = out.to(x.dtype)
    if not prenorm:
        return out
    residual_dtype = (residual if residual is not None else x).dtype
    if residual_in_fp32:
        residual_dtype = torch.promote_types(residual_dtype, torch.float32)
    return out, total.to(residual_dtype)


def rms_norm_gated_reference(x, weight, z, eps, group_size, norm_before_gate, bias):
    dtype = compute_dtype(x.dtype)
    hidden = x.to(dtype)
    if z is not None and not norm_before_gate:
        hidden = hidden * F.silu(z.to(dtype))
    grouped = rearrange(hidden, "... (g d) -> ... g d", d=group_size or hidden.shape[-1])
    grouped = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)
    out = rearrange(grouped, "... g d -> ... (g d)") * weight.to(dtype)
    if bias is not None:
        out = out + bias.to(dtype)
    if z is not None and norm_before_gate:
        out = out * F.silu(z.to(dtype))
    return out.to(x.dtype)


register("rms_norm", "reference", rms_norm_reference)
register("rms_norm_gated", "reference", rms_norm_gated_reference)


class RMSNorm(nn.Module):
    """RMSNorm with mamba_ssm's parameter (``weight``) and its fused-add call signature."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm(x, self.weight, None, residual, self.eps, prenorm, residual_in_fp32)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """Gated RMSNorm with mamba_ssm's parameter (``weight``) and defaults."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x, z=None):
        return rms_norm_gated(x, self.weight, z, self.eps, self.group_size, self.norm_before_gate)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}"
        )
