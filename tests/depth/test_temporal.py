import math

import pytest
import torch
import torch.nn.functional as F

from videostate.depth import MambaBlock, SpatialPreMix, TemporalMambaScale, temporal_detokenize, temporal_tokenize
from videostate.depth.model import TemporalReadout
from videostate.depth.temporal import LayerNorm, temporal_position_encoding, tokenize_with_position


def test_tokenize_layout_and_inverse():
    B, N, C, H, W = 2, 3, 4, 5, 6
    feat = torch.randn(B, N, C, H, W)
    tokens = temporal_tokenize(feat)
    assert tokens.shape == (B * H * W, N, C)
    for b, h, w in [(0, 0, 0), (1, 4, 5), (1, 2, 3), (0, 3, 1)]:
        torch.testing.assert_close(tokens[b * H * W + h * W + w], feat[b, :, :, h, w], rtol=0, atol=0)
    assert torch.equal(temporal_detokenize(tokens, H, W, B), feat)


def test_tokenize_errors():
    with pytest.raises(ValueError, match=r"\(B, N, C, H, W\)"):
        temporal_tokenize(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="B\\*H\\*W=24"):
        temporal_detokenize(torch.randn(25, 3, 4), 3, 4, 2)


def test_spatial_premix_is_a_depthwise_convolution():
    premix = SpatialPreMix(3).double()
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64)
    expected = torch.stack(
        [
            F.conv2d(x[:, c : c + 1], premix.conv.weight[c : c + 1], premix.conv.bias[c : c + 1], padding=1)[:, 0]
            for c in range(3)
        ],
        dim=1,
    )
    torch.testing.assert_close(premix(x), expected)
    with pytest.raises(ValueError, match=r"\(B\*N, 3, H, W\)"):
        premix(torch.randn(4, 2, 6, 7))


def test_position_encoding_formula():
    positions = torch.tensor([[0, 5], [17, 12345]])
    pe = temporal_position_encoding(positions, 5, 100.0)
    assert pe.shape == (2, 2, 5)
    t = 12345.0
    expected = [math.sin(t), math.sin(t / 10.0), math.cos(t), math.cos(t / 10.0), 0.0]
    torch.testing.assert_close(pe[1, 1], torch.tensor(expected, dtype=torch.float64))


def test_mamba_block_is_the_written_composition():
    torch.manual_seed(0)
    block = MambaBlock(6, d_state=4).double()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    h = x + block.mamba(F.layer_norm(x, (6,), block.norm1.weight, block.norm1.bias))
    n = F.layer_norm(h, (6,), block.norm2.weight, block.norm2.bias)
    expected = h + F.linear(
        F.silu(F.linear(n, block.ffn[0].weight, block.ffn[0].bias)), block.ffn[2].weight, block.ffn[2].bias
    )
    torch.testing.assert_close(block(x), expected)


def test_temporal_scale_chunks_and_steps_equal_offline():
    torch.manual_seed(1)
    scale = TemporalMambaScale(4, num_blocks=2, d_state=3).double()
    z = torch.randn(5, 9, 4, dtype=torch.float64)
    offline, final = scale(z)
    state, outs = scale.init_state(5, dtype=torch.float64), []
    for lo, hi in [(0, 2), (2, 3), (3, 9)]:
        y, state = scale(z[:, lo:hi], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), offline)
    state, steps = scale.init_state(5, dtype=torch.float64), []
    for t in range(9):
        y, state = scale.step(z[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), offline)
    for a, b in zip(state.blocks, final.blocks, strict=True):
        torch.testing.assert_close(a.ssm_state, b.ssm_state)
        torch.testing.assert_close(a.conv_state, b.conv_state)


def test_temporal_scale_is_causal():
    torch.manual_seed(2)
    scale = TemporalMambaScale(4, num_blocks=1, d_state=3).double()
    z = torch.randn(2, 6, 4, dtype=torch.float64)
    changed = z.clone()
    changed[:, 4] += 1.0
    y, _ = scale(z)
    y2, _ = scale(changed)
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=0)
    assert (y[:, 4:] - y2[:, 4:]).abs().max() > 1e-3


def test_temporal_scale_rejects_wrong_state():
    scale = TemporalMambaScale(4, num_blocks=2)
    other = TemporalMambaScale(4, num_blocks=1)
    with pytest.raises(ValueError, match="2 block states"):
        scale(torch.randn(2, 3, 4), other.init_state(2))
    with pytest.raises(ValueError, match="num_blocks"):
        TemporalMambaScale(4, num_blocks=0)


