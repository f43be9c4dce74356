"""Depthwise causal 1-D convolution with a carried ``conv_state``, as Mamba's short convolution.

``conv_state (batch, dim, width)`` holds the last ``width`` inputs seen (mamba_ssm's layout; the
convolution itself reads the newest ``width - 1`` of them). Starting from a zero state equals
mamba_ssm's ``conv1d(..., padding=width - 1)[..., :L]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import register, resolve
from .validation import check_same_device, check_tensor, compute_dtype

ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    conv_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    reverse: bool = False,
    backend: str = "auto",
):
    """Causal depthwise convolution of ``x (batch, dim, L)`` with ``weight (dim, width)``.

    Args:
        bias: ``(dim,)``. activation: ``None``, ``"silu"`` or ``"swish"``.
        conv_state: ``(batch, dim, width)``, the inputs preceding ``x``; zero when omitted.
        return_final_state: also return the next state (always returned when ``conv_state`` is given).
        reverse: convolve the time-reversed sequence, ``causal_conv1d(x.flip(-1))`` (its output in that reversed
            order), which the GPU kernels read in place without forming the flip; from a zero state only.

    Returns:
        ``y (batch, dim, L)`` in ``x``'s dtype, or ``(y, next_conv_state (batch, dim, width))``.
    """
    check_tensor("x", x, (None, None, None), layout="(batch, dim, L)")
    batch, dim, length = x.shape
    if length == 0:
        raise ValueError(f"x must hold at least one step; got shape {tuple(x.shape)}")
    check_tensor("weight", weight, (dim, None), layout="(dim, width)")
    width = weight.shape[1]
    _check_common(bias, activation, dim)
    if conv_state is not None:
        check_tensor("conv_state", conv_state, (batch, dim, width), layout="(batch, dim, width)")
        if reverse:
            raise ValueError("a reversed convolution starts from a zero state; got a conv_state")
    check_same_device(x=x, weight=weight, bias=bias, conv_state=conv_state)
    fn = resolve("causal_conv1d", backend, x.device)
    y, next_state = fn(x, weight, bias, activation, conv_state, reverse)
    return (y, next_state) if conv_state is not None or return_final_state else y


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`causal_conv1d`.

    ``x (batch, dim)`` with ``conv_state (batch, dim, width)`` -> ``(y (batch, dim), next_state)``.
    """
    check_tensor("conv_state", conv_state, (None, None, None), layout="(batch, dim, width)")
    batch, dim, width = conv_state.shape
    check_tensor("x", x, (batch, dim), layout="(batch, dim)")
    check_tensor("weight", weight, (dim, width), layout="(dim, width)")
    _check_common(bias, activation, dim)
    check_same_device(x=x, weight=weight, bias=bias, conv_state=conv_state)
    fn = resolve("causal_conv1d_update", backend, x.device)
    return fn(x, conv_state, weight, bias, activation)


def _check_common(bias, activation, dim) -> None:
    if bias is not None:
        check_tensor("bias", bias, (dim,), layout="(dim,)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def next_conv_state(x, conv_state, width):
    """The last ``width`` inputs of ``cat(conv_state, x)``, in the state's dtype (x's without a state)."""
    length = x.shape[-1]
    dtype = x.dtype if conv_state is None else conv_state.dtype
    if length >= width:
        return x[..., length - width :].to(dtype)
    if conv_state is None:
        conv_state = x.new_zeros(*x.shape[:-1], width)
    return torch.cat([conv_state[..., length:], x.to(dtype)], dim=-1)


def causal_conv1d_reference(x, weight, bias, activation, conv_state, reverse=False):
    """Plain-PyTorch causal convolution (of ``x.flip(-1)`` with ``reverse``); returns ``(y, next_conv_state)``."""
    if reverse:
        x = x.flip(-1)
    batch, dim, _ = x.shape
    width = weight.shape[1]
    dtype = compute_dtype(x.dtype)
    if conv_state is None:
        conv_state = x.new_zeros(batch, dim, width)
    inputs = torch.cat([conv_state.to(dtype), x.to(dtype)], dim=-1)
    bias_c = None if bias is None else bias.to(dtype)
    y = F.conv1d(inputs[..., 1:], weight.to(dtype)[:, None, :], bias_c, groups=dim)
    next_state = inputs[..., -width:].to(conv_state.dtype, copy=True)  # not a view of the whole input
    return _activate(y, activation).to(x.dtype), next_state


def causal_conv1d_update_reference(x, conv_state, weight, bias, activation):
    """Plain-PyTorch one-step causal convolution."""
    dtype = compute_dtype(x.dtype)
    window = torch.cat([conv_state[..., 1:].to(dtype), x.to(dtype)[..., None]], dim=-1)
    y = (window * weight.to(dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(dtype)
    return _activate(y, activation).to(x.dtype), window.to(conv_state.dtype)


register("causal_conv1d", "reference", causal_conv1d_reference)
register("causal_conv1d_update", "reference", causal_conv1d_update_reference)
