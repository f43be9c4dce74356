import math

import pytest
import torch
import torch.nn.functional as F

from videostate.vlm import CoordinateInjection, CrossAttentionFusion, SpatialFusion, ViewpointAwareAlignment
from videostate.vlm.fusion import pool_points_to_grid

from .oracles import naive_mha


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _linear(layer, x):
    return x @ layer.weight.T + layer.bias


def _layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


# ---------------------------------------------------------------- pooling points to the token grid


def _pool_oracle(points, grid, confidence=None):
    n, H, W, _ = points.shape
    h, w = grid
    coords = torch.zeros(n, h * w, 3, dtype=points.dtype)
    valid = torch.zeros(n, h * w, dtype=torch.bool)
    for f in range(n):
        for i in range(h):
            for j in range(w):
                rows = range(math.floor(i * H / h), math.ceil((i + 1) * H / h))
                cols = range(math.floor(j * W / w), math.ceil((j + 1) * W / w))
                good = [
                    points[f, r, c]
                    for r in rows
                    for c in cols
                    if torch.isfinite(points[f, r, c]).all() and (confidence is None or confidence[f, r, c] > 0)
                ]
                if good:
                    coords[f, i * w + j] = torch.stack(good).mean(0)
                    valid[f, i * w + j] = True
    return coords, valid


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])  # exact blocks, uneven adaptive cells
def test_pool_points_to_grid_matches_cell_loop(size):
    points = _rand(2, *size, 3)
    points[0, 0, 0, 1] = float("nan")
    points[0, :2, :2] = float("inf")  # a whole cell invalid in the exact case
    points[1, 3, 3, 0] = -float("inf")
    confidence = _rand(2, *size, seed=1).abs()
    confidence[1, 5:, :] = 0.0
    coords, valid = pool_points_to_grid(points, (4, 4), confidence)
    expected_coords, expected_valid = _pool_oracle(points, (4, 4), confidence)
    assert torch.equal(valid, expected_valid)
    assert not valid.all()
    torch.testing.assert_close(coords, expected_coords)
    assert torch.isfinite(coords).all()


def test_pool_points_errors():
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\); got \(2, 4, 4\)"):
        pool_points_to_grid(_rand(2, 4, 4), (2, 2))
    with pytest.raises(ValueError, match=r"confidence must have shape \(n, H, W\)=\(1, 4, 4\)"):
        pool_points_to_grid(_rand(1, 4, 4, 3), (2, 2), _rand(1, 4, 5))


# ---------------------------------------------------------------- coordinate injection


@pytest.mark.parametrize("gate_type", ["sigmoid", "softmax"])
def test_coordinate_injection_formula(gate_type):
    torch.manual_seed(0)
    module = CoordinateInjection(6, gate_type).double()
    visual, coords = _rand(2, 5, 6), _rand(2, 5, 3, seed=1)
    valid = torch.ones(2, 5, dtype=torch.bool)
    out = module(visual, coords, valid)
    phi = _linear(module.coord_encoder[2], F.gelu(_linear(module.coord_encoder[0], coords)))
    logits = _linear(module.gate, torch.cat([visual, phi], -1))
    if gate_type == "sigmoid":
        alpha = torch.sigmoid(logits)
    else:
        alpha = torch.exp(logits[..., 1:]) / torch.exp(logits).sum(-1, keepdim=True)
    assert alpha.shape == (2, 5, 1) and bool(((alpha > 0) & (alpha < 1)).all())
    torch.testing.assert_close(out, visual + alpha * phi)


def test_coordinate_injection_masks_invalid_points_and_keeps_gradients_finite():
    torch.manual_seed(0)
    module = CoordinateInjection(6).double()
    visual = _rand(1, 4, 6).requires_grad_()
    coords = _rand(1, 4, 3, seed=1)
    coords[0, 1] = float("nan")
    coords[0, 2, 0] = float("inf")
    valid = torch.tensor([[True, False, False, True]])
    out = module(visual, coords, valid)
    torch.testing.assert_close(out[0, 1:3], visual[0, 1:3], rtol=0, atol=0)
    assert not torch.allclose(out[0, 0], visual[0, 0])
    out.sum().backward()
    assert torch.isfinite(visual.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_coordinate_injection_errors():
    module = CoordinateInjection(6)
    with pytest.raises(ValueError, match="coordinate_gate_type must be one of"):
        CoordinateInjection(6, "tanh")
    with pytest.raises(ValueError, match=r"coords must have shape \(n, tokens, 3\)=\(1, 4, 3\)"):
        module(torch.zeros(1, 4, 6), torch.zeros(1, 5, 3), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be bool"):
        module(torch.zeros(1, 4, 6), torch.zeros(1, 4, 3), torch.ones(1, 4))


# ---------------------------------------------------------------- viewpoint alignment


def _alignment_oracle(module, geometry, camera):
    enc = module.view_encoder
    view = _linear(enc[2], F.gelu(_linear(enc[0], camera)))
    outs = []
    for f in range(geometry.shape[0]):
        keys = _layer_norm(module.view_norm, view[f])
        attended = naive_mha(module.alignment_attention, _layer_norm(module.geometry_norm, geometry[f]), keys)
        aligned = geometry[f] + attended
        mean_view = view[f].mean(0)
        scale, shift = _linear(module.modulation, mean_view).chunk(2)
        aligned = aligned * (1 + scale) + shift
        outs.append(torch.cat([aligned, _linear(module.global_view, mean_view)[None]]))
    return torch.stack(outs)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])  # one view: a shortcut at inference
