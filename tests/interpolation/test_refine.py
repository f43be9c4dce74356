import pytest
import torch
import torch.nn.functional as F

from videostate.interpolation.refine import RefineNet, concat_channels_last


def maps(*channels, size=(6, 10), batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, *size, generator=g, dtype=dtype) for c in channels]


def test_concat_channels_last_is_cat_in_channels_last_layout():
    a, b = maps(3, 5)
    b = b.contiguous(memory_format=torch.channels_last)  # pieces in either layout
    c = maps(1, dtype=torch.float32)[0].expand(2, 2, 6, 10)  # an expanded map, and a narrower dtype
    out = concat_channels_last([a, b, c])
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.cat([a, b, c], dim=1), rtol=0, atol=0)
    padded = concat_channels_last([a, b], channels=16)
    torch.testing.assert_close(padded[:, :8], torch.cat([a, b], dim=1), rtol=0, atol=0)
    assert (padded[:, 8:] == 0).all()
    with pytest.raises(ValueError, match="at least the pieces' 8"):
        concat_channels_last([a, b], channels=7)


@pytest.mark.parametrize("with_context", [True, False])
def test_refine_net_matches_its_formula(with_context):
    """U-Net decoder: deconv(cat) twice, then conv(cat with the timestep map) and a last conv; the head's input
    padded with zero channels changes nothing."""
    torch.manual_seed(0)
    features, c, context = (6, 8, 10), 4, (2, 3, 5)
    net = RefineNet(features, c, context if with_context else None).double()
    shapes = [(12, 16), (6, 8), (3, 4)]
    feats = [maps(ch, size=s, seed=i)[0] for i, (ch, s) in enumerate(zip(features, shapes, strict=True))]
    ctx0 = [maps(ch, size=s, seed=10 + i)[0] for i, (ch, s) in enumerate(zip(context, shapes, strict=True))]
    ctx1 = [maps(ch, size=s, seed=20 + i)[0] for i, (ch, s) in enumerate(zip(context, shapes, strict=True))]
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    if not with_context:
        ctx0 = ctx1 = None
    residual, mask = net(feats, t, ctx0, ctx1)

    def level(i):
        return [feats[i], ctx0[i], ctx1[i]] if with_context else [feats[i]]

    x = net.up0(torch.cat(level(2), 1))
    x = net.up1(torch.cat([x, *level(1)], 1))
    t_map = t.view(2, 1, 1, 1).expand(2, 1, 12, 16)
    (conv, prelu), last = net.head
    out = last(prelu(F.conv2d(torch.cat([x, *level(0), t_map], 1), conv.weight, conv.bias, padding=1)))
    torch.testing.assert_close(residual, 2 * torch.sigmoid(out[:, :3]) - 1)
    torch.testing.assert_close(mask, out[:, 3:4])
