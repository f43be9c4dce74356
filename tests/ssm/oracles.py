"""Independent plain-loop oracles for the scans, written from the formulas, one step at a time."""

import itertools

import torch
import torch.nn.functional as F


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = C_t . h_t + D u_t; y *= silu(z)."""
    batch, dim, length = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 4:  # grouped: channel d uses group d // (dim // G)
        per_group = dim // B.shape[1]
        B = B.repeat_interleave(per_group, dim=1)
        C = C.repeat_interleave(per_group, dim=1)
    else:
        B = B[:, None].expand(batch, dim, n, length)
        C = C[:, None].expand(batch, dim, n, length)
    h = torch.zeros(batch, dim, n, dtype=u.dtype) if initial_state is None else initial_state.clone()
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[..., t] * u[:, :, t, None]
        y = (h * C[..., t]).sum(-1)
        if D is not None:
            y = y + D * u[:, :, t]
        ys.append(y)
    y = torch.stack(ys, dim=-1)
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, h


def scan_steps(inputs: dict, start: int = 0, stop: int | None = None) -> dict:
    """Keyword arguments of :func:`selective_scan_loop` restricted to the steps ``[start, stop)``."""
    timed = ("u", "delta", "B", "C", "z")
    return {k: v[..., start:stop] if k in timed and v is not None else v for k, v in inputs.items()}


def loop_state_after(inputs: dict, steps: int, delta_softplus: bool = True):
    """The loop's state after the first ``steps`` steps of ``inputs`` (keyword arguments of
    :func:`selective_scan_loop`): the initial state after none."""
    if steps == 0:
        return inputs["initial_state"]
    return selective_scan_loop(**scan_steps(inputs, 0, steps), delta_softplus=delta_softplus)[1]


def ssd_loop(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None, initial_states=None):
    """Per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T; y_t = h_t C_t + D x_t; y *= silu(z)."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2:]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        dt = dt.clamp(*dt_limit)
    head_group = torch.arange(heads) // (heads // groups)
    h = torch.zeros(batch, heads, headdim, n, dtype=x.dtype) if initial_states is None else initial_states.clone()
    ys = []
    for t in range(length):
        Bt, Ct = B[:, t, head_group], C[:, t, head_group]  # (batch, heads, n)
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bt[:, :, None, :]
        y = (h * Ct[:, :, None, :]).sum(-1)
        if D is not None:
            y = y + (D[:, None] if D.dim() == 1 else D) * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1)
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, h


def causal_conv_loop(x, weight, bias=None, activation=None, history=None):
    """y_t = sum_k w_k x_{t - width + 1 + k} (+ bias), zero (or ``history``) before the start."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    past = torch.zeros(batch, dim, width, dtype=x.dtype, device=x.device) if history is None else history
    padded = torch.cat([past, x], dim=-1)
    ys = []
    for t in range(length):
        window = padded[:, :, t + 1 : t + 1 + width]
        y = (window * weight).sum(-1)
        if bias is not None:
            y = y + bias
        ys.append(y)
    y = torch.stack(ys, dim=-1)
    if activation == "silu":
        y = y * torch.sigmoid(y)
    return y, padded[:, :, -width:]


def chunk_bounds(length, cuts):
    """``(start, end)`` pairs splitting ``range(length)`` at the given cut points."""
    bounds = sorted({0, length, *(c for c in cuts if 0 < c < length)})
    return list(itertools.pairwise(bounds))
