"""Mamba (selective SSM) mixer with mamba_ssm's parameters, and VideoMamba's bidirectional variant.

Streaming contract: ``init_state(batch)``, ``forward(x, state=None)`` (returns ``(y, next_state)``
when a state is passed) and ``step(x, state)`` for one token.

``bimamba=True`` adds the backward-direction parameters under VideoMamba's names (``conv1d_b``,
``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``) and computes, as VideoMamba's fused path does,
``out_proj(y_fwd(x) + flip(y_bwd(flip(x))))`` with each direction gated by its own ``silu(z)`` and no
division. The backward direction needs the future, so it cannot be streamed exactly: with a state,
the forward direction continues from it while the backward direction sees only the current chunk
(from a zero state). A chunk equal to the whole sequence therefore reproduces the offline output.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .causal_conv import causal_conv1d, causal_conv1d_update, next_conv_state
from .dispatch import inference_kernel, kernel_module, register, resolve, resolve_backend
from .selective_scan import (
    check_selective_scan_inputs,
    no_step_delta,
    selective_scan,
    selective_scan_reference,
    selective_state_update,
)
from .state import StreamState
from .validation import at_least_float32, check_tensor


@dataclasses.dataclass
class MambaState(StreamState):
    """State of one :class:`Mamba` mixer.

    Attributes:
        conv_state: ``(batch, d_inner, d_conv)``, the last ``d_conv`` inputs of the short convolution.
        ssm_state: ``(batch, d_inner, d_state)``, the scan state of the forward direction.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Direction(NamedTuple):
    """The parameters of one scan direction."""

    conv1d: nn.Conv1d
    x_proj: nn.Linear
    dt_proj: nn.Linear
    A_log: nn.Parameter
    D: nn.Parameter


def init_dt_proj(
    dt_proj: nn.Linear,
    dt_rank: int,
    dt_init: str,
    dt_scale: float,
    dt_min: float,
    dt_max: float,
    dt_init_floor: float,
) -> None:
    """mamba_ssm's dt initialisation: weight U(-s, s) or constant s with ``s = dt_rank**-0.5 * dt_scale``;
    bias = softplus^-1(dt) for dt log-uniform in ``[dt_min, dt_max]`` floored at ``dt_init_floor``."""
    std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    elif dt_init == "random":
        nn.init.uniform_(dt_proj.weight, -std, std)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant'; got {dt_init!r}")
    with torch.no_grad():
        dt_proj.bias.copy_(
            inverse_softplus(
                log_uniform_dt(dt_proj.bias.shape[0], dt_min, dt_max, dt_init_floor, dt_proj.bias.device)
            )
        )
    dt_proj.bias._no_reinit = True


def log_uniform_dt(size: int, dt_min: float, dt_max: float, floor: float, device=None) -> torch.Tensor:
    """``size`` step sizes log-uniform in ``[dt_min, dt_max]``, clamped below at ``floor``."""
    u = torch.rand(size, device=device)
    return torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)


