import math

import pytest
import torch

from videostate.interpolation import warp
from videostate.interpolation.warp import _BASE_GRIDS, base_grid


def bilinear_border_oracle(image, flow):
    """Sample every output pixel by hand: coordinates clamped to the image, bilinear weights."""
    b, _c, h, w = image.shape
    out = torch.empty_like(image)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                sx = min(max(x + flow[n, 0, y, x].item(), 0.0), w - 1)
                sy = min(max(y + flow[n, 1, y, x].item(), 0.0), h - 1)
                x0, y0 = math.floor(sx), math.floor(sy)
                x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                ax, ay = sx - x0, sy - y0
                out[n, :, y, x] = (
                    image[n, :, y0, x0] * (1 - ax) * (1 - ay)
                    + image[n, :, y0, x1] * ax * (1 - ay)
                    + image[n, :, y1, x0] * (1 - ax) * ay
                    + image[n, :, y1, x1] * ax * ay
                )
    return out


def test_warp_matches_bilinear_oracle():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    flow = (torch.rand(2, 2, 5, 7, generator=g, dtype=torch.float64) - 0.5) * 6  # reaches past the border
    torch.testing.assert_close(warp(image, flow), bilinear_border_oracle(image, flow))


def test_integer_flow_is_a_shift():
    image = torch.rand(1, 2, 6, 8, dtype=torch.float64)
    flow = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = warp(image, flow)
    torch.testing.assert_close(out[:, :, 1:, :6], image[:, :, :5, 2:])


def test_grid_cache_is_shared_across_batch_sizes():
    _BASE_GRIDS.clear()
    for batch in (1, 3):
        warp(torch.rand(batch, 3, 4, 6), torch.zeros(batch, 2, 4, 6))
    assert len(_BASE_GRIDS) == 1
    assert base_grid(4, 6, torch.device("cpu"), torch.float32).shape == (1, 4, 6, 2)


@pytest.mark.parametrize(
    ("image_shape", "flow_shape"),
    [
        ((1, 3, 4, 4), (1, 3, 4, 4)),
        ((2, 3, 4, 4), (1, 2, 4, 4)),
        ((1, 3, 4, 4), (1, 2, 4, 5)),
        ((3, 4, 4), (1, 2, 4, 4)),
    ],
)
def test_warp_rejects_bad_shapes(image_shape, flow_shape):
    with pytest.raises(ValueError, match="must have shape"):
        warp(torch.rand(image_shape), torch.rand(flow_shape))
