"""SSD (Mamba-2) chunked scan on the GPU: launchers and the autograd function around :mod:`.ssd_kernels`.

Same call signature as :func:`videostate.ssm.ssd.ssd_scan_reference`. The dt bias, softplus and clamp run
in PyTorch before the kernels (a ``(batch, L, heads)`` elementwise step, differentiated by autograd), and
so does the within-chunk cumulative sum of ``dt * A``; every pass over ``x``, ``z``, B, C and the output
is a Triton kernel. Float64 inputs run the reference (the kernels keep their state and sums in float32).

The kernels use their own chunk length: ``chunk_size`` rounded up to a power of two and kept within
``[16, 64]`` (``tl.dot`` needs 16 rows; 64 keeps a chunk's tiles in registers). Results do not depend on
it, as for the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from ..ssd import NO_LIMIT, discretize_dt, ssd_scan_reference
from .common import any_float64, next_power_of_2
from .ssd_kernels import (
    chunk_scan_bwd_dbc_kernel,
    chunk_scan_bwd_dx_kernel,
    chunk_scan_fwd_kernel,
    chunk_state_kernel,
    state_passing_bwd_kernel,
    state_passing_fwd_kernel,
)

MIN_CHUNK, MAX_CHUNK = 16, 64
# Columns of N per program in the kernels that split N (chunk states and the B/C gradients); the fewest
# programs the output kernel is given when it runs several heads per program; elements per program and
# chunks per tile in the state passing; warps of the chunk kernels (8 for the output and B/C
# gradient kernels: at 4, triton 3.6 on Hopper makes out-of-range shared memory accesses in them for
# headdim 16, N 64).
CONFIG = {
    "block_n": 64,
    "min_programs": 2048,
    "state_block": 128,
    "state_tile": 32,
    "num_warps": 4,
    "fwd_num_warps": 8,
    "dbc_num_warps": 8,
}


INT32_MAX = 2**31 - 1


def check_offsets(**tensors: torch.Tensor | None) -> None:
    """The kernels index within a batch element with int32 offsets (the batch offset is int64): each tensor's
    batch element must span fewer than ``2**31`` elements, and so must the contiguous ``(L, heads, headdim)``
    output and gradients, else a ValueError. (At a 4K frame pair's interleaved scan, 16.7M steps, Mamba-2's x,
    B and C, strided views of the convolution's ``(channels, L)`` map, span at most 64 * 16.7M; the
    convolution's kernels, which index the whole map, use int64 offsets.)"""
    x = tensors.get("x")
    if x is not None and x.shape[1:].numel() > INT32_MAX:
        raise ValueError(
            f"ssd_scan's kernels need L * heads * headdim < 2**31 per batch element; got x of shape "
            f"{tuple(x.shape)} (split the sequence and carry the state)"
        )
    for name, t in tensors.items():
        if t is None or not t.numel():
            continue
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True))
        if span > INT32_MAX:
            raise ValueError(
                f"ssd_scan's kernels need each batch element of {name} to span fewer than 2**31 elements; got "
                f"shape {tuple(t.shape)} with strides {t.stride()} (split the sequence and carry the state)"
            )