def single_token(hidden_states: torch.Tensor, d_model: int) -> tuple[torch.Tensor, bool]:
    """Accept one token as ``(batch, d_model)`` or ``(batch, 1, d_model)``; return ``(batch, d_model)``
    and whether the middle dimension must be restored on output."""
    if isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3:
        check_tensor("hidden_states", hidden_states, (None, 1, d_model), layout="(batch, 1, d_model)")
        return hidden_states[:, 0], True
    check_tensor(
        "hidden_states", hidden_states, (None, d_model), layout="(batch, d_model) or (batch, 1, d_model)"
    )
    return hidden_states, False


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y``, computed stably as ``y + log(-expm1(-y))``."""
    return y + torch.log(-torch.expm1(-y))


def selective_scan_bidirectional(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    u_b,
    delta_b,
    A_b,
    B_b,
    C_b,
    D_b,
    delta_bias_b,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    backend: str = "auto",
):
    """VideoMamba's two scan directions with one gate: ``y = scan(u, ...) * silu(z) + flip(scan(u_b, ...)
    * silu(flip(z)))``.

    The forward direction takes the arguments of :func:`videostate.ssm.selective_scan.selective_scan`
    (``u, delta (batch, dim, L)``, ``A (dim, N)``, ``B, C (batch[, G], N, L)``, ``D, delta_bias
    (dim,)``, ``initial_state (batch, dim, N)``). The backward direction's ``u_b, delta_b, B_b, C_b``
    are computed from the time-reversed input and given in that reversed order; it starts from a zero
    state. ``z (batch, dim, L)`` is in the natural order. Returns ``y`` (and the forward direction's
    final state with ``return_final_state``).
    """
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_selective_scan_inputs(u_b, delta_b, A_b, B_b, C_b, D_b, z, delta_bias_b, None)
    if u_b.shape != u.shape or A_b.shape != A.shape:
        raise ValueError(
            f"the backward direction must match the forward one: u {tuple(u.shape)}, A {tuple(A.shape)}; "
            f"got u_b {tuple(u_b.shape)}, A_b {tuple(A_b.shape)}"
        )
    fn = resolve("selective_scan_bidirectional", backend, u.device)
    return fn(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        u_b,
        delta_b,
        A_b,
        B_b,
        C_b,
        D_b,
        delta_bias_b,
        delta_softplus=delta_softplus,
        initial_state=initial_state,
        return_final_state=return_final_state,
    )


def selective_scan_bidirectional_reference(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    u_b,
    delta_b,
    A_b,
    B_b,
    C_b,
    D_b,
    delta_bias_b,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """Two reference scans, the second over the reversed gate, its output flipped back and added."""
    out = selective_scan_reference(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state
    )
    y, final_state = out if return_final_state else (out, None)
    z_b = None if z is None else z.flip(-1)
    y = y + selective_scan_reference(u_b, delta_b, A_b, B_b, C_b, D_b, z_b, delta_bias_b, delta_softplus).flip(-1)
    return (y, final_state) if return_final_state else y


register("selective_scan_bidirectional", "reference", selective_scan_bidirectional_reference)


def linear_channels(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear`` over the features of ``x (batch, L, in)``, channel-major: ``(batch, out, L)``, a view of one
    product laid out ``(out, batch * L)``, so that every (batch, channel) row has its steps contiguous."""
    rows = rearrange(x, "b l i -> (b l) i")
    if linear.bias is None:
        out = torch.mm(linear.weight, rows.mT)
    else:
        out = torch.addmm(linear.bias[:, None], linear.weight, rows.mT)
    return rearrange(out, "o (b l) -> b o l", b=x.shape[0])


