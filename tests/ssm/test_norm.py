import pytest
import torch
import torch.nn.functional as F

from videostate.ssm import RMSNorm, RMSNormGated, rms_norm, rms_norm_gated


def rnd(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rms_formula(s, weight, eps):
    return s / torch.sqrt((s**2).mean(-1, keepdim=True) + eps) * weight


def test_rms_norm_formula_with_bias():
    x, w, b = rnd(3, 4, 8, seed=1), rnd(8, seed=2), rnd(8, seed=3)
    torch.testing.assert_close(rms_norm(x, w, b, eps=1e-6), rms_formula(x, w, 1e-6) + b)


@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_fused_add_norm_prenorm_returns_the_sum(residual_in_fp32):
    x, r, w = rnd(2, 5, 8, seed=4), rnd(2, 5, 8, seed=5), rnd(8, seed=6)
    out, residual = rms_norm(x, w, residual=r, eps=1e-5, prenorm=True, residual_in_fp32=residual_in_fp32)
    torch.testing.assert_close(out, rms_formula(x + r, w, 1e-5))
    torch.testing.assert_close(residual, x + r)


def test_half_inputs_keep_dtype_and_residual_in_fp32():
    x, r, w = (t.to(torch.bfloat16) for t in (rnd(2, 8, seed=7), rnd(2, 8, seed=8), rnd(8, seed=9)))
    out, residual = rms_norm(x, w, residual=r, prenorm=True, residual_in_fp32=True)
    assert out.dtype == torch.bfloat16 and residual.dtype == torch.float32
    torch.testing.assert_close(residual, x.float() + r.float())
    _, residual = rms_norm(x, w, prenorm=True)
    assert residual.dtype == torch.bfloat16


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
def test_gated_norm_formula(norm_before_gate, group_size):
    x, z, w = rnd(3, 8, seed=10), rnd(3, 8, seed=11), rnd(8, seed=12)
    out = rms_norm_gated(x, w, z, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    gated = x if norm_before_gate else x * F.silu(z)
    size = group_size or 8
    parts = [rms_formula(gated[:, i : i + size], 1.0, 1e-5) for i in range(0, 8, size)]
    expected = torch.cat(parts, -1) * w
    if norm_before_gate:
        expected = expected * F.silu(z)
    torch.testing.assert_close(out, expected)


def test_modules_and_errors():
    norm = RMSNorm(8, eps=1e-5).double()
    x = rnd(2, 8, seed=13)
    torch.testing.assert_close(norm(x), rms_formula(x, 1.0, 1e-5))
    gated = RMSNormGated(8, group_size=4, norm_before_gate=False).double()
    assert gated(x, x).shape == x.shape
    with pytest.raises(ValueError, match=r"weight must have shape \(hidden,\)=\(7,\); got \(8,\)"):
        rms_norm(rnd(2, 7), norm.weight)
    with pytest.raises(ValueError, match=r"residual must have the shape of x \(2, 8\); got \(2, 4\)"):
        norm(x, rnd(2, 4))
    with pytest.raises(ValueError, match="group_size=3 must divide the hidden size 8"):
        rms_norm_gated(x, gated.weight, group_size=3)
