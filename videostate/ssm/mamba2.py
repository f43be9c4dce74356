"""Mamba-2 mixer with mamba_ssm's parameters (``in_proj, conv1d, dt_bias, A_log, D, norm, out_proj``).

Streaming contract as :class:`videostate.ssm.Mamba`: ``init_state``, ``forward(x, state=None)`` and
``step(x, state)``; a sequence run in chunks of any sizes with the carried state equals one offline
pass.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .causal_conv import causal_conv1d, causal_conv1d_update
from .mamba import inverse_softplus, log_uniform_dt, single_token
from .norm import RMSNormGated
from .ssd import ssd_scan, ssd_state_update
from .state import StreamState
from .validation import at_least_float32, check_tensor


@dataclasses.dataclass
class Mamba2State(StreamState):
    """State of one :class:`Mamba2` mixer.

    Attributes:
        conv_state: ``(batch, conv_dim, d_conv)`` with ``conv_dim = d_ssm + 2 * ngroups * d_state``.
        ssm_state: ``(batch, nheads, headdim, d_state)``.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba2(nn.Module):
    """Mamba-2 mixer: ``(batch, L, d_model) -> (batch, L, d_model)``.

    Arguments follow ``mamba_ssm.Mamba2`` (without tensor parallelism); ``use_fast_path=False``
    selects the reference ops. ``d_ssm < d_inner`` adds mamba_ssm's gated-MLP channels.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
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
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm % headdim:
            raise ValueError(f"d_ssm={self.d_ssm} must be a multiple of headdim={headdim}")
        self.ngroups = ngroups
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads={self.nheads} must be a multiple of ngroups={ngroups}")
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.d_mlp = self.d_inner - self.d_ssm
        self.conv_dim = self.d_ssm + 2 * ngroups * d_state

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        dt = log_uniform_dt(self.nheads, dt_min, dt_max, dt_init_floor, device)
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.dt_bias._no_weight_decay = True
        low, high = A_init_range
        if not 0 < low <= high:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high; got {A_init_range}")
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(low, high)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(
                self.d_ssm,
                eps=1e-5,
                norm_before_gate=norm_before_gate,
                group_size=self.d_ssm // ngroups,
                **factory,
            )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @property
    def backend(self) -> str:
        return "auto" if self.use_fast_path else "reference"

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Mamba2State:
        """Zero state; ``conv_state`` in ``dtype`` (default: the weights'), ``ssm_state`` at least float32."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return Mamba2State(
            conv_state=torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(
                batch_size,
                self.nheads,
                self.headdim,
                self.d_state,
                device=device,
                dtype=torch.promote_types(dtype, torch.float32),
            ),
        )

    def _split_projection(self, zxbcdt: torch.Tensor):
        """``(..., d_in_proj)`` -> z0, x0 ``(..., d_mlp)``, z ``(..., d_ssm)``, xBC ``(..., conv_dim)``,
        dt ``(..., nheads)``."""
        return zxbcdt.split([self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _ssm_params(self):
        D = at_least_float32(self.D)
        if self.D_has_hdim:
            D = rearrange(D, "(h p) -> h p", p=self.headdim)
        return -torch.exp(at_least_float32(self.A_log)), D

    def _output(self, y, z, z0, x0):
        """Gate (or gated norm), gated-MLP channels, output projection; ``y, z (..., d_ssm)``."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def forward(self, hidden_states: torch.Tensor, state: Mamba2State | None = None):
        """``hidden_states (batch, L, d_model)`` -> ``(batch, L, d_model)``, plus ``next_state`` when
        ``state`` is given."""
        check_tensor("hidden_states", hidden_states, (None, None, self.d_model), layout="(batch, L, d_model)")
        if state is not None:
            self._check_state(state, hidden_states.shape[0])
        z0, x0, z, xBC, dt = self._split_projection(self.in_proj(hidden_states))
        conv_weight = rearrange(self.conv1d.weight, "d 1 w -> d w")
        xBC = rearrange(xBC, "b l c -> b c l")
        if state is None:
            xBC = causal_conv1d(xBC, conv_weight, self.conv1d.bias, "silu", backend=self.backend)
        else:
            xBC, conv_state = causal_conv1d(
                xBC, conv_weight, self.conv1d.bias, "silu", conv_state=state.conv_state, backend=self.backend
            )
        x, B, C = rearrange(xBC, "b c l -> b l c").split(
            [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1
        )
        A, D = self._ssm_params()
        out = ssd_scan(
            rearrange(x, "b l (h p) -> b l h p", p=self.headdim),
            dt,
            A,
            rearrange(B, "b l (g n) -> b l g n", g=self.ngroups),
            rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            chunk_size=self.chunk_size,
            D=D,
            z=None if self.rmsnorm else rearrange(z, "b l (h p) -> b l h p", p=self.headdim),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            initial_states=None if state is None else state.ssm_state,
            return_final_states=state is not None,
            backend=self.backend,
        )
        y, ssm_state = (out, None) if state is None else out
        out = self._output(rearrange(y, "b l h p -> b l (h p)"), z, z0, x0)
        if state is None:
            return out
        return out, Mamba2State(conv_state, ssm_state.to(state.ssm_state.dtype))

    def step(self, hidden_states: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """One token: ``(batch, d_model)`` or ``(batch, 1, d_model)`` -> same shape, and the next state."""
        hidden_states, squeeze = single_token(hidden_states, self.d_model)
        self._check_state(state, hidden_states.shape[0])
        z0, x0, z, xBC, dt = self._split_projection(self.in_proj(hidden_states))
        xBC, conv_state = causal_conv1d_update(
            xBC,
            state.conv_state,
            rearrange(self.conv1d.weight, "d 1 w -> d w"),
            self.conv1d.bias,
            "silu",
            backend=self.backend,
        )
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A, D = self._ssm_params()
        y, ssm_state = ssd_state_update(
            state.ssm_state,
            rearrange(x, "b (h p) -> b h p", p=self.headdim),
            dt,
            A,
            rearrange(B, "b (g n) -> b g n", g=self.ngroups),
            rearrange(C, "b (g n) -> b g n", g=self.ngroups),
            D=D,
            z=None if self.rmsnorm else rearrange(z, "b (h p) -> b h p", p=self.headdim),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            backend=self.backend,
        )
        out = self._output(rearrange(y, "b h p -> b (h p)"), z, z0, x0)
        return (out[:, None] if squeeze else out), Mamba2State(conv_state, ssm_state)

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, Mamba2State):
            raise TypeError(f"state must be a Mamba2State (from init_state); got {type(state).__name__}")
        check_tensor(
            "state.conv_state",
            state.conv_state,
            (batch, self.conv_dim, self.d_conv),
            layout="(batch, conv_dim, d_conv)",
        )
        check_tensor(
            "state.ssm_state",
            state.ssm_state,
            (batch, self.nheads, self.headdim, self.d_state),
            layout="(batch, nheads, headdim, d_state)",
        )
