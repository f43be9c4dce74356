import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videostate.interpolation import (
    ECAB,
    ChannelAttention,
    GatedWindowAttention,
    HybridBackbone,
    InterleavedSS2D,
    LGSBlock,
    ManifoldHyperConnection,
    init_mamba2_from_attention,
    interleaved_merge,
    interleaved_scan,
    sinkhorn,
)
from videostate.interpolation.attention import shifted_windows, window_partition
from videostate.interpolation.channel_attention import eca_kernel_size
from videostate.ssm import Mamba2
from videostate.ssm.layer_norm import LayerNorm

from .tiny import tiny_config


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5


# -- gated window attention ------------------------------------------------------------------------


def window_attention_oracle(attn: GatedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Per window, per head, softmax(q k^T / sqrt(d)) v with explicit loops; the shift handled by index
    arithmetic, the mask by 'same wrap status on both axes'."""
    b, h, w, c = x.shape
    ws, s, nh, d = attn.window_size, attn.shift_size, attn.num_heads, attn.head_dim
    s = s if min(h, w) > ws else 0
    wq, wk, wv = attn.qkv.weight.split(c)
    bq, bk, bv = attn.qkv.bias.split(c)
    out = torch.zeros_like(x)
    for n in range(b):
        for wy in range(0, h, ws):
            for wx in range(0, w, ws):
                coords = [(y, xx) for y in range(wy, wy + ws) for xx in range(wx, wx + ws)]
                src = [((y + s) % h, (xx + s) % w) for y, xx in coords]
                tokens = torch.stack([x[n, y, xx] for y, xx in src])
                wrapped = [(y >= h - s, xx >= w - s) for y, xx in coords]
                allowed = torch.tensor([[a == bb for bb in wrapped] for a in wrapped])
                q, k, v = tokens @ wq.T + bq, tokens @ wk.T + bk, tokens @ wv.T + bv
                gate = torch.sigmoid(attn.gate(tokens))
                heads = []
                for i in range(nh):
                    sl = slice(i * d, (i + 1) * d)
                    scores = (q[:, sl] @ k[:, sl].T) / math.sqrt(d)
                    scores = scores.masked_fill(~allowed, float("-inf"))
                    o = torch.softmax(scores, dim=-1) @ v[:, sl]
                    heads.append(o * (gate[:, i : i + 1] if attn.gate_kind == "headwise" else gate[:, sl]))
                y_tokens = attn.proj(torch.cat(heads, dim=-1))
                for (y, xx), value in zip(src, y_tokens, strict=True):
                    out[n, y, xx] = value
    return out


@pytest.mark.parametrize(
    ("gate", "shift", "size"),
    [("headwise", 0, (8, 12)), ("headwise", 2, (8, 12)), ("elementwise", 2, (8, 12)), ("headwise", 1, (12, 16))],
)
def test_gated_window_attention_matches_naive_attention(gate, shift, size):
    torch.manual_seed(0)
    attn = GatedWindowAttention(8, num_heads=2, window_size=4, shift_size=shift, gate=gate).double()
    x = rand(2, *size, 8, seed=1)
    torch.testing.assert_close(attn(x), window_attention_oracle(attn, x))


def test_shifted_windows_gather_and_border_masks():
    """The gather reads the map rolled by -shift window by window, the scatter undoes it, and exactly the
    border windows (last row and column of the window grid) have pairs from different regions."""
    height, width, ws, s = 12, 16, 4, 2
    shifted = shifted_windows(height, width, ws, s, "cpu")
    positions = torch.arange(height * width).view(1, height, width, 1)
    rolled = torch.roll(positions, shifts=(-s, -s), dims=(1, 2))
    assert torch.equal(shifted.gather, window_partition(rolled, ws).flatten())
    assert torch.equal(shifted.gather[shifted.scatter], torch.arange(height * width))
    # Swin's mask from the rolled coordinates: the same wrap status on both axes.
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    wrapped = window_partition(((ys >= height - s) * 2 + (xs >= width - s))[None, :, :, None], ws)[0, :, :, 0]
    full = wrapped[:, :, None] == wrapped[:, None, :]  # (nW, N, N)
    mixed = [i for i in range(full.shape[0]) if not full[i].all()]
    assert shifted.border.tolist() == mixed == [3, 7, 8, 9, 10, 11]  # a 3 x 4 grid of windows
    assert torch.equal(shifted.allowed[:, 0], full[shifted.border])
    assert shifted_windows(height, width, ws, s, "cpu") is shifted


@pytest.mark.parametrize("shift", [0, 2])
def test_gated_window_attention_calls_sdpa_with_fused_kernel_layout(monkeypatch, shift):
    """The fused SDPA kernels take only 4-D (batch, heads, tokens, head_dim) inputs and flash takes no mask:
    every window is attended without one; with a shift the border windows again with Swin's mask, which
    broadcasts over frames and heads (size 1 there) instead of being copied per frame."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape, None if attn_mask is None else attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    attn = GatedWindowAttention(8, num_heads=2, window_size=4, shift_size=shift)
    attn(torch.rand(3, 8, 12, 8))
    windows, border, tokens = (8 // 4) * (12 // 4), 4, 16
    expected = [(torch.Size((3 * windows, 2, tokens, 4)), None)]
    if shift:
        expected.append((torch.Size((border, 3 * 2, tokens, 4)), torch.Size((border, 1, tokens, tokens))))
    assert calls == expected


@pytest.mark.parametrize(("gate", "qkv_bias"), [("headwise", True), ("elementwise", True), ("headwise", False)])
def test_merged_qkv_and_gate_projection_equals_the_two_linear_layers(gate, qkv_bias):
    """One matrix product with the stacked weights gives exactly qkv(x) and gate(x); the q, k, v views'
    row stride is a multiple of 8 elements (aligned for the fused attention kernels)."""
    torch.manual_seed(0)
    attn = GatedWindowAttention(16, num_heads=2, window_size=4, gate=gate, qkv_bias=qkv_bias).double()
    x = rand(2, 3, 16, 16, seed=2)
    qkv, gate_logits = attn.project(x)
    torch.testing.assert_close(qkv, attn.qkv(x), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gate_logits, attn.gate(x), rtol=1e-14, atol=1e-14)
    assert qkv.stride(-2) % 8 == 0 and qkv.data_ptr() == gate_logits.data_ptr() - 48 * qkv.element_size()


def test_gated_window_attention_errors():
    with pytest.raises(ValueError, match="num_heads=3 must divide dim=8"):
        GatedWindowAttention(8, 3, 4)
    with pytest.raises(ValueError, match="gate must be"):
        GatedWindowAttention(8, 2, 4, gate="scalar")
    with pytest.raises(ValueError, match="multiple of window_size=4"):
        GatedWindowAttention(8, 2, 4)(torch.rand(1, 6, 8, 8))


# -- interleaved SS2D ------------------------------------------------------------------------------


def test_interleaved_sequence_order():
    x = rand(2, 2, 3, 1, seed=2)  # B = 1: x[0] is frame 0, x[1] frame 1
    seq = interleaved_scan(x)  # (4, 12, 1)
    rows = [x[f, y, w, 0] for y in range(2) for w in range(3) for f in range(2)]
    cols = [x[f, y, w, 0] for w in range(3) for y in range(2) for f in range(2)]
    torch.testing.assert_close(seq[0, :, 0], torch.stack(rows))
    torch.testing.assert_close(seq[1, :, 0], torch.stack(cols))
    torch.testing.assert_close(seq[2, :, 0], torch.stack(rows[::-1]))
    torch.testing.assert_close(seq[3, :, 0], torch.stack(cols[::-1]))


def test_interleaved_merge_of_a_causal_sum_matches_loop():
    """With a prefix-sum mixer every output is the sum of the tokens before it in each scan order."""
    b, h, w, c = 2, 3, 4, 2
    x = rand(2 * b, h, w, c, seed=3)
    y = interleaved_merge(interleaved_scan(x).cumsum(dim=1), h, w)
    expected = torch.zeros_like(x)
    for n in range(b):
        orders = []
        rows = [(f, i, j) for i in range(h) for j in range(w) for f in range(2)]
        cols = [(f, i, j) for j in range(w) for i in range(h) for f in range(2)]
        orders = [rows, cols, rows[::-1], cols[::-1]]
        for order in orders:
            running = torch.zeros(c, dtype=x.dtype)
            for f, i, j in order:
                running = running + x[f * b + n, i, j]
                expected[f * b + n, i, j] += running
    torch.testing.assert_close(y, expected)


def test_ss2d_mixes_the_two_frames():
    torch.manual_seed(0)
    ss2d = InterleavedSS2D(8, d_state=8, headdim=8, chunk_size=16)
    x = rand(2, 4, 4, 8, seed=4).float()
    x2 = x.clone()
    x2[1] += rand(4, 4, 8, seed=11).float()  # change frame 1 only
    assert (ss2d(x)[0] - ss2d(x2)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("autocast", [False, True], ids=["float64", "bfloat16-autocast"])
def test_ss2d_inference_in_segments_with_carried_state_equals_one_call(monkeypatch, autocast):
    """Beyond the element budget, inference runs one direction at a time, each in segments of at most a quarter of
    the budget (the last one shorter) with the Mamba-2 state carried: the same output as one call over the four
    directions."""
    import videostate.interpolation.ss2d as ss2d_module

    torch.manual_seed(0)
    ss2d = InterleavedSS2D(8, d_state=8, headdim=8, chunk_size=16).double()
    x = rand(2, 6, 5, 8, seed=16)  # sequences of 2 * 6 * 5 = 60 tokens
    calls = []
    ss2d.mamba.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    if autocast:
        ss2d, x = ss2d.float(), x.float()
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        expected = ss2d(x)
        monkeypatch.setattr(ss2d_module, "MAX_INFERENCE_ELEMENTS", 4 * 25 * 8)  # segments of 25 tokens
        split = ss2d(x)
    assert calls == [60] + [25, 25, 10] * 4
    tolerance = 2e-2 if autocast else 1e-12
    torch.testing.assert_close(split.double(), expected.double(), rtol=tolerance, atol=tolerance)


def test_ss2d_under_autocast_runs_in_bfloat16_close_to_float64():
    """Under autocast the mixer's projections and scan take bfloat16 (float32 states and sums): the output
    is bfloat16 and within bfloat16 rounding of the same module in float64."""
    torch.manual_seed(0)
    ss2d = InterleavedSS2D(16, d_state=8, headdim=8, chunk_size=16)
    x = rand(2, 6, 8, 16, seed=12).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = ss2d(x)
    exact = ss2d.double()(x.double())
    assert half.dtype == torch.bfloat16
    assert ((half.double() - exact).norm() / exact.norm()).item() < 2e-2


# -- layer norm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 30.0], ids=["centred", "offset"])
def test_layer_norm_under_autocast_matches_float64_layer_norm(shift):
    """For inference under autocast: float32 statistics of the bfloat16 input and the autocast dtype out,
    within one bfloat16 rounding of float64 LayerNorm of the same input; with gradients or without autocast
    it is nn.LayerNorm."""
    torch.manual_seed(0)
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (rand(2, 5, 7, 32, seed=13) * 4 + shift).to(torch.bfloat16)
    expected = F.layer_norm(x.double(), (32,), norm.weight.double(), norm.bias.double(), norm.eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            out = norm(x)
        trained = norm(x)
        torch.testing.assert_close(trained, F.layer_norm(x, (32,), norm.weight, norm.bias, norm.eps), rtol=0, atol=0)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=2**-8, atol=0)
    x32 = x.float()
    torch.testing.assert_close(norm(x32), F.layer_norm(x32, (32,), norm.weight, norm.bias, norm.eps), rtol=0, atol=0)


# -- channel attention -----------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "k"), [(8, 3), (16, 3), (32, 3), (64, 3), (128, 5), (512, 5)])
def test_eca_kernel_size_rule(channels, k):
    t = int(abs((math.log2(channels) + 1) / 2))
    assert eca_kernel_size(channels) == (t if t % 2 else t + 1) == k


def test_ecab_matches_loop():
    torch.manual_seed(0)
    eca = ECAB(128).double()
    x = rand(2, 128, 3, 5, seed=5)
    w = eca.conv.weight[0, 0]
    k = w.numel()
    pooled = x.mean(dim=(2, 3))
    expected = torch.empty_like(x)
    for n in range(2):
        for ch in range(128):
            z = sum(w[j] * pooled[n, ch + j - k // 2] for j in range(k) if 0 <= ch + j - k // 2 < 128)
            expected[n, ch] = x[n, ch] * torch.sigmoid(z)
    torch.testing.assert_close(eca(x), expected)


def test_channel_attention_matches_formula():
    torch.manual_seed(0)
    ca = ChannelAttention(8).double()
    x = rand(2, 8, 3, 3, seed=6)
    p = x.mean(dim=(2, 3))
    hidden = torch.relu(p @ ca.down.weight[:, :, 0, 0].T + ca.down.bias)
    scale = torch.sigmoid(hidden @ ca.up.weight[:, :, 0, 0].T + ca.up.bias)
    torch.testing.assert_close(ca(x), x * scale[:, :, None, None])


# -- mHC -------------------------------------------------------------------------------------------


def test_sinkhorn_matches_numpy_and_is_doubly_stochastic():
    logits = rand(4, 4, seed=7) * 6
    p = np.exp(logits.numpy())
    for _ in range(20):
        p = p / p.sum(axis=1, keepdims=True)
        p = p / p.sum(axis=0, keepdims=True)
    m = sinkhorn(logits, 20)
    np.testing.assert_allclose(m.numpy(), p, rtol=1e-10)
    m = sinkhorn(logits, 200)
    torch.testing.assert_close(m.sum(0), torch.ones(4, dtype=m.dtype))
    torch.testing.assert_close(m.sum(1), torch.ones(4, dtype=m.dtype))
    assert bool((m >= 0).all())


def test_mhc_connection_matches_formula():
    mhc = ManifoldHyperConnection(3).double()
    with torch.no_grad():
        for p in mhc.parameters():
            p.copy_(rand(*p.shape, seed=8) * 2)
    streams = rand(3, 2, 5, seed=9)
    layer = torch.nn.Linear(5, 5).double()
    h_res = sinkhorn(mhc.res_logits, 20)
    h_pre, h_post = torch.sigmoid(mhc.pre_logits), 2 * torch.sigmoid(mhc.post_logits)
    branch = layer(sum(h_pre[s] * streams[s] for s in range(3)))
    expected = torch.stack([sum(h_res[t, s] * streams[s] for s in range(3)) + h_post[t] * branch for t in range(3)])
    torch.testing.assert_close(mhc(streams, layer), expected)


def test_mhc_initialisation_is_a_mean_input_and_near_identity_mixing():
    h_res, h_pre, h_post = ManifoldHyperConnection(4).matrices()
    torch.testing.assert_close(h_pre, torch.full((4,), 0.25))
    torch.testing.assert_close(h_post, 2 * torch.sigmoid(torch.tensor([-0.5, -1 / 6, 1 / 6, 0.5])))
    assert (h_res.diagonal() > 0.99).all()
    h_res, _, _ = ManifoldHyperConnection(3, mix_streams=False).matrices()
    torch.testing.assert_close(h_res, torch.eye(3))


# -- LGS block and backbone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "use_mhc", "use_ecab", "mixes_frames"),
    [
        ("hybrid", False, True, True),
        ("hybrid", True, False, True),
        ("mamba2_only", False, True, True),
        ("gated_attn_only", True, True, False),
    ],
)
def test_lgs_block_modes(mode, use_mhc, use_ecab, mixes_frames):
    torch.manual_seed(0)
    config = tiny_config(backbone_mode=mode, use_mhc=use_mhc, use_ecab=use_ecab)
    block = LGSBlock(config, dim=8, num_heads=2, window_size=4, shift_size=2)
    x = rand(2, 8, 8, 8, seed=10).float()
    if use_mhc:
        x = x.expand(config.mhc_streams, -1, -1, -1, -1)
    x2 = x.clone()
    x2[..., 1, :, :, :] += rand(8, 8, 8, seed=11).float()  # frame 1 changes
    y, y2 = block(x), block(x2)
    assert y.shape == x.shape
    assert ((y[..., 0, :, :, :] - y2[..., 0, :, :, :]).abs().max() > 1e-4) == mixes_frames
    assert (block.ss2d is not None) == (mode != "gated_attn_only")
    assert (block.attn is not None) == (mode != "mamba2_only")
    assert isinstance(block.channel_attention, ECAB if use_ecab else ChannelAttention)


def lgs_block_oracle(block: LGSBlock, x: torch.Tensor) -> torch.Tensor:
    """The block in its plain form: channels-first fusion convolution and channel attention, LayerNorm and
    MLP from their formulas, window attention from the loop oracle."""
    c = x.shape[-1]

    def norm(t, ln):
        return F.layer_norm(t, (c,), ln.weight, ln.bias, ln.eps)

    h = norm(x, block.norm1)
    branches = []
    if block.ss2d is not None:
        branches.append(block.ss2d(h))
    if block.attn is not None:
        branches.append(window_attention_oracle(block.attn, h))
    fused = torch.cat(branches, dim=-1).permute(0, 3, 1, 2)
    if block.fuse is not None:
        fused = F.conv2d(fused, block.fuse.weight, block.fuse.bias)
    x = x + block.channel_attention(fused).permute(0, 2, 3, 1)
    hidden = F.gelu(norm(x, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    return x + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


@pytest.mark.parametrize(("mode", "shift"), [("hybrid", 2), ("gated_attn_only", 0), ("mamba2_only", 0)])
def test_lgs_block_matches_plain_block(mode, shift):
    torch.manual_seed(0)
    block = LGSBlock(tiny_config(backbone_mode=mode), dim=8, num_heads=2, window_size=4, shift_size=shift).double()
    x = rand(2, 8, 12, 8, seed=14)
    torch.testing.assert_close(block(x), lgs_block_oracle(block, x))


def test_backbone_convolutions_give_channels_last_maps():
    """The stem and the downsamplers return channels-last maps, so every stage's (2B, H, W, C) tokens are a view
    of them, not a permuted copy of a channels-first map."""
    torch.manual_seed(0)
    backbone = HybridBackbone(tiny_config())
    layouts = []
    for module in (backbone.patch_embed, *backbone.downsamplers):
        module.register_forward_hook(
            lambda m, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
        )
    backbone(torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24))
    assert layouts == [True] * (1 + len(backbone.downsamplers))


def test_backbone_under_autocast_is_close_to_float32():
    """Inference under autocast (bfloat16 LayerNorm, attention, SS2D and convolutions) stays within
    bfloat16 rounding of the float32 backbone."""
    torch.manual_seed(0)
    backbone = HybridBackbone(tiny_config())
    img0, img1 = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        exact = backbone(img0, img1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = backbone(img0, img1)
    for a, b in zip(half, exact, strict=True):
        assert a.dtype == torch.bfloat16
        assert ((a.float() - b).norm() / b.norm()).item() < 3e-2


def test_backbone_shapes_and_size_error():
    torch.manual_seed(0)
    backbone = HybridBackbone(tiny_config())
    feats = backbone(torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6)]
    with pytest.raises(ValueError, match="divisible by window_size"):
        backbone(torch.rand(1, 3, 12, 16), torch.rand(1, 3, 12, 16))


# -- MaTVLM ----------------------------------------------------------------------------------------


def test_matvlm_exact_copy_when_dimensions_match():
    torch.manual_seed(0)
    attn = GatedWindowAttention(16, num_heads=2, window_size=4)
    mamba = Mamba2(16, d_state=8, ngroups=2, expand=1, headdim=8)
    report = init_mamba2_from_attention(mamba, attn, name="block")
    q, k, v = attn.qkv.weight.split(16)
    _z, x, b, c, _dt = mamba.in_proj.weight.split([16, 16, 16, 16, 2])
    torch.testing.assert_close(x, v)
    torch.testing.assert_close(b, k)
    torch.testing.assert_close(c, q)
    torch.testing.assert_close(mamba.out_proj.weight, attn.proj.weight)
    assert report.exact
    assert any("qkv.bias" in item for item in report.not_mapped)
    assert any("A_log" in item for item in report.not_mapped)


def test_matvlm_partial_copy_is_reported():
    torch.manual_seed(0)
    attn = GatedWindowAttention(16, num_heads=2, window_size=4)
    mamba = Mamba2(16, d_state=8, expand=2, headdim=8)  # x has 32 rows, B and C 8
    before = mamba.in_proj.weight.clone()
    report = init_mamba2_from_attention(mamba, attn)
    assert not report.exact
    x = mamba.in_proj.weight[32:64]
    torch.testing.assert_close(x[:16], attn.qkv.weight[32:48])
    torch.testing.assert_close(x[16:], before[48:64])
    assert any("in_proj.x rows 16..31" in item for item in report.not_mapped)
    assert any("qkv.K rows 8..15" in item for item in report.not_mapped)


def test_backbone_matvlm_needs_hybrid_mode():
    reports = HybridBackbone(tiny_config()).init_mamba_from_attention()
    assert len(reports) == sum(tiny_config().depths)
    with pytest.raises(ValueError, match="backbone_mode='hybrid'"):
        HybridBackbone(tiny_config(backbone_mode="mamba2_only")).init_mamba_from_attention()
