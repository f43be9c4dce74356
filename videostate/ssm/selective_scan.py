"""Mamba-1 selective scan: ``selective_scan`` over a sequence and ``selective_state_update`` for one step.

Semantics are those of mamba_ssm's ``selective_scan_ref``::

    delta = softplus(delta + delta_bias)          (each part optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t   = C_t . h_t + D * u_t
    y     = y * silu(z)                           (optional)

plus what mamba_ssm's CUDA scan lacks: an ``initial_state`` and the final state, so a sequence can
be processed in chunks with the state carried between them.

The reference implementation walks the sequence in chunks of ``T`` steps, computing each chunk's
decays ``exp(delta * A)`` and inputs ``delta * B * u`` at once. Inside a chunk the linear recurrence is
solved in parallel by a doubling (Hillis-Steele) scan when autograd records, and by one fused
multiply-add per step otherwise; both form only products of the per-step decays, so no exponential
of a large positive sum ever occurs. The state is carried from chunk to chunk. Peak memory holds
``(T, batch, dim, N)`` tensors, never ``(batch, dim, L, N)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .dispatch import register, resolve
from .validation import check_same_device, check_tensor, compute_dtype

# Elements of one (batch, dim, T, N) chunk tensor the reference aims for: large enough to amortise
# per-op overhead, small enough to stay in cache (measured in benchmarks/ssm_scan.py).
CHUNK_ELEMENTS = 1 << 19
MIN_CHUNK, MAX_CHUNK = 4, 64


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    backend: str = "auto",
):
    """Run the selective scan over a sequence.

    Args:
        u: inputs ``(batch, dim, L)``.
        delta: step sizes ``(batch, dim, L)``.
        A: state matrix ``(dim, N)``.
        B, C: input-dependent ``(batch, N, L)``, or grouped ``(batch, G, N, L)`` with channel ``d``
            in group ``d // (dim // G)``.
        D: skip ``(dim,)``. z: gate ``(batch, dim, L)``. delta_bias: ``(dim,)``.
        initial_state: ``(batch, dim, N)``; zero when omitted.
        return_final_state: also return the state after the last step.
        backend: ``"auto"``, ``"reference"`` or a registered fast backend.

    Returns:
        ``y (batch, dim, L)`` in ``u``'s dtype, and with ``return_final_state`` the final state
        ``(batch, dim, N)`` in float32 (float64 for float64 inputs).
    """
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    fn = resolve("selective_scan", backend, u.device)
    return fn(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        initial_state=initial_state,
        return_final_state=return_final_state,
    )


def selective_state_update(
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
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the selective scan by one step.

    Args:
        state: ``(batch, dim, N)``. x, dt: ``(batch, dim)``. A: ``(dim, N)``.
        B, C: ``(batch, N)`` or grouped ``(batch, G, N)``. D, dt_bias: ``(dim,)``. z: ``(batch, dim)``.

    Returns:
        ``(y (batch, dim), next_state (batch, dim, N))``. Unlike mamba_ssm the state is not modified
        in place, so the update is differentiable and a stream can be rewound.
    """
    check_tensor("state", state, (None, None, None), layout="(batch, dim, N)")
    batch, dim, n = state.shape
    check_tensor("x", x, (batch, dim), layout="(batch, dim)")
    check_tensor("dt", dt, (batch, dim), layout="(batch, dim)")
    check_tensor("A", A, (dim, n), layout="(dim, N)")
    _check_grouped("B", B, batch, dim, n, None)
    _check_grouped("C", C, batch, dim, n, None)
    _check_optional(
        D=(D, (dim,), "(dim,)"), z=(z, (batch, dim), "(batch, dim)"), dt_bias=(dt_bias, (dim,), "(dim,)")
    )
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    fn = resolve("selective_state_update", backend, x.device)
    return fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def no_step_delta(dtype: torch.dtype) -> float:
    """A ``delta`` whose step leaves the state unchanged under ``delta_softplus``: ``softplus(delta + bias)`` is 0
    for any bias, so the step's decay is 1 and its input 0. Half the dtype's largest negative value: finite, it
    keeps a backward over such steps free of ``inf - inf``."""
    return -0.5 * torch.finfo(dtype).max


