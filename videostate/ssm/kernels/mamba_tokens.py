"""Mamba's convolution and selective scan over token-major sequences, for inference.

:class:`videostate.ssm.Mamba` lays its sequences out channel-major, ``(batch, d_inner, L)``, as mamba_ssm does:
the convolution turns the input projection's ``(batch, L, 2 d_inner)`` rows into that layout and the scan's
output is turned back before the output projection. For sequences shorter than ``SHORT_LENGTH`` steps, which a
scan walks one step at a time reading every channel of the step together, both turns are wasted copies, and the
channel-major reads are strided. Here every tensor stays token-major: the convolution reads ``x`` in place from
the projection's rows and writes ``(batch, L, d_inner)``, ``x_proj`` and ``dt_proj`` read and write rows without
copies (``x_proj``'s rows led by zero rows that align B and C; up to ``FOLD_DT_MAX_INNER`` channels ``dt_proj`` is
folded into ``x_proj``, :func:`folds_dt_proj`), and the scan kernel reads ``u``, ``delta`` and ``z`` a step's
channels at a time and writes its output in the rows the output projection reads. The values are those of the
channel-major path (the folded ``delta`` up to the rounding of ``dt``). Forward only.

The scan kernel: a program owns ``BLOCK_D`` channels of one sequence, one lane per channel holding its N states in
registers, and walks time. A step reads one value of u, delta and z per channel and the step's B and C, which every
lane of the program needs: in bfloat16 with aligned rows (``PACKED``) they are read four states to a 64-bit word and
widened in registers (bfloat16 is the upper half of a float32), 2 N / 4 loads a step instead of 2 N. ``STORE_HT``
writes the final state, which an offline pass has no use for (``(batch, d_inner, N)`` float32, twice the output of a
bfloat16 scan over 32 steps). The rows are walked by pointers moved on a stride a step.

The kernel issues about as many instructions as the SM can (ptxas for sm_90: 190 a step for 16 states), and its
16 exponentials a step and channel keep the special-function units nearly as busy. On the GPU (``FAST_MATH``) the
softplus takes the hardware's base-2 logarithm and the gate its approximate division: 227 -> 190 instructions a
step. Giving each lane two or three channels of the token (shared B and C) cut that to 153 and 136 a channel but was
slower (fewer warps hide less latency, and the special-function units bound it), as was unrolling two steps. H100,
bf16, L = 32, N = 16, the depth model's eight scans of DA2-S at 518x518 (21904 sequences of 96 channels to 361 of
768): 1.31 ms (1.52 ms with the libdevice logarithm and a step's addresses computed from its index), against
2.16 ms for the channel-major step kernel reading the same rows.
"""

# Triton kernels build tuples by concatenation: its compiler does not accept starred unpacking.
# ruff: noqa: RUF005

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .causal_conv import causal_conv1d_tokens, next_conv_state
from .common import LOG2E, silu_hw, softplus_hw
from .selective_scan import runs_short_setting

BLOCK_D = 32  # channels per program: one warp, a lane per channel
# Widest d_inner whose dt_proj is folded into x_proj (folds_dt_proj). H100, bf16, 32 steps, the depth model's
# products at 518x518, standalone with the folded weight formed each call: DA2-S's rows of 96, 192 and 384 channels
# 0.21 -> 0.13, 0.16 -> 0.09 and 0.09 -> 0.08 ms; DA2-L's 512 channels (700k rows) 0.59 -> 0.66 ms and 1024
# channels 0.30 -> 0.51 ms. DA2-S's temporal modules replayed from a graph: 3.84 -> 3.73 ms.
FOLD_DT_MAX_INNER = 384


def applies(length: int) -> bool:
    """Whether sequences of ``length`` steps take this path: those the channel-major scan walks step by step."""
    return runs_short_setting(length)


def aligned_lead(dt_rank: int, d_state: int) -> int:
    """Zero rows put before ``x_proj``'s ``(dt, B, C)`` rows so that its output rows, and B and C within them,
    start at multiples of 8 elements: the product then runs cuBLAS's aligned kernels (H100, bf16, 700k rows of
    96 channels: 0.15 -> 0.07 ms) and the scan reads B and C as 64-bit words (``PACKED``)."""
    return -dt_rank % 8 if d_state % 8 == 0 else 0


def folds_dt_proj(d_inner: int) -> bool:
    """Whether ``dt_proj`` is folded into ``x_proj``: one product of ``u`` with the rows
    ``dt_proj.weight @ x_proj.weight[:dt_rank]`` and ``x_proj``'s B and C rows gives ``delta`` directly, so the
    low-rank ``dt`` is neither written nor read back (its product, of only ``dt_rank`` input channels, runs cuBLAS's
    unaligned kernels). The folded product has ``d_inner`` more output columns; up to ``FOLD_DT_MAX_INNER`` it stays
    bound by memory."""
    return d_inner <= FOLD_DT_MAX_INNER