def _precision(x: torch.Tensor) -> str:
    """Float32 dots in full precision (the tensor cores' TF32 rounds to 10 bits of mantissa); half types use
    the tensor cores."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def kernel_chunk(chunk_size: int) -> int:
    return min(max(next_power_of_2(chunk_size), MIN_CHUNK), MAX_CHUNK)


def _s(t: torch.Tensor | None, dims: int) -> tuple[int, ...]:
    return (0,) * dims if t is None else tuple(t.stride())


def _D_strides(D: torch.Tensor | None) -> tuple[int, int]:
    """D per head ``(heads,)`` broadcasts over headdim with a zero stride."""
    if D is None:
        return (0, 0)
    return (D.stride(0), 0) if D.dim() == 1 else tuple(D.stride())


def _blocks(headdim: int, n: int) -> tuple[int, int]:
    return max(16, next_power_of_2(headdim)), max(16, next_power_of_2(n))


def _state_tiles(elements: int, n_chunks: int) -> tuple[int, int]:
    """Elements per program and chunks per tile of the state passing (no larger than needed; tiles of at
    least 2 chunks)."""
    tile = max(2, min(CONFIG["state_tile"], next_power_of_2(n_chunks)))
    return min(CONFIG["state_block"], next_power_of_2(elements)), tile


def _heads_per_program(heads_per_group: int, group_programs: int) -> int:
    """Heads of one group per program of the output kernel: the whole group, or halved while the launch
    (``group_programs`` programs with a whole group each) has fewer than ``CONFIG["min_programs"]``."""
    run = heads_per_group
    while run > 1 and group_programs * (heads_per_group // run) < CONFIG["min_programs"]:
        run = run // 2 if run % 2 == 0 else 1
    return run


def chunk_log_decay(dt: torch.Tensor, A: torch.Tensor, chunk: int) -> torch.Tensor:
    """``cumsum(dt * A)`` within each chunk, ``(batch, heads, chunks, chunk)`` float32; steps past ``L``
    add nothing."""
    batch, length, heads = dt.shape
    n_chunks = triton.cdiv(length, chunk)
    log_decay = F.pad(dt * A.float(), (0, 0, 0, n_chunks * chunk - length))
    return log_decay.view(batch, n_chunks, chunk, heads).cumsum(2).permute(0, 3, 1, 2).contiguous()


def chunk_states(x, B, dt, s, h0, chunk):
    """States entering every chunk ``(batch, chunks, heads, headdim, N)`` and the final state, float32."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2:]
    n_chunks = s.shape[2]
    block_p, block_n = _blocks(headdim, n)
    block_n = min(block_n, CONFIG["block_n"])
    states = torch.empty(batch, n_chunks, heads, headdim, n, device=x.device, dtype=torch.float32)
    final = torch.empty(batch, heads, headdim, n, device=x.device, dtype=torch.float32)
    chunk_state_kernel[(n_chunks, batch * heads, triton.cdiv(n, block_n))](
        x, B, x, dt, s, states,
        length, heads, heads // groups, n_chunks,
        *x.stride(), *B.stride(), *_s(None, 4), *dt.stride(),
        P=headdim, N=n, CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n,
        PRECISION=_precision(x), FORWARD=True, HAS_Z=False,
        num_warps=CONFIG["num_warps"],
    )  # fmt: skip
    h0 = None if h0 is None else h0.to(torch.float32).contiguous()
    block, tile = _state_tiles(headdim * n, n_chunks)
    state_passing_fwd_kernel[(batch * heads, triton.cdiv(headdim * n, block))](
        states, s, final if h0 is None else h0, final,
        heads, n_chunks, headdim * n,
        CHUNK=chunk, TILE=tile, BLOCK=block, HAS_H0=h0 is not None,
    )  # fmt: skip
    return states, final