def test_temporal_readout_is_the_written_formula_and_starts_at_zero():
    torch.manual_seed(0)
    readout = TemporalReadout(6)
    y = torch.randn(5, 3, 6, dtype=torch.float64)
    assert torch.equal(readout.double()(y), torch.zeros(5, 3, 6, dtype=torch.float64))
    with torch.no_grad():
        readout.weight.normal_()
        readout.bias.normal_()
    expected = torch.einsum("oc,tnc->tno", readout.weight, y) / 6 + readout.bias
    torch.testing.assert_close(readout(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [8, 64, 384])
def test_temporal_readout_moves_at_the_learning_rate_whatever_the_width(channels):
    """One Adam step from the zero start changes the read-out by about ``lr * mean|y|`` at every width (a plain
    zero-initialised Linear changes by ``lr * C * mean|y|``: 384 times the learning rate at C = 384)."""
    torch.manual_seed(0)
    lr = 1e-3
    readout = TemporalReadout(channels)
    y = torch.randn(256, channels).abs() + 0.5  # coherent inputs, as features after a ReLU or with a mean
    upstream = torch.randn(256, channels)
    optimizer = torch.optim.Adam(readout.parameters(), lr=lr)
    (readout(y) * upstream).sum().backward()
    optimizer.step()
    with torch.no_grad():
        change = readout(y).abs().max() / y.abs().mean()
    assert 0.5 * lr < change < 2.5 * lr, change


@pytest.mark.parametrize("batch", [1, 2])
def test_tokenize_with_position_is_tokenize_of_the_sum(batch):
    feat = torch.randn(batch, 3, 4, 5, 6)
    pe = torch.randn(1, 3, 4)
    expected = temporal_tokenize(feat + pe[..., None, None])
    with torch.no_grad():
        tokens = tokenize_with_position(feat, pe)
    assert tokens.is_contiguous()
    assert torch.equal(tokens, expected)
    feat.requires_grad_(True)
    tokens = tokenize_with_position(feat, pe)
    assert torch.equal(tokens, expected) and tokens.requires_grad
    with pytest.raises(ValueError, match=r"pe \(B or 1, N, C\)"):
        tokenize_with_position(feat, torch.randn(1, 3, 5))


@pytest.mark.parametrize("batch", [1, 2])
def test_readout_frames_is_the_detokenized_readout(batch):
    torch.manual_seed(0)
    readout = TemporalReadout(6).double()
    with torch.no_grad():
        readout.weight.normal_()
        readout.bias.normal_()
    y = torch.randn(batch * 4 * 5, 3, 6, dtype=torch.float64)
    frames = readout.frames(y, 4, 5, batch)
    assert frames.is_contiguous()
    torch.testing.assert_close(frames, temporal_detokenize(readout(y), 4, 5, batch), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=f"B\\*H\\*W={(batch + 1) * 20}"):
        readout.frames(y, 4, 5, batch + 1)


def test_layer_norm_add_and_norm_is_the_sum_and_its_norm():
    torch.manual_seed(0)
    norm = LayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, r = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    with torch.no_grad():
        s, n = norm.add_and_norm(x, r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(n, F.layer_norm(x + r, (6,), norm.weight, norm.bias))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels", [48, 320], ids=["fused-tail", "wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_temporal_scale_inference_kernels_equal_float64(monkeypatch, channels, dtype):
    """On CUDA without gradients the blocks run Mamba's token-major path, the fused block tail over sequences and the
    fused feed-forward kernel over steps, at the widths they support; spies count the calls. Offline, chunked and
    stepped outputs equal the float64 CPU model."""
    import videostate.ssm.kernels.block_tail as block_tail
    import videostate.ssm.kernels.mamba_tokens as mamba_tokens
    import videostate.ssm.kernels.mlp as mlp

    calls = {"scan": 0, "tail": 0, "ffn": 0}

    def spy(module, attribute, name):
        real = getattr(module, attribute)

        def counted(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, attribute, counted)

    spy(mamba_tokens, "mamba_scan_tokens", "scan")
    spy(block_tail, "block_tail_triton", "tail")
    spy(mlp, "mlp_triton", "ffn")
    torch.manual_seed(3)
    scale = TemporalMambaScale(channels, num_blocks=2, d_state=16).double()
    with torch.no_grad():
        for p in scale.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(300, 32, channels, dtype=torch.float64)
    with torch.no_grad():
        exact, _ = scale(z)
        fast = scale.to("cuda", dtype)
        offline = fast.offline(z.to("cuda", dtype))
        state, chunks = fast.init_state(300, device="cuda"), []
        for lo, hi in [(0, 7), (7, 32)]:
            y, state = fast(z[:, lo:hi].to("cuda", dtype), state)
            chunks.append(y)
        state, steps = fast.init_state(300, device="cuda"), []
        for t in range(4):
            y, state = fast.step(z[:, t].to("cuda", dtype), state)
            steps.append(y)
    tail, ffn = block_tail.supports(channels), mlp.supports(channels)
    assert calls == {"scan": 2 * 3, "tail": 2 * 3 if tail else 0, "ffn": 2 * 4 if ffn else 0}
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2

    def error(actual, expected):
        return ((actual.double().cpu() - expected).norm() / expected.norm()).item()

    assert error(offline, exact) < tolerance
    assert error(torch.cat(chunks, 1), exact) < tolerance
    assert error(torch.stack(steps, 1), exact[:, :4]) < tolerance