def linear_tokens(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(x)`` for ``x (batch, L, in)``, also read in place when it is a view of channel-major rows (its
    features strided), which ``F.linear`` would first copy token-major. The weight is transposed into a contiguous
    ``(in, out)``: with its transposed view cuBLAS takes an older, slower kernel for this layout (H100, bf16,
    VideoMamba-S's out_proj at batch 32: 0.31 ms)."""
    if x.dim() != 3 or x.stride(-1) == 1:
        return linear(x)
    weight = linear.weight.mT.contiguous().expand(x.shape[0], -1, -1)
    if linear.bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(linear.bias.expand(x.shape[0], x.shape[1], -1), x, weight)


class Mamba(nn.Module):
    """Mamba-1 mixer: ``(batch, L, d_model) -> (batch, L, d_model)``.

    Arguments and parameter names follow ``mamba_ssm.Mamba``; ``use_fast_path=False`` selects the
    reference ops (the result is the same model either way); ``bimamba`` is VideoMamba's flag.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        bimamba: bool = False,
        device=None,
        dtype=None,
    ):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.bimamba = bimamba

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        for suffix in ("", "_b") if bimamba else ("",):
            conv1d = nn.Conv1d(
                self.d_inner,
                self.d_inner,
                kernel_size=d_conv,
                groups=self.d_inner,
                padding=d_conv - 1,
                bias=conv_bias,
                **factory,
            )
            x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            if suffix == "":
                # VideoMamba keeps nn.Linear's default initialisation for dt_proj_b.
                init_dt_proj(dt_proj, self.dt_rank, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
            A = repeat(
                torch.arange(1, d_state + 1, dtype=torch.float32, device=device), "n -> d n", d=self.d_inner
            )
            A_log = nn.Parameter(torch.log(A).contiguous())
            A_log._no_weight_decay = True
            D = nn.Parameter(torch.ones(self.d_inner, device=device))
            D._no_weight_decay = True
            setattr(self, f"conv1d{suffix}", conv1d)
            setattr(self, f"x_proj{suffix}", x_proj)
            setattr(self, f"dt_proj{suffix}", dt_proj)
            setattr(self, "A_log" if suffix == "" else "A_b_log", A_log)
            setattr(self, f"D{suffix}", D)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @property
    def backend(self) -> str:
        return "auto" if self.use_fast_path else "reference"

    def direction(self, backward: bool) -> Direction:
        if backward:
            return Direction(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        return Direction(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MambaState:
        """Zero state; ``conv_state`` in ``dtype`` (default: the weights'), ``ssm_state`` at least float32."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return MambaState(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(
                batch_size,
                self.d_inner,
                self.d_state,
                device=device,
                dtype=torch.promote_types(dtype, torch.float32),
            ),
        )

    def forward(self, hidden_states: torch.Tensor, state: MambaState | None = None):
        """``hidden_states (batch, L, d_model)`` -> ``(batch, L, d_model)``, plus ``next_state`` when
        ``state`` is given."""
        y, next_state = self.gated_scan(hidden_states, state)
        out = linear_tokens(y, self.out_proj)
        return out if state is None else (out, next_state)

    def gated_scan(
        self, hidden_states: torch.Tensor, state: MambaState | None = None
    ) -> tuple[torch.Tensor, MambaState | None]:
        """The layer before its output projection: ``hidden_states (batch, L, d_model)`` -> the gated scan output
        ``y (batch, L, d_inner)`` (``forward`` is ``out_proj(y)``) and the next state (``None`` without ``state``).
        A caller that fuses the projection with what follows it starts from here."""
        check_tensor("hidden_states", hidden_states, (None, None, self.d_model), layout="(batch, L, d_model)")
        if state is not None:
            self._check_state(state, hidden_states.shape[0])
        tokens = self._scan_tokens(hidden_states, state)
        if tokens is not None:
            return tokens
        length = hidden_states.shape[1]
        pad = self._identity_pad(length, hidden_states.device)
        # channel-major, so that x and the gate z reach the convolution and the scan with their steps contiguous
        xz = linear_channels(F.pad(hidden_states, (0, 0, 0, pad)) if pad else hidden_states, self.in_proj)
        if pad and self.in_proj.bias is not None:
            xz[..., length:] = 0  # the padded steps' x is zero, as the reversed direction's convolution reads it
        x, z = xz.chunk(2, dim=1)
        if self.bimamba:
            y, next_state = self._bidirectional_scan(x, z, state, pad)
        else:
            y, next_state = self._scan(x, z, self.direction(backward=False), state, pad)
        return rearrange(y[..., :length], "b d l -> b l d"), None if state is None else next_state

    def _identity_pad(self, length: int, device: torch.device) -> int:
        """How many steps that leave the state unchanged the scan kernels would append to a sequence of ``length``
        (:func:`videostate.ssm.kernels.selective_scan.identity_pad`); 0 where the reference scan runs. The layer
        then pads its input itself, so that every tensor it makes for the scan has whole rows of the padded length
        and the kernels copy none of them."""
        op = "selective_scan_bidirectional" if self.bimamba else "selective_scan"
        if resolve_backend(op, self.backend, device) == "reference":
            return 0
        return kernel_module("selective_scan").identity_pad(length)

    def step(self, hidden_states: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token: ``(batch, d_model)`` or ``(batch, 1, d_model)`` -> same shape, and the next state."""
        hidden_states, squeeze = single_token(hidden_states, self.d_model)
        self._check_state(state, hidden_states.shape[0])
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        params = self.direction(backward=False)
        x_conv, conv_state = causal_conv1d_update(
            x,
            state.conv_state,
            rearrange(params.conv1d.weight, "d 1 w -> d w"),
            params.conv1d.bias,
            "silu",
            backend=self.backend,
        )
        delta, B, C = self._project(x_conv, params)
        A, D, dt_bias = self._scan_params(params)
        y, ssm_state = selective_state_update(
            state.ssm_state,
            x_conv,
            delta,
            A,
            B,
            C,
            D,
            z,
            dt_bias=dt_bias,
            dt_softplus=True,
            backend=self.backend,
        )
        if self.bimamba:  # the backward direction over a one-token chunk
            y_b, _ = self._scan(x[..., None], z[..., None], self.direction(backward=True), None, 0)
            y = y + y_b[..., 0]
        out = self.out_proj(y)
        return (out[:, None] if squeeze else out), MambaState(conv_state, ssm_state)

    def _scan_tokens(self, hidden_states: torch.Tensor, state: MambaState | None):
        """Inference of short sequences on CUDA (:mod:`videostate.ssm.kernels.mamba_tokens`): ``hidden_states
        (batch, L, d_model)`` -> ``(y (batch, L, d_inner), next_state)``, the values of the channel-major path without
        its layout copies; ``None`` where it does not apply (gradients, the CPU, long sequences, ``bimamba``)."""
        if self.bimamba or not self.use_fast_path:
            return None
        kernels = inference_kernel("mamba_tokens", hidden_states)
        if kernels is None or not kernels.applies(hidden_states.shape[1]):
            return None
        xz = self.in_proj(hidden_states)
        params = self.direction(backward=False)
        y, conv_state, ssm_state = kernels.mamba_scan_tokens(
            xz,
            rearrange(params.conv1d.weight, "d 1 w -> d w"),
            params.conv1d.bias,
            params.x_proj.weight,
            params.dt_proj.weight,
            params.dt_proj.bias,
            params.A_log,
            params.D,
            None if state is None else state.conv_state,
            None if state is None else state.ssm_state,
            final_state=state is not None,
        )
        return y, None if state is None else MambaState(conv_state, ssm_state.to(state.ssm_state.dtype))

    def _x_proj(self, x: torch.Tensor, params: Direction):
        """``x (..., d_inner)`` -> the low-rank ``dt (..., dt_rank)``, B and C ``(..., d_state)``."""
        return params.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)

    def _project(self, x: torch.Tensor, params: Direction):
        """``x (..., d_inner)`` -> delta ``(..., d_inner)`` (without bias), B and C ``(..., d_state)``."""
        dt, B, C = self._x_proj(x, params)
        return F.linear(dt, params.dt_proj.weight), B, C

    @staticmethod
    def _scan_params(params: Direction):
        """``A = -exp(A_log)``, ``D`` and the dt bias, in float32 (float64 in a float64 model)."""
        return (
            -torch.exp(at_least_float32(params.A_log)),
            at_least_float32(params.D),
            at_least_float32(params.dt_proj.bias),
        )

    def _scan_inputs(self, x, params: Direction, state: MambaState | None, pad: int, reverse: bool = False):
        """Convolution and projections of one direction: ``x (batch, d_inner, L)`` -> ``u, delta
        (batch, d_inner, L)``, ``B, C (batch, d_state, L)`` and the next conv state (with ``state``); with
        ``reverse``, those of the time-reversed ``x``, in that order (the convolution reads ``x`` reversed in place).

        The last ``pad`` steps of ``x`` are padding: their ``delta`` (the first ``pad`` with ``reverse``) is set to
        leave the state unchanged, and the conv state is the one after the sequence."""
        conv_weight = rearrange(params.conv1d.weight, "d 1 w -> d w")
        conv_state = None
        if state is None:
            u = causal_conv1d(x, conv_weight, params.conv1d.bias, "silu", reverse=reverse, backend=self.backend)
        else:
            u, conv_state = causal_conv1d(
                x, conv_weight, params.conv1d.bias, "silu", conv_state=state.conv_state, backend=self.backend
            )
            if pad:
                conv_state = next_conv_state(x[..., :-pad], state.conv_state, self.d_conv)
        delta, B, C = self._project_channels(u, params)
        if pad:
            delta[..., slice(None, pad) if reverse else slice(-pad, None)] = no_step_delta(delta.dtype)
        return u, delta, B, C, conv_state

    def _project_channels(self, u: torch.Tensor, params: Direction):
        """``u (batch, d_inner, L)`` -> ``delta (batch, d_inner, L)`` (without bias), ``B, C (batch, d_state, L)``.

        The products are made channel-major, so every row the scan reads has its steps contiguous without a copy
        (the scan kernels read such rows as vectors and strided ones step by step). H100, bf16, VideoMamba-Ti at
        batch 32 and 8 frames: with token-major products, layout copies and the launcher's padded copies, a pass ran
        19 copy kernels a layer, 28 of its 51 ms of kernels; with the layer's own padding (:meth:`gated_scan`) and
        channel-major products, one (the padded input), and 23 ms of kernels."""
        batch = u.shape[0]
        dt, B, C = torch.bmm(params.x_proj.weight.expand(batch, -1, -1), u).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1
        )
        return torch.bmm(params.dt_proj.weight.expand(batch, -1, -1), dt), B, C

    def _scan(self, x, z, params: Direction, state: MambaState | None, pad: int):
        """Convolution and selective scan of one direction: ``x, z (batch, d_inner, L)``."""
        u, delta, B, C, conv_state = self._scan_inputs(x, params, state, pad)
        A, D, dt_bias = self._scan_params(params)
        out = selective_scan(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias=dt_bias,
            delta_softplus=True,
            initial_state=None if state is None else state.ssm_state,
            return_final_state=state is not None,
            backend=self.backend,
        )
        return self._with_state(out, conv_state, state)

    def _bidirectional_scan(self, x, z, state: MambaState | None, pad: int):
        """Both directions, gated by one ``silu(z)``; the backward one runs over the time-reversed chunk
        from a zero state (its inputs stay in reversed order: the scan reads them so)."""
        forward, backward = self.direction(backward=False), self.direction(backward=True)
        u, delta, B, C, conv_state = self._scan_inputs(x, forward, state, pad)
        u_b, delta_b, B_b, C_b, _ = self._scan_inputs(x, backward, None, pad, reverse=True)
        A, D, dt_bias = self._scan_params(forward)
        A_b, D_b, dt_bias_b = self._scan_params(backward)
        out = selective_scan_bidirectional(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            dt_bias,
            u_b,
            delta_b,
            A_b,
            B_b,
            C_b,
            D_b,
            dt_bias_b,
            delta_softplus=True,
            initial_state=None if state is None else state.ssm_state,
            return_final_state=state is not None,
            backend=self.backend,
        )
        return self._with_state(out, conv_state, state)

    @staticmethod
    def _with_state(out, conv_state, state: MambaState | None):
        if state is None:
            return out, None
        y, ssm_state = out
        return y, MambaState(conv_state, ssm_state.to(state.ssm_state.dtype))

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be a MambaState (from init_state); got {type(state).__name__}")
        check_tensor(
            "state.conv_state",
            state.conv_state,
            (batch, self.d_inner, self.d_conv),
            layout="(batch, d_inner, d_conv)",
        )
        check_tensor(
            "state.ssm_state",
            state.ssm_state,
            (batch, self.d_inner, self.d_state),
            layout="(batch, d_inner, d_state)",
        )