def check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    check_tensor("u", u, (None, None, None), layout="(batch, dim, L)")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError(f"u must hold at least one step; got shape {tuple(u.shape)}")
    check_tensor("delta", delta, (batch, dim, length), layout="(batch, dim, L)")
    check_tensor("A", A, (dim, None), layout="(dim, N)")
    n = A.shape[1]
    _check_grouped("B", B, batch, dim, n, length)
    _check_grouped("C", C, batch, dim, n, length)
    if B.shape[:-2] != C.shape[:-2]:
        raise ValueError(
            f"B and C must have the same grouping; got B {tuple(B.shape)} and C {tuple(C.shape)}"
        )
    _check_optional(
        D=(D, (dim,), "(dim,)"),
        z=(z, (batch, dim, length), "(batch, dim, L)"),
        delta_bias=(delta_bias, (dim,), "(dim,)"),
        initial_state=(initial_state, (batch, dim, n), "(batch, dim, N)"),
    )
    check_same_device(
        u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state
    )


def _check_grouped(name, t, batch, dim, n, length) -> None:
    """B or C: ``(batch, N[, L])`` or grouped ``(batch, G, N[, L])`` with G dividing dim."""
    tail = () if length is None else (length,)
    tail_name = "" if length is None else ", L"
    if isinstance(t, torch.Tensor) and t.dim() == 3 + len(tail):
        check_tensor(name, t, (batch, None, n, *tail), layout=f"(batch, G, N{tail_name})")
        if dim % t.shape[1]:
            raise ValueError(f"{name} has G={t.shape[1]} groups, which must divide dim={dim}")
    else:
        check_tensor(name, t, (batch, n, *tail), layout=f"(batch, N{tail_name}) or (batch, G, N{tail_name})")


def _check_optional(**specs) -> None:
    for name, (t, shape, layout) in specs.items():
        if t is not None:
            check_tensor(name, t, shape, layout=layout)


def default_chunk_size(batch: int, dim: int, n: int) -> int:
    """Power-of-two chunk length keeping one ``(batch, dim, T, N)`` tensor near ``CHUNK_ELEMENTS``."""
    per_step = max(1, batch * dim * n)
    size = MIN_CHUNK
    while size * 2 <= MAX_CHUNK and size * 2 * per_step <= CHUNK_ELEMENTS:
        size *= 2
    return size


