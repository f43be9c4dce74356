"""The Triton window attention against :class:`GatedWindowAttention`'s PyTorch path (window partition, SDPA,
Swin's mask on the shifted border windows, gate), computed in float64.

On CUDA these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU the same tests run on CPU tensors
through Triton's interpreter (small maps).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, INTERPRET, KERNEL_DTYPES, MARKS, RUNS
from videostate.interpolation.attention import GatedWindowAttention

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels.window_attention import window_attention_triton

# (batch, height, width, dim, heads, window, shift, gate)
CASES = [
    (2, 16, 24, 32, 2, 8, 0, "headwise"),
    (2, 16, 24, 32, 2, 8, 4, "headwise"),
    (1, 24, 16, 64, 4, 8, 4, "elementwise"),
    (3, 12, 18, 24, 3, 6, 3, "headwise"),  # 36 tokens per window (padded to 64), head_dim 8 (padded to 16)
    (1, 8, 8, 32, 2, 8, 0, "elementwise"),  # one window
]
DTYPES = KERNEL_DTYPES
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def attention_and_map(batch, height, width, dim, heads, window, shift, gate, seed=0):
    torch.manual_seed(seed)
    attn = GatedWindowAttention(dim, heads, window, shift, gate=gate).double().to(DEVICE)
    for p in attn.parameters():  # gates and scores far from zero, so the gate and softmax matter
        torch.nn.init.normal_(p, std=0.6)
    x = torch.randn(batch, height, width, dim, device=DEVICE, dtype=torch.float64)
    return attn, x


def max_relative_error(out, expected):
    """Largest error relative to the largest expected magnitude."""
    return ((out.double() - expected).abs().max() / expected.abs().max()).item()


def reference(attn, x):
    """The PyTorch path in float64, without the output projection: ``proj`` is linear, so comparing before it
    compares the kernel's part."""
    proj = attn.proj
    attn.proj = torch.nn.Identity()
    try:
        with torch.no_grad():
            return attn(x)
    finally:
        attn.proj = proj


def swin_oracle(qkvg, dim, heads, window, shift, gate):
    """Float64 window attention written as Swin writes it: roll the map by ``-shift``, cut windows, mask pairs
    from different regions (Swin's slices), softmax, gate, put the windows back and roll by ``+shift``."""
    qkvg = qkvg.double()
    batch, height, width, _ = qkvg.shape
    head_dim = dim // heads
    rolled = torch.roll(qkvg, shifts=(-shift, -shift), dims=(1, 2))
    region = torch.zeros(height, width)
    if shift:
        slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for i, ys in enumerate(slices):
            for j, xs in enumerate(slices):
                region[ys, xs] = 3 * i + j
    out = torch.empty(batch, height, width, dim, dtype=torch.float64, device=qkvg.device)
    for wy in range(0, height, window):
        for wx in range(0, width, window):
            tokens = rolled[:, wy : wy + window, wx : wx + window].reshape(batch, window * window, -1)
            ids = region[wy : wy + window, wx : wx + window].reshape(-1)
            allowed = (ids[:, None] == ids[None, :]).to(qkvg.device)
            for h in range(heads):
                cols = slice(h * head_dim, (h + 1) * head_dim)
                q, k, v = (tokens[..., r * dim :][..., cols] for r in range(3))
                scores = (q @ k.transpose(1, 2)) / head_dim**0.5
                probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
                gates = tokens[..., 3 * dim :]
                g = gates[..., h : h + 1] if gate == "headwise" else gates[..., cols]
                out[:, wy : wy + window, wx : wx + window, cols] = (torch.sigmoid(g) * (probs @ v)).reshape(
                    batch, window, window, head_dim
                )
    return torch.roll(out, shifts=(shift, shift), dims=(1, 2))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-s{c[6]}-{c[7]}")
def test_kernel_matches_the_module(case):
    """Float32 kernel on the module's merged projection equals the module's PyTorch path (float64)."""
    *_, dim, heads, window, shift, gate = case
    attn, x = attention_and_map(*case)
    expected = reference(attn, x)
    with torch.no_grad():
        qkvg = attn.merged_projection(x).float()
    out = window_attention_triton(qkvg, dim, heads, window, shift, gate == "headwise")
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert max_relative_error(out, expected) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-s{c[6]}-{c[7]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_swin_oracle(case, dtype):
    """Any dtype against the float64 oracle on the same (rounded) input: what is left is the float32 sums and
    the rounding of the probabilities to the input dtype before the second product (as flash attention)."""
    *_, dim, heads, window, shift, gate = case
    attn, x = attention_and_map(*case)
    with torch.no_grad():
        qkvg = attn.merged_projection(x).to(dtype)
    expected = swin_oracle(qkvg, dim, heads, window, shift, gate)
    out = window_attention_triton(qkvg, dim, heads, window, shift, gate == "headwise")
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert max_relative_error(out, expected) < TOLERANCE[dtype]


def test_kernel_shift_changes_the_result():
    """The shifted windows and the mask are not a no-op: a shift of half a window gives another result."""
    attn, x = attention_and_map(1, 16, 16, 32, 2, 8, 4, "headwise")
    with torch.no_grad():
        qkvg = attn.merged_projection(x).float()
    plain = window_attention_triton(qkvg, 32, 2, 8, 0, True)
    shifted = window_attention_triton(qkvg, 32, 2, 8, 4, True)
    assert (plain - shifted).abs().max() > 1e-2


def test_kernel_checks_its_input():
    qkvg = torch.randn(1, 16, 16, 90, device=DEVICE)
    with pytest.raises(ValueError, match="columns"):
        window_attention_triton(qkvg, 32, 2, 8, 0, True)  # needs 3 * 32 + 2 = 98
    with pytest.raises(ValueError, match="tile into windows"):
        window_attention_triton(torch.randn(1, 12, 16, 104, device=DEVICE), 32, 2, 8, 0, True)
    with pytest.raises(ValueError, match="contiguous channels"):
        window_attention_triton(torch.randn(1, 16, 104, 16, device=DEVICE).transpose(2, 3), 32, 2, 8, 0, True)


@pytest.mark.skipif(INTERPRET, reason="the module's fast path is taken on CUDA tensors only")
def test_module_takes_the_kernel_for_inference(monkeypatch):
    """Without gradients on CUDA the module's output comes from the kernel (a spy counts the calls) and equals
    the PyTorch path's; with gradients it keeps the PyTorch path."""
    import videostate.ssm.kernels.window_attention as kernels

    calls = []
    real = kernels.window_attention_triton
    monkeypatch.setattr(kernels, "window_attention_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    attn, x = attention_and_map(2, 16, 24, 32, 2, 8, 4, "headwise")
    attn, x = attn.float(), x.float()
    with torch.no_grad():
        fast = attn(x)
    assert calls == [1]
    monkeypatch.setenv("VIDEOSTATE_DISABLE_FUSED", "1")
    with torch.no_grad():
        slow = attn(x)
    assert calls == [1]
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    monkeypatch.delenv("VIDEOSTATE_DISABLE_FUSED")
    attn(x.requires_grad_()).sum().backward()
    assert calls == [1] and x.grad is not None
