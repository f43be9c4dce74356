"""The streaming state-space core: scans, convolutions, norms and Mamba / Mamba-2 mixers.

Every op has a plain-PyTorch reference (the specification, runs everywhere, differentiable) and may
have fast backends behind the same signature, chosen by ``backend="auto"`` (see :mod:`.dispatch`).
"""

from .block import Block, MambaStack, StackState
from .causal_conv import causal_conv1d, causal_conv1d_update
from .dispatch import backends, fused_disabled, register, resolve
from .mamba import Mamba, MambaState
from .mamba2 import Mamba2, Mamba2State
from .norm import RMSNorm, RMSNormGated, rms_norm, rms_norm_gated
from .selective_scan import selective_scan, selective_state_update
from .ssd import ssd_scan, ssd_state_update
from .state import StreamState

__all__ = [
    "Block",
    "Mamba",
    "Mamba2",
    "Mamba2State",
    "MambaStack",
    "MambaState",
    "RMSNorm",
    "RMSNormGated",
    "StackState",
    "StreamState",
    "backends",
    "causal_conv1d",
    "causal_conv1d_update",
    "fused_disabled",
    "register",
    "resolve",
    "rms_norm",
    "rms_norm_gated",
    "selective_scan",
    "selective_state_update",
    "ssd_scan",
    "ssd_state_update",
]