def delta_and_states(
    u: torch.Tensor, x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, d_state: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``delta = dt_proj(dt)`` (before its bias and softplus) ``(batch, L, d_inner)``, and ``B``, ``C`` ``(batch, L,
    d_state)`` with ``(dt, B, C) = x_proj(u)``: views of one product's rows, B and C starting at multiples of 8."""
    d_inner, dt_rank = u.shape[-1], dt_proj_weight.shape[1]
    if folds_dt_proj(d_inner):
        lead = -d_inner % 8 if d_state % 8 == 0 else 0
        rows = [
            dt_proj_weight @ x_proj_weight[:dt_rank],
            x_proj_weight.new_zeros(lead, d_inner),
            x_proj_weight[dt_rank:],
        ]
        delta, _, B, C = F.linear(u, torch.cat(rows)).split([d_inner, lead, d_state, d_state], dim=-1)
        return delta, B, C
    lead = aligned_lead(dt_rank, d_state)
    weight = F.pad(x_proj_weight, (0, 0, lead, 0)) if lead else x_proj_weight
    _, dt, B, C = F.linear(u, weight).split([lead, dt_rank, d_state, d_state], dim=-1)
    return F.linear(dt, dt_proj_weight), B, C


@triton.jit
def _step_states(row, N: tl.constexpr, PACKED: tl.constexpr):
    """``N`` consecutive values from ``row`` (a pointer tile, the same address in every lane) as a tuple of float32
    tiles; ``PACKED``: bfloat16 read four to a 64-bit word (``row`` 8-byte aligned)."""
    values = ()
    if PACKED:
        words = row.to(tl.pointer_type(tl.int64))
        for q in tl.static_range(N // 4):
            word = tl.load(words + q)
            for half in tl.static_range(2):
                bits = (word >> (32 * half)).to(tl.int32)
                low, high = (bits << 16).to(tl.float32, bitcast=True), (bits & -65536).to(tl.float32, bitcast=True)
                values = values + (low, high)
    else:
        for n in tl.static_range(N):
            values = values + (tl.load(row + n).to(tl.float32),)
    return values


@triton.jit
def scan_tokens_kernel(
    u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_log_ptr, D_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
    dim, L,
    su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sC_b, sC_l, sy_b, sy_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, PACKED: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    FAST_MATH: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]  # (BLOCK_D, 1): a lane per channel
    d_mask = d < dim
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    A2 = ()
    hs = ()
    for n in tl.static_range(N):
        A_log = tl.load(A_log_ptr + d * N + n, mask=d_mask, other=0.0).to(tl.float32)
        A2 = A2 + (-tl.exp(A_log) * LOG2E,)  # A = -exp(A_log), for exp2
        h = tl.zeros((BLOCK_D, 1), tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + (b * dim + d) * N + n, mask=d_mask, other=0.0)
        hs = hs + (h,)
    # a step's rows, moved on by a stride a step
    B_row = B_ptr + b * sB_b + 0 * d
    C_row = C_ptr + b * sC_b + 0 * d
    u_row = u_ptr + b * su_b + d
    z_row = z_ptr + b * sz_b + d
    dt_row = dt_ptr + b * sdt_b + d
    y_row = y_ptr + b * sy_b + d
    for _ in range(L):
        u = tl.load(u_row, mask=d_mask, other=0.0).to(tl.float32)
        z = tl.load(z_row, mask=d_mask, other=0.0).to(tl.float32)
        dt = softplus_hw(tl.load(dt_row, mask=d_mask, other=0.0).to(tl.float32) + bias, FAST_MATH)
        Bs = _step_states(B_row, N, PACKED)
        Cs = _step_states(C_row, N, PACKED)
        dtu = dt * u
        y = Dv * u
        new = ()
        for n in tl.static_range(N):
            h = tl.exp2(dt * A2[n]) * hs[n] + dtu * Bs[n]
            y += h * Cs[n]
            new = new + (h,)
        hs = new
        tl.store(y_row, (y * silu_hw(z, FAST_MATH)).to(y_ptr.dtype.element_ty), mask=d_mask)
        B_row += sB_l
        C_row += sC_l
        u_row += su_l
        z_row += sz_l
        dt_row += sdt_l
        y_row += sy_l
    if STORE_HT:
        for n in tl.static_range(N):
            tl.store(hT_ptr + (b * dim + d) * N + n, hs[n], mask=d_mask)


def _packed(B: torch.Tensor, C: torch.Tensor) -> bool:
    """Whether the kernel can read a step's B and C ``(batch, L, N)`` four states to a 64-bit word: bfloat16, the
    states contiguous, N and every row start a multiple of 4 elements (8 bytes)."""
    return all(
        t.dtype == torch.bfloat16
        and t.stride(-1) == 1
        and t.shape[-1] % 4 == 0
        and all(stride % 4 == 0 for stride in t.stride()[:2])
        and t.data_ptr() % 8 == 0
        for t in (B, C)
    )


def scan_tokens(
    u: torch.Tensor,
    delta: torch.Tensor,
    z: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated selective scan with softplus(delta + dt_bias) over token-major rows.

    Args:
        u, delta, z: ``(batch, L, d_inner)``, channels at stride 1 (views of wider rows are read in place).
        B, C: ``(batch, L, d_state)``, states at stride 1.
        A_log: ``(d_inner, d_state)``, ``A = -exp(A_log)``; D, dt_bias ``(d_inner,)``: any float dtype, taken in
            float32 as they are read (a bfloat16 model's parameters need no cast of their own).
        initial_state: ``(batch, d_inner, d_state)`` float32 or ``None`` (zeros).
        final_state: whether to write and return the final state.

    Returns:
        ``y (batch, L, d_inner)`` contiguous in ``u``'s dtype, and the final state ``(batch, d_inner, d_state)``
        in float32 (``None`` with ``final_state=False``).
    """
    batch, length, dim = u.shape
    n = A_log.shape[1]
    for name, t in (("delta", delta), ("z", z)):
        if t.shape != u.shape or t.stride(-1) != 1:
            raise ValueError(f"{name} must have shape {tuple(u.shape)} with channels at stride 1; got {tuple(t.shape)}")
    states_ok = B.shape == C.shape == (batch, length, n) and B.stride(-1) == C.stride(-1) == 1
    if u.stride(-1) != 1 or not states_ok:
        raise ValueError(
            f"u (batch, L, d_inner) and B, C ({batch}, {length}, {n}) must have their last dimension at stride 1; "
            f"got u {tuple(u.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    y = torch.empty(batch, length, dim, device=u.device, dtype=u.dtype)
    last = torch.empty((batch, dim, n) if final_state else (1,), device=u.device, dtype=torch.float32)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    scan_tokens_kernel[(batch, triton.cdiv(dim, BLOCK_D))](
        u, delta, z, B, C, A_log.contiguous(), D.contiguous(), dt_bias.contiguous(),
        last if h0 is None else h0, y, last, dim, length,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z.stride(0), z.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        N=n, BLOCK_D=BLOCK_D, PACKED=_packed(B, C), HAS_H0=h0 is not None, STORE_HT=final_state,
        FAST_MATH=u.is_cuda, num_warps=1,
    )  # fmt: skip
    return y, last if final_state else None


def mamba_scan_tokens(
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    conv_state: torch.Tensor | None = None,
    ssm_state: torch.Tensor | None = None,
    *,
    final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The gated selective scan of one Mamba direction from its input projection.

    Args:
        xz: ``(batch, L, 2 * d_inner)``, the input projection's output (``x`` then ``z``).
        conv_weight: ``(d_inner, d_conv)``; conv_bias ``(d_inner,)`` or ``None``.
        x_proj_weight: ``(dt_rank + 2 * d_state, d_inner)``; dt_proj_weight ``(d_inner, dt_rank)``.
        dt_bias, D: ``(d_inner,)``; A_log: ``(d_inner, d_state)``, ``A = -exp(A_log)`` (float32 or the model's
            dtype: the scan reads them in float32).
        conv_state: ``(batch, d_inner, d_conv)`` or ``None`` (zeros); ssm_state ``(batch, d_inner, d_state)``
            or ``None`` (zeros).
        final_state: whether to return the final scan state; an offline pass skips writing it.

    Returns:
        ``y (batch, L, d_inner)`` in ``xz``'s dtype, the next conv state (contiguous, in ``conv_state``'s dtype;
        ``None`` without ``conv_state``) and the final scan state ``(batch, d_inner, d_state)`` in float32
        (``None`` with ``final_state=False``).
    """
    d_inner = conv_weight.shape[0]
    d_state = A_log.shape[1]
    if xz.dim() != 3 or xz.shape[-1] != 2 * d_inner:
        raise ValueError(f"xz must have shape (batch, L, {2 * d_inner}); got {tuple(xz.shape)}")
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    u = causal_conv1d_tokens(x, conv_weight, conv_bias, conv_state)
    delta, B, C = delta_and_states(u, x_proj_weight, dt_proj_weight, d_state)
    y, last = scan_tokens(u, delta, z, B, C, A_log, D, dt_bias, ssm_state, final_state)
    # compact, so that a carried state does not keep the whole input projection alive
    next_conv = None if conv_state is None else next_conv_state(x.mT, conv_state, conv_weight.shape[1]).contiguous()
    return y, next_conv, last
