"""Mamba-2 state-space duality (SSD): ``ssd_scan`` over a sequence and ``ssd_state_update`` for one step.

Semantics are those of mamba_ssm's ``mamba_chunk_scan_combined`` (A is one scalar per head)::

    dt    = clamp(softplus(dt + dt_bias), *dt_limit)      (each part optional)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T     per head, h: (headdim, N)
    y_t   = h_t C_t + D * x_t
    y     = y * silu(z)                                   (optional)

The reference splits the sequence into chunks of ``chunk_size`` steps. Within a chunk the output is a
masked ``(T, T)`` decay-weighted attention-like product (the "dual" form); the state ``(batch, heads,
headdim, N)`` is carried from chunk to chunk. Blocks of chunks are solved at once (bounded by
``CHUNK_BLOCK_ELEMENTS``), the states entering a block's chunks by a segment-sum product over chunks.
Decays are exponentials of segment sums that are masked to ``-inf`` above the diagonal before ``exp``,
so no exponential of a positive sum is formed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .dispatch import register, resolve
from .validation import check_same_device, check_tensor, compute_dtype

NO_LIMIT = (0.0, math.inf)
# The reference solves this many elements of (batch, heads, chunks, T, T) decay matrices at once.
CHUNK_BLOCK_ELEMENTS = 1 << 20


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    *,
    backend: str = "auto",
):
    """Run the SSD scan over a sequence.

    Args:
        x: ``(batch, L, heads, headdim)``. dt: ``(batch, L, heads)``. A: ``(heads,)``.
        B, C: ``(batch, L, groups, N)``; head ``h`` uses group ``h // (heads // groups)``.
        chunk_size: steps per chunk of the dual form (a cost knob; results do not depend on it).
        D: ``(heads,)`` or ``(heads, headdim)``. z: ``(batch, L, heads, headdim)``. dt_bias: ``(heads,)``.
        dt_limit: ``(min, max)`` clamp applied to dt after bias and softplus.
        initial_states: ``(batch, heads, headdim, N)``; zero when omitted.
        return_final_states: also return the state after the last step.

    Returns:
        ``y (batch, L, heads, headdim)`` in ``x``'s dtype, and with ``return_final_states`` the final
        state ``(batch, heads, headdim, N)`` in float32 (float64 for float64 inputs).
    """
    check_tensor("x", x, (None, None, None, None), layout="(batch, L, heads, headdim)")
    batch, length, heads, headdim = x.shape
    if length == 0:
        raise ValueError(f"x must hold at least one step; got shape {tuple(x.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    check_tensor("dt", dt, (batch, length, heads), layout="(batch, L, heads)")
    check_tensor("A", A, (heads,), layout="(heads,)")
    check_tensor("B", B, (batch, length, None, None), layout="(batch, L, groups, N)")
    groups, n = B.shape[2:]
    if heads % groups:
        raise ValueError(f"B has {groups} groups, which must divide heads={heads}")
    check_tensor("C", C, (batch, length, groups, n), layout="(batch, L, groups, N)")
    _check_D(D, heads, headdim)
    for name, t, shape, layout in (
        ("z", z, (batch, length, heads, headdim), "(batch, L, heads, headdim)"),
        ("dt_bias", dt_bias, (heads,), "(heads,)"),
        ("initial_states", initial_states, (batch, heads, headdim, n), "(batch, heads, headdim, N)"),
    ):
        if t is not None:
            check_tensor(name, t, shape, layout=layout)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    fn = resolve("ssd_scan", backend, x.device)
    return fn(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        dt_softplus=dt_softplus,
        dt_limit=dt_limit,
        initial_states=initial_states,
        return_final_states=return_final_states,
    )


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the SSD recurrence by one step.

    Args:
        state: ``(batch, heads, headdim, N)``. x: ``(batch, heads, headdim)``. dt: ``(batch, heads)``.
        A: ``(heads,)``. B, C: ``(batch, groups, N)``. D: ``(heads,)`` or ``(heads, headdim)``.
        z: ``(batch, heads, headdim)``. dt_bias: ``(heads,)``.

    Returns:
        ``(y (batch, heads, headdim), next_state)``; the state is not modified in place.
    """
    check_tensor("state", state, (None, None, None, None), layout="(batch, heads, headdim, N)")
    batch, heads, headdim, n = state.shape
    check_tensor("x", x, (batch, heads, headdim), layout="(batch, heads, headdim)")
    check_tensor("dt", dt, (batch, heads), layout="(batch, heads)")
    check_tensor("A", A, (heads,), layout="(heads,)")
    check_tensor("B", B, (batch, None, n), layout="(batch, groups, N)")
    if heads % B.shape[1]:
        raise ValueError(f"B has {B.shape[1]} groups, which must divide heads={heads}")
    check_tensor("C", C, tuple(B.shape), layout="(batch, groups, N)")
    _check_D(D, heads, headdim)
    if z is not None:
        check_tensor("z", z, (batch, heads, headdim), layout="(batch, heads, headdim)")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, (heads,), layout="(heads,)")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    fn = resolve("ssd_state_update", backend, x.device)
    return fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)


def _check_D(D, heads, headdim) -> None:
    if D is not None and tuple(D.shape) not in ((heads,), (heads, headdim)):
        raise ValueError(
            f"D must have shape (heads,)=({heads},) or (heads, headdim)=({heads}, {headdim}); "
            f"got {tuple(D.shape)}"
        )


def discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype) -> torch.Tensor:
    """``clamp(softplus(dt + dt_bias), *dt_limit)`` in ``dtype``, each part only when asked for."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = sum_{j < k <= i} log_decay[..., k]`` for ``i >= j``, ``-inf`` above the diagonal.

    Summed directly (not as a difference of cumulative sums) so short segments stay exact.

    Args:
        log_decay: ``(..., T)``.

    Returns:
        ``(..., T, T)``.
    """
    length = log_decay.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    terms = repeat(log_decay, "... k -> ... k j", j=length).masked_fill(~torch.tril(ones, -1), 0)
    return torch.cumsum(terms, dim=-2).masked_fill(~torch.tril(ones), -math.inf)


def _skip(y, x, D):
    """``y + D * x`` with D per head ``(heads,)`` or per channel ``(heads, headdim)``."""
    return y + x * (D[:, None] if D.dim() == 1 else D)


def _ssd_block(x, dt, A, B, C, state):
    """A block of ``k`` whole chunks at once.

    Args:
        x: ``(b, k, T, heads, headdim)``; dt: ``(b, k, T, heads)``; A: ``(heads,)``;
        B, C: ``(b, k, T, heads, N)``; state: ``(b, heads, headdim, N)`` entering the block.

    Returns:
        ``(y (b, k, T, heads, headdim), state leaving the block)``.
    """
    log_decay = rearrange(dt * A, "b k t h -> b h k t")
    decay_within = torch.exp(segment_sums(log_decay))  # (b, h, k, i, j): decay from step j to step i
    decay_from_start = torch.exp(torch.cumsum(log_decay, dim=-1))  # (b, h, k, t)
    dt_j = rearrange(dt, "b k t h -> b h k t")
    weights = torch.einsum("bkihn,bkjhn->bhkij", C, B) * decay_within * dt_j[:, :, :, None, :]
    y = torch.einsum("bhkij,bkjhp->bkihp", weights, x)
    # each chunk's state from a zero start, then the states entering the chunks (and leaving the last):
    # entering[i] = sum_{j <= i} exp(log-decay of chunks j..i-1) * carried[j], carried = [state, chunk states]
    decay_to_end = decay_within[:, :, :, -1, :] * dt_j  # (b, h, k, j)
    chunk_states = torch.einsum("bhkj,bkjhn,bkjhp->bkhpn", decay_to_end, B, x)
    carried = torch.cat([state[:, None], chunk_states], dim=1)  # (b, k + 1, h, p, n)
    chunk_log_decay = F.pad(log_decay.sum(dim=-1), (1, 0))  # (b, h, k + 1), 0 before the first chunk
    entering = torch.einsum("bhij,bjhpn->bihpn", torch.exp(segment_sums(chunk_log_decay)), carried)
    y = y + torch.einsum("bkihn,bkhpn,bhki->bkihp", C, entering[:, :-1], decay_from_start)
    return y, entering[:, -1].clone()  # a compact copy: the carried state must not pin this block's buffers


def ssd_scan_reference(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=64,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_LIMIT,
    initial_states=None,
    return_final_states=False,
):
    """Plain-PyTorch chunked SSD (see :func:`ssd_scan`)."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2:]
    dtype = compute_dtype(x.dtype)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    x_c = x.to(dtype)
    B_h = repeat(B.to(dtype), "b l g n -> b l (g r) n", r=heads // groups)
    C_h = repeat(C.to(dtype), "b l g n -> b l (g r) n", r=heads // groups)
    A_c = A.to(dtype)
    if initial_states is None:
        state = x_c.new_zeros(batch, heads, headdim, n)
    else:
        state = initial_states.to(dtype)

    # Padded steps have dt = 0: they leave the state as it is and their outputs are dropped.
    pad = -length % chunk_size
    x_r, dt_r, B_r, C_r = (
        rearrange(F.pad(t, (0,) * (2 * (t.dim() - 2)) + (0, pad)), "b (c t) ... -> b c t ...", t=chunk_size)
        for t in (x_c, dt, B_h, C_h)
    )
    chunks = x_r.shape[1]
    per_block = max(1, CHUNK_BLOCK_ELEMENTS // (batch * heads * chunk_size * chunk_size))
    outputs = []
    for first in range(0, chunks, per_block):
        block = slice(first, first + per_block)
        y_block, state = _ssd_block(x_r[:, block], dt_r[:, block], A_c, B_r[:, block], C_r[:, block], state)
        outputs.append(y_block)
    y = rearrange(torch.cat(outputs, dim=1), "b c t h p -> b (c t) h p")[:, :length]
    if D is not None:
        y = _skip(y, x_c, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(x.dtype)
    return (y, state) if return_final_states else y


def ssd_state_update_reference(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_LIMIT,
):
    """Plain-PyTorch one-step SSD update (see :func:`ssd_state_update`)."""
    heads, groups = state.shape[1], B.shape[1]
    dtype = compute_dtype(x.dtype)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    x_c = x.to(dtype)
    B_h = repeat(B.to(dtype), "b g n -> b (g r) n", r=heads // groups)
    C_h = repeat(C.to(dtype), "b g n -> b (g r) n", r=heads // groups)
    decay = torch.exp(dt * A.to(dtype))[:, :, None, None]
    next_state = state.to(dtype) * decay + torch.einsum("bh,bhp,bhn->bhpn", dt, x_c, B_h)
    y = torch.einsum("bhpn,bhn->bhp", next_state, C_h)
    if D is not None:
        y = _skip(y, x_c, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype), next_state.to(state.dtype)


register("ssd_scan", "reference", ssd_scan_reference)
register("ssd_state_update", "reference", ssd_state_update_reference)
