import pytest
import torch
from torch import nn

from videostate.interpolation.flow import IFBlock
from videostate.interpolation.layers import aligned, aligned_conv, aligned_prelu, concat_channels_last, resize


def maps(*channels, size=(8, 12), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, *size, generator=g, dtype=torch.float64) for c in channels]


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(5, 11, 3, 2, 1), nn.Conv2d(6, 16, 3, 1, 1, bias=False), nn.ConvTranspose2d(9, 5, 4, 2, 1)],
    ids=["conv", "conv_nobias", "deconv"],
)
def test_aligned_conv_and_prelu_equal_the_plain_layers_with_zero_channels(conv):
    """Zero input channels (any number) and zero-padded weights: the real output channels are the layer's
    output, the padded ones exactly zero, and PReLU keeps them zero."""
    torch.manual_seed(0)
    conv = conv.double()
    prelu = nn.PReLU(conv.out_channels).double()
    with torch.no_grad():
        prelu.weight.uniform_(-1, 1)
    (x,) = maps(conv.in_channels)
    padded = concat_channels_last([x], aligned(conv.in_channels) + 8)
    out = aligned_prelu(prelu, aligned_conv(conv, padded))
    assert out.shape[1] == aligned(conv.out_channels)
    torch.testing.assert_close(out[:, : conv.out_channels], prelu(conv(x)), rtol=1e-12, atol=1e-12)
    assert (out[:, conv.out_channels :] == 0).all()
    unpadded = aligned_conv(conv, padded, pad_output=False)
    torch.testing.assert_close(unpadded, conv(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"at least conv\.in_channels"):
        aligned_conv(conv, x[:, :1])


def ifblock_oracle(block: IFBlock, x: torch.Tensor, flow: torch.Tensor | None, scale: int):
    """RIFE's IFBlock with the plain layers: resize, concatenate, convolutions."""
    x = resize(x, 1.0 / scale)
    if flow is not None:
        x = torch.cat([x, resize(flow, 1.0 / scale) / scale], dim=1)
    x = block.conv0(x)
    x = block.convblock(x) + x
    out = resize(block.lastconv(x), 2.0 * scale)
    return out[:, :4] * (2.0 * scale), out[:, 4:5]


@pytest.mark.parametrize(("in_channels", "with_flow", "scale"), [(7, False, 4), (18, True, 2), (18, True, 1)])
def test_ifblock_on_aligned_channels_matches_the_plain_layers(in_channels, with_flow, scale):
    torch.manual_seed(0)
    block = IFBlock(in_channels, 30).double()  # widths 15 and 30: both padded
    for m in block.modules():
        if isinstance(m, nn.PReLU):
            with torch.no_grad():
                m.weight.uniform_(-1, 1)
    n = in_channels - 4 if with_flow else in_channels
    inputs = maps(3, 3, n - 6, size=(16, 24))
    flow = maps(4, size=(16, 24), seed=1)[0] if with_flow else None
    flow_out, mask = block(inputs, flow, scale)
    ref_flow, ref_mask = ifblock_oracle(block, torch.cat(inputs, dim=1), flow, scale)
    torch.testing.assert_close(flow_out, ref_flow, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mask, ref_mask, rtol=1e-10, atol=1e-10)


def test_ifblock_under_autocast_computes_in_bfloat16_like_the_plain_layers():
    torch.manual_seed(0)
    block = IFBlock(18, 30)
    inputs, flow = maps(3, 3, 3, 3, 1, 1, size=(16, 24)), maps(4, size=(16, 24), seed=1)[0]
    inputs, flow = [x.float() for x in inputs], flow.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        flow_out, mask = block(inputs, flow, 2)
        ref_flow, ref_mask = ifblock_oracle(block, torch.cat(inputs, dim=1), flow, 2)
    assert flow_out.dtype == ref_flow.dtype == torch.bfloat16
    torch.testing.assert_close(flow_out.float(), ref_flow.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mask.float(), ref_mask.float(), rtol=2e-2, atol=2e-2)
