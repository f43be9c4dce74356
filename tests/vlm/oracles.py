"""Straightforward per-video implementations of VLM² pieces, written from the formulas, as test oracles."""

from __future__ import annotations

import torch
from torch import nn


def naive_mha(attn: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of one video from the module's weights: ``query (N, D)``, ``keys (K, D)``."""
    d = attn.embed_dim
    h = attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    q = query @ wq.T + bq
    k = keys @ wk.T + bk
    v = keys @ wv.T + bv
    heads = []
    hd = d // h
    for i in range(h):
        sl = slice(i * hd, (i + 1) * hd)
        scores = (q[:, sl] @ k[:, sl].T) / hd**0.5
        heads.append(torch.softmax(scores, dim=-1) @ v[:, sl])
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def naive_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two whole frames; a zero frame (the first M_t, read from empty memories) has similarity 0."""
    a, b = a.detach().flatten(), b.detach().flatten()
    norms = a.norm() * b.norm()
    return 0.0 if norms == 0 else float((a @ b) / norms)


def algorithm1_video(
    module,
    frames: torch.Tensor,
    working: list | None = None,
    episodic: list | None = None,
    record: list | None = None,
    mode: str = "dual",
):
    """Algorithm 1 on one video ``frames (T, N, D)`` with Python lists as memories.

    ``mode``: ``"dual"``; ``"working_only"`` (``M = M^w``, lines 1 and 8-14 only, the episodic list stays
    empty); ``"episodic_only"`` (``M = M^e``, lines 2 and 15-24 only, the episodic memory stores ``M``,
    the working list stays empty).

    Returns ``(enhanced (T, N, D), working, episodic)``. ``record``: a list that gets, per frame, a dict with
    the mean gate (1 or 0 without a gate), ``|M^w|``/``|M^e|`` per token (NaN for a memory the mode lacks),
    the deleted episodic position (-1 for none), its cosine and which frames the episodic memory holds
    afterwards.
    """
    uses_working, uses_episodic = mode != "episodic_only", mode != "working_only"
    held = [-2] * len(episodic or [])
    working = [] if working is None else list(working)
    episodic = [] if episodic is None else list(episodic)
    outputs = []
    for t, H in enumerate(frames):
        M_w = M_e = None
        if uses_working:
            M_w = naive_mha(module.working_attention, H, torch.cat(working)) if working else torch.zeros_like(H)
        if uses_episodic:
            M_e = naive_mha(module.episodic_attention, H, torch.cat(episodic)) if episodic else torch.zeros_like(H)
        if mode == "dual":
            lin1, lin2 = module.gate[0], module.gate[2]
            hidden = torch.cat([M_w, M_e], dim=-1) @ lin1.weight.T + lin1.bias
            hidden = torch.nn.functional.gelu(hidden)
            gamma = torch.sigmoid(hidden @ lin2.weight.T + lin2.bias)
            M = gamma * M_w + (1 - gamma) * M_e
            gate = float(gamma.detach().mean())
        else:
            M, gate = (M_w, 1.0) if uses_working else (M_e, 0.0)
        if uses_working:
            if len(working) >= module.L_w:
                working.pop(0)
            working.append(H)
        deleted, similarity = -1, float("nan")
        if uses_episodic:
            if len(episodic) >= module.L_e:
                sims = [naive_cos(M, e) for e in episodic]
                deleted = max(range(len(sims)), key=lambda i: sims[i])
                similarity = sims[deleted]
                episodic.pop(deleted)
                held.pop(deleted)
            episodic.append(M)
            held.append(t)
        outputs.append(H + M)
        if record is not None:
            record.append(
                {
                    "gate": gate,
                    "working_norm": float("nan") if M_w is None else float(M_w.detach().norm(dim=-1).mean()),
                    "episodic_norm": float("nan") if M_e is None else float(M_e.detach().norm(dim=-1).mean()),
                    "replaced": deleted,
                    "similarity": similarity,
                    "held": list(held),
                    "memory": M,
                }
            )
    enhanced = torch.stack(outputs) if outputs else frames
    return enhanced, working, episodic
