"""Softmax attention in parts: each part returns its output and log-sum-exp, and the parts merge exactly.

Softmax attention of queries over the union of disjoint key sets ``S_1 … S_k`` is the mixture of the
attentions over each set, weighted by their normalisers: with ``o_s`` the attention over ``S_s`` alone and
``ℓ_s`` the log-sum-exp of its scores,

    out = Σ_s exp(ℓ_s − ℓ) o_s,    ℓ = log Σ_s exp(ℓ_s).

The episodic memory uses this to read the entries stored before a run of frames with one batched call for
all of them (long key sequences, many query blocks), leaving only the entries written during the run to the
frame-by-frame reads.

Inference only: the fused kernels return the log-sum-exp without a gradient.
"""

from __future__ import annotations

import torch

Part = tuple[torch.Tensor, torch.Tensor]  # an attention output and its log-sum-exp

_CUDNN_FAILED: set[tuple[torch.device, torch.dtype]] = set()


def _fused_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    aten = torch.ops.aten
    if q.device.type != "cuda":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    if q.dtype == torch.float32:
        out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse
    key = (q.device, q.dtype)
    if key not in _CUDNN_FAILED:
        try:
            return aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
        except RuntimeError:  # no cuDNN attention for this build, card or shape: flash attention instead
            _CUDNN_FAILED.add(key)
    return aten._scaled_dot_product_flash_attention(q, k, v)[:2]


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q (B, H, n, e)`` over ``k, v (B, H, m, e)`` by a fused kernel (on CUDA cuDNN's
    for half precision, as scaled_dot_product_attention picks on Hopper, else flash; memory-efficient for
    float32; the CPU flash kernel on CPU). Returns ``(out (B, H, n, e), lse (B, H, n))``, the log-sum-exp
    float32 (float64 for float64 inputs)."""
    out, lse = _fused_with_lse(q, k, v)
    # cuDNN returns (B, H, n, 1); the memory-efficient kernel pads the queries to a multiple of its block
    return out, lse.flatten(2)[..., : q.shape[2]]


def merge_attention(first: Part, second: Part) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from each set's ``(out (..., n, e), lse (..., n))``:
    ``out_2 + σ(ℓ_1 − ℓ_2) (out_1 − out_2)``, since the first set's share of the softmax mass is
    ``exp(ℓ_1) / (exp(ℓ_1) + exp(ℓ_2)) = σ(ℓ_1 − ℓ_2)``. One pass over the outputs, with the weight in their
    dtype."""
    (out_1, lse_1), (out_2, lse_2) = first, second
    weight = torch.sigmoid(lse_1 - lse_2).to(out_1.dtype)
    return torch.lerp(out_2, out_1, weight[..., None])