def ssd_forward(x, dt, A, B, C, D, z, h0, chunk):
    """Returns ``(y, gate_in, final_state)``; ``gate_in`` is the output before the gate (``None`` without
    one)."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2:]
    s = chunk_log_decay(dt, A, chunk)
    n_chunks = s.shape[2]
    states, final = chunk_states(x, B, dt, s, h0, chunk)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    gate_in = None if z is None else torch.empty_like(y)
    block_p, block_n = _blocks(headdim, n)
    run = _heads_per_program(heads // groups, n_chunks * batch * groups)
    chunk_scan_fwd_kernel[(n_chunks, batch * heads // run)](
        x, B, C, x if z is None else z, x if D is None else D, dt, s, states, y, y if gate_in is None else gate_in,
        length, heads, heads // groups, run, n_chunks,
        *x.stride(), *B.stride(), *C.stride(), *_s(z, 4), *_D_strides(D), *dt.stride(), *y.stride(),
        P=headdim, N=n, CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n,
        PRECISION=_precision(x), HAS_D=D is not None, HAS_Z=z is not None,
        num_warps=CONFIG["fwd_num_warps"],
    )  # fmt: skip
    return y, gate_in, final


def ssd_backward(x, dt, A, B, C, D, z, h0, gate_in, dy, d_final, chunk):
    """Gradients ``(dx, ddt, dA, dB, dC, dD, dz, dh0)``; ddt, dA, dB, dC, dD and dh0 in float32."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2:]
    device, f32 = x.device, torch.float32
    s = chunk_log_decay(dt, A, chunk)
    n_chunks = s.shape[2]
    states, _ = chunk_states(x, B, dt, s, h0, chunk)
    block_p, block_n = _blocks(headdim, n)
    split_n = min(block_n, CONFIG["block_n"])
    dstates = torch.empty_like(states)
    chunk_state_kernel[(n_chunks, batch * heads, triton.cdiv(n, split_n))](
        dy, C, x if z is None else z, dt, s, dstates,
        length, heads, heads // groups, n_chunks,
        *dy.stride(), *C.stride(), *_s(z, 4), *dt.stride(),
        P=headdim, N=n, CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=split_n,
        PRECISION=_precision(x), FORWARD=False, HAS_Z=z is not None,
        num_warps=CONFIG["num_warps"],
    )  # fmt: skip
    dh0 = None if h0 is None else torch.empty(batch, heads, headdim, n, device=device, dtype=f32)
    d_final = None if d_final is None else d_final.to(f32).contiguous()
    block, tile = _state_tiles(headdim * n, n_chunks)
    state_passing_bwd_kernel[(batch * heads, triton.cdiv(headdim * n, block))](
        dstates, s, dstates if d_final is None else d_final, dstates if dh0 is None else dh0,
        heads, n_chunks, headdim * n,
        CHUNK=chunk, TILE=tile, BLOCK=block, HAS_DFINAL=d_final is not None, HAS_DH0=dh0 is not None,
    )  # fmt: skip
    dx = torch.empty(x.shape, device=device, dtype=x.dtype)
    dz = None if z is None else torch.empty(x.shape, device=device, dtype=z.dtype)
    ddt = torch.empty(batch, length, heads, device=device, dtype=f32)
    dD = None if D is None else torch.empty(batch, n_chunks, heads, headdim, device=device, dtype=f32)
    common = (*x.stride(), *B.stride(), *C.stride(), *_s(z, 4))
    chunk_scan_bwd_dx_kernel[(n_chunks, batch * heads)](
        x, B, C, x if z is None else z, x if D is None else D, dt, s, dstates, x if gate_in is None else gate_in, dy,
        dx, dx if dz is None else dz, ddt, ddt if dD is None else dD,
        length, heads, heads // groups, n_chunks,
        *common, *_D_strides(D), *dt.stride(), *dx.stride(), *dy.stride(),
        P=headdim, N=n, CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n,
        PRECISION=_precision(x), HAS_D=D is not None, HAS_Z=z is not None,
        num_warps=CONFIG["num_warps"],
    )  # fmt: skip
    dB = torch.zeros(batch, length, groups, n, device=device, dtype=f32)
    dC = torch.zeros_like(dB)
    dlog = torch.zeros_like(s)
    chunk_scan_bwd_dbc_kernel[(n_chunks, batch * heads, triton.cdiv(n, split_n))](
        x, B, C, x if z is None else z, dt, s, states, dstates, dy, dB, dC, dlog,
        length, heads, groups, heads // groups, n_chunks,
        *common, *dt.stride(), *dy.stride(),
        P=headdim, N=n, CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=split_n, PRECISION=_precision(x), HAS_Z=z is not None,
        num_warps=CONFIG["dbc_num_warps"],
    )  # fmt: skip
    # d(dt A) back to (batch, L, heads): a (batch, L, heads) float32 step, as fast in PyTorch.
    dlog = dlog.permute(0, 2, 3, 1).reshape(batch, n_chunks * chunk, heads)[:, :length]
    ddt = ddt + dlog * A.float()
    dA = (dlog * dt).sum((0, 1))
    if dD is not None:
        dD = dD.sum((0, 1)) if D.dim() == 2 else dD.sum((0, 1, 3))
    return dx, ddt, dA, dB, dC, dD, dz, dh0


def _cast(grad, like):
    return None if grad is None or like is None else grad.to(like.dtype)


class SSDScanFunction(torch.autograd.Function):
    """SSD over discretized ``dt`` (float32, after bias, softplus and clamp); returns ``(y, final_state)``."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, initial_states, chunk):
        ctx.set_materialize_grads(False)
        y, gate_in, final = ssd_forward(x, dt, A, B, C, D, z, initial_states, chunk)
        ctx.save_for_backward(x, dt, A, B, C, D, z, initial_states, gate_in)
        ctx.chunk = chunk
        return y, final

    @staticmethod
    def backward(ctx, dy, d_final):
        x, dt, A, B, C, D, z, initial_states, gate_in = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, ddt, dA, dB, dC, dD, dz, dh0 = ssd_backward(
            x, dt, A, B, C, D, z, initial_states, gate_in, dy, d_final, ctx.chunk
        )
        return (
            dx,
            ddt,
            dA.to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            _cast(dD, D),
            dz,
            _cast(dh0, initial_states),
            None,
        )


def ssd_scan_triton(
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
    """Triton SSD scan (see :func:`videostate.ssm.ssd.ssd_scan`)."""
    if any_float64(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return ssd_scan_reference(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, return_final_states
        )
    dot_dtype = x.dtype if x.dtype == B.dtype == C.dtype else torch.promote_types(x.dtype, B.dtype)
    dot_dtype = torch.promote_types(dot_dtype, C.dtype)
    # Contiguous: the gradient of dt is written with dt's strides.
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, torch.float32).contiguous()
    check_offsets(x=x, B=B, C=C, z=z, dt=dt)  # dt as the kernels read it
    y, final = SSDScanFunction.apply(
        x.to(dot_dtype), dt, A, B.to(dot_dtype), C.to(dot_dtype), D, z, initial_states, kernel_chunk(chunk_size)
    )
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y
