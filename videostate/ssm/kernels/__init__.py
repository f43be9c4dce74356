"""Triton kernels behind :mod:`videostate.ssm`'s dispatch (backend name ``"triton"``).

Importing this package registers every kernel; :func:`videostate.ssm.dispatch.resolve` does so on
CUDA when Triton is installed. Nothing outside this package imports Triton.
"""

from __future__ import annotations

from ..dispatch import register
from .causal_conv import causal_conv1d_triton, causal_conv1d_update_triton
from .common import cuda_available
from .norm import rms_norm_gated_triton, rms_norm_triton
from .selective_scan import selective_scan_bidirectional_triton, selective_scan_triton
from .ssd import ssd_scan_triton
from .state_update import selective_state_update_triton, ssd_state_update_triton

BACKEND = "triton"

register("selective_scan", BACKEND, selective_scan_triton, cuda_available)
register("selective_scan_bidirectional", BACKEND, selective_scan_bidirectional_triton, cuda_available)
register("causal_conv1d", BACKEND, causal_conv1d_triton, cuda_available)
register("causal_conv1d_update", BACKEND, causal_conv1d_update_triton, cuda_available)
register("rms_norm", BACKEND, rms_norm_triton, cuda_available)
register("rms_norm_gated", BACKEND, rms_norm_gated_triton, cuda_available)
register("selective_state_update", BACKEND, selective_state_update_triton, cuda_available)
register("ssd_state_update", BACKEND, ssd_state_update_triton, cuda_available)
register("ssd_scan", BACKEND, ssd_scan_triton, cuda_available)