@pytest.mark.parametrize("views", [1, 5])  # one camera token per frame (CUT3R), or one per patch
def test_viewpoint_alignment_formula(views, grad):
    torch.manual_seed(0)
    module = ViewpointAwareAlignment(8, num_heads=2).double()
    geometry, camera = _rand(3, 5, 8), _rand(3, views, 8, seed=1)
    with torch.set_grad_enabled(grad):
        out = module(geometry, camera)
    assert out.shape == (3, 6, 8)
    torch.testing.assert_close(out, _alignment_oracle(module, geometry, camera))


def test_viewpoint_alignment_depends_on_the_camera_pose():
    torch.manual_seed(0)
    module = ViewpointAwareAlignment(8, num_heads=2).double()
    geometry = _rand(1, 5, 8)
    poses = _rand(4, 1, 8, seed=2)
    outs = [module(geometry, pose[None]) for pose in poses]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (outs[a] - outs[b]).abs().max() > 1e-3
    # the same pose gives the same tokens whatever the other frames in the batch are
    batched = module(geometry.expand(4, -1, -1), poses)
    torch.testing.assert_close(batched[2:3], outs[2])
    with pytest.raises(ValueError, match="same n and d"):
        module(geometry, _rand(2, 1, 8))


# ---------------------------------------------------------------- cross-attention fusion


def test_cross_attention_fusion_formula():
    torch.manual_seed(0)
    module = CrossAttentionFusion(8, 6, num_heads=2).double().eval()
    visual, geometry = _rand(2, 4, 8), _rand(2, 7, 6, seed=1)
    out = module(visual, geometry)
    for f in range(2):
        g = _layer_norm(module.spatial_encoder_norm, geometry[f])
        q = _linear(module.clip_query_proj, _layer_norm(module.clip_norm, visual[f]))
        k = _linear(module.spatial_encoder_key_proj, g)
        v = _linear(module.spatial_encoder_value_proj, g)
        attn = module.cross_attention
        d, h = attn.embed_dim, attn.num_heads
        wq, wk, wv = attn.in_proj_weight.split(d)
        bq, bk, bv = attn.in_proj_bias.split(d)
        qh, kh, vh = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
        heads = []
        for i in range(h):
            sl = slice(i * d // h, (i + 1) * d // h)
            heads.append(torch.softmax(qh[:, sl] @ kh[:, sl].T / math.sqrt(d // h), -1) @ vh[:, sl])
        fused = _linear(attn.out_proj, torch.cat(heads, -1))
        expected = _layer_norm(module.out_norm, _linear(module.out_proj, fused)) + visual[f]
        torch.testing.assert_close(out[f], expected)
    with pytest.raises(ValueError, match="same number of frames"):
        module(visual, geometry[:1])


# ---------------------------------------------------------------- the chain and its switches


def _spatial_inputs(n=2, seed=0):
    return dict(
        visual=_rand(n, 16, 8, seed=seed),
        patch_tokens=_rand(n, 9, 6, seed=seed + 1),
        camera_tokens=_rand(n, 1, 6, seed=seed + 2),
        points=_rand(n, 8, 8, 3, seed=seed + 3),
        confidence=_rand(n, 8, 8, seed=seed + 4).abs(),
    )


@pytest.mark.parametrize("alignment", [True, False])
@pytest.mark.parametrize("injection", [True, False])
def test_spatial_fusion_switches(alignment, injection):
    torch.manual_seed(0)
    module = (
        SpatialFusion(
            8, 6, num_heads=2, alignment_heads=2, use_viewpoint_alignment=alignment, use_coordinate_injection=injection
        )
        .double()
        .eval()
    )
    inputs = _spatial_inputs()
    out = module(**inputs)
    visual = inputs["visual"]
    if injection:
        coords, valid = pool_points_to_grid(inputs["points"], (4, 4), inputs["confidence"])
        visual = module.coordinate_injection(visual, coords, valid)
    else:
        assert module.coordinate_injection is None
    if alignment:
        geometry = module.viewpoint_alignment(inputs["patch_tokens"], inputs["camera_tokens"])
    else:
        assert module.viewpoint_alignment is None
        geometry = torch.cat([inputs["camera_tokens"], inputs["patch_tokens"]], 1)
    torch.testing.assert_close(out, module.fusion(visual, geometry), rtol=0, atol=0)


def test_spatial_fusion_errors():
    module = SpatialFusion(8, 6, num_heads=2, alignment_heads=2)
    inputs = {k: v.float() for k, v in _spatial_inputs().items()}
    with pytest.raises(ValueError, match=r"points .* are required"):
        module(**{**inputs, "points": None})
    with pytest.raises(ValueError, match="square grid; got 15"):
        module(**{**inputs, "visual": inputs["visual"][:, :15]})
    with pytest.raises(ValueError, match="points must cover the 2 frames; got 1"):
        module(**{**inputs, "points": inputs["points"][:1]})
