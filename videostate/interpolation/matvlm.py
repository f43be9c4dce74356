"""MaTVLM-style initialisation of a Mamba-2 mixer from an attention layer (Li et al. 2025).

Mamba-2's SSD is linear attention with decay: ``C`` plays the query, ``B`` the key and ``x`` the
value. MaTVLM copies ``Q -> C``, ``K -> B``, ``V -> x`` rows of ``in_proj`` and ``o_proj -> out_proj``;
``z``, ``dt``, ``A``, ``D``, the convolution and the gated norm keep their own initialisation. The
copy is exact when ``d_ssm = dim`` (``expand=1``) and ``ngroups * d_state = dim``; otherwise the
overlapping block is copied and the report says which rows or columns stay as they were. Biases of
the attention projections have no counterpart when the Mamba-2 projections have none, and are
reported as not mapped.
"""

from __future__ import annotations

import dataclasses

import torch

from ..ssm import Mamba2
from .attention import GatedWindowAttention


@dataclasses.dataclass
class MaTVLMReport:
    """What one initialisation did.

    Attributes:
        name: the block it describes.
        copied: ``"target <- source [rows x cols]"`` for every copied block.
        not_mapped: everything of either layer that was not transferred, and why.
        exact: True when Q, K, V and the output projection weights were copied whole, each filling
            its whole target.
    """

    name: str
    exact: bool = False
    copied: list[str] = dataclasses.field(default_factory=list)
    not_mapped: list[str] = dataclasses.field(default_factory=list)


@torch.no_grad()
def init_mamba2_from_attention(mamba: Mamba2, attn: GatedWindowAttention, name: str = "") -> MaTVLMReport:
    if not isinstance(mamba, Mamba2) or not isinstance(attn, GatedWindowAttention):
        raise TypeError(f"expected (Mamba2, GatedWindowAttention); got ({type(mamba).__name__}, {type(attn).__name__})")
    if mamba.d_model != attn.dim:
        raise ValueError(f"Mamba2 d_model={mamba.d_model} must equal the attention dim={attn.dim}")
    dim = attn.dim
    bc = mamba.ngroups * mamba.d_state
    report = MaTVLMReport(name, exact=mamba.d_ssm == dim and bc == dim and mamba.d_mlp == 0)
    q, k, v = attn.qkv.weight.split(dim, dim=0)
    w = mamba.in_proj.weight
    x_start = 2 * mamba.d_mlp + mamba.d_ssm
    segments = (
        ("x", x_start, mamba.d_ssm, v, "V"),
        ("B", x_start + mamba.d_ssm, bc, k, "K"),
        ("C", x_start + mamba.d_ssm + bc, bc, q, "Q"),
    )
    for target, start, size, source, source_name in segments:
        rows = min(size, dim)
        w[start : start + rows] = source[:rows]
        report.copied.append(f"in_proj.{target} <- qkv.{source_name} [{rows} x {dim}]")
        if size > dim:
            report.not_mapped.append(f"in_proj.{target} rows {dim}..{size - 1}: no {source_name} rows left (keep init)")
        if dim > size:
            report.not_mapped.append(f"qkv.{source_name} rows {size}..{dim - 1}: in_proj.{target} has only {size}")
    out_cols = min(mamba.out_proj.weight.shape[1], dim)
    mamba.out_proj.weight[:, mamba.d_mlp : mamba.d_mlp + out_cols] = attn.proj.weight[:, :out_cols]
    report.copied.append(f"out_proj <- proj [{dim} x {out_cols}]")
    if mamba.d_ssm > dim:
        report.not_mapped.append(
            f"out_proj.weight columns {dim}..{mamba.d_ssm - 1}: proj has only {dim} inputs (keep init)"
        )
    if mamba.d_mlp:
        report.not_mapped.append(f"in_proj / out_proj gated-MLP channels ({mamba.d_mlp}): no attention counterpart")
    if attn.qkv.bias is not None:
        if mamba.in_proj.bias is None:
            report.not_mapped.append("qkv.bias: Mamba2 in_proj has no bias")
        else:
            report.not_mapped.append("qkv.bias: not copied (MaTVLM maps weights only)")
    if mamba.out_proj.bias is None:
        report.not_mapped.append("proj.bias: Mamba2 out_proj has no bias")
    else:
        mamba.out_proj.bias.copy_(attn.proj.bias)
        report.copied.append("out_proj.bias <- proj.bias")
    report.not_mapped.append(f"gate ({attn.gate_kind}): attention-only, no Mamba2 counterpart")
    report.not_mapped.append("z, dt, dt_bias, A_log, D, conv1d, norm: Mamba2-only, keep their initialisation")
    return report