def scan_within_chunk(decay: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``h_t = decay_t * h_{t-1} + inputs_t`` from ``h = 0`` along dim 0, in parallel.

    Hillis-Steele doubling: after the step with offset ``k`` every position holds the recurrence over
    its last ``2k`` steps. Only products of the given decays are formed. Out of place, so autograd
    can differentiate it.

    Args:
        decay, inputs: ``(T, ...)``.

    Returns:
        ``(cumulative_decay, h)``, both ``(T, ...)``: ``cumulative_decay_t = prod_{s<=t} decay_s``
        (the factor that carries a state entering the chunk to step t) and ``h_t``.
    """
    length = decay.shape[0]
    offset = 1
    while offset < length:
        inputs = torch.cat(
            [inputs[:offset], torch.addcmul(inputs[offset:], decay[offset:], inputs[:-offset])]
        )
        decay = torch.cat([decay[:offset], decay[offset:] * decay[:-offset]])
        offset *= 2
    return decay, inputs


def recur_in_place(decay: torch.Tensor, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``h_t = decay_t * h_{t-1} + inputs_t`` along dim 0 from ``h_{-1} = state``, written into ``inputs``.

    One fused multiply-add per step on contiguous ``(...)`` slices: the fastest form on CPU when no
    gradient is needed (the per-step work is one pass over the state).

    Args:
        decay, inputs: ``(T, ...)``. state: ``(...)``.

    Returns:
        ``inputs``, now holding ``h``.
    """
    previous = state
    for t in range(inputs.shape[0]):
        previous = inputs[t].addcmul_(decay[t], previous)
    return inputs


def selective_scan_reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
    chunk_size: int | None = None,
):
    """Plain-PyTorch chunked selective scan (see :func:`selective_scan`); ``chunk_size`` sets ``T``.

    When autograd records, each chunk is solved by the parallel :func:`scan_within_chunk`; otherwise
    by :func:`recur_in_place`. Both give the same values.
    """
    batch, dim, length = u.shape
    n = A.shape[1]
    dtype = compute_dtype(u.dtype)
    groups = B.shape[1] if B.dim() == 4 else 1
    chunk = chunk_size or default_chunk_size(batch, dim, n)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    differentiable = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    u_c = u.to(dtype)
    # Time first, channels as (group, channel-in-group): step slices are contiguous and grouped B
    # and C broadcast without copies.
    delta_g = rearrange(delta, "b (g c) l -> l b g c", g=groups)
    deltau_g = rearrange(delta * u_c, "b (g c) l -> l b g c", g=groups)
    A_g = rearrange(A.to(dtype), "(g c) n -> g c n", g=groups)
    B_g = B.to(dtype) if B.dim() == 4 else B.to(dtype)[:, None]
    C_g = C.to(dtype) if C.dim() == 4 else C.to(dtype)[:, None]
    B_g = rearrange(B_g, "b g n l -> l b g 1 n")
    C_g = rearrange(C_g, "b g n l -> l b g n 1")
    if initial_state is None:
        state = u_c.new_zeros(batch, groups, dim // groups, n)
    else:
        state = rearrange(initial_state.to(dtype), "b (g c) n -> b g c n", g=groups)

    outputs = []
    for start in range(0, length, chunk):
        steps = slice(start, start + chunk)
        decay = torch.exp(delta_g[steps, ..., None] * A_g)  # (T, b, g, c, n)
        inputs = deltau_g[steps, ..., None] * B_g[steps]
        if differentiable:
            carry, states = scan_within_chunk(decay, inputs)
            states = torch.addcmul(states, carry, state)
        else:
            states = recur_in_place(decay, inputs, state)
        outputs.append(torch.matmul(states, C_g[steps])[..., 0])  # (T, b, g, c)
        state = states[-1]

    y = rearrange(torch.cat(outputs), "l b g c -> b (g c) l")
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    if return_final_state:
        # A copy, not a view: a carried state must not keep the last chunk's buffer alive.
        return y, rearrange(state, "b g c n -> b (g c) n").clone()
    return y


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Plain-PyTorch one-step update (see :func:`selective_state_update`)."""
    dtype = compute_dtype(x.dtype)
    groups = B.shape[1] if B.dim() == 3 else 1
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    x_c = x.to(dtype)
    B_g = (B if B.dim() == 3 else B[:, None]).to(dtype)[:, :, None, :]  # (b, g, 1, n)
    C_g = (C if C.dim() == 3 else C[:, None]).to(dtype)[:, :, None, :]
    decay = torch.exp(
        rearrange(dt, "b (g c) -> b g c 1", g=groups) * rearrange(A.to(dtype), "(g c) n -> g c n", g=groups)
    )
    next_state = rearrange(state.to(dtype), "b (g c) n -> b g c n", g=groups) * decay + (
        rearrange(dt * x_c, "b (g c) -> b g c 1", g=groups) * B_g
    )
    y = rearrange((next_state * C_g).sum(-1), "b g c -> b (g c)")
    if D is not None:
        y = y + D.to(dtype) * x_c
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype), rearrange(next_state, "b g c n -> b (g c) n").to(state.dtype)


register("selective_scan", "reference", selective_scan_reference)
register("selective_state_update", "reference", selective_state_update_reference)
