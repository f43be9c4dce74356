import math

import numpy as np
import pytest
import torch

from videostate.depth.losses import (
    depth_to_disparity,
    gradient_matching_loss,
    midas_se_loss,
    scale_and_shift,
    state_smooth_loss,
    temporal_gradient_loss,
)


def lstsq_fit(p, g, m):
    """Oracle: numpy least squares on the valid pixels of one sample."""
    p, g, m = (x.detach().numpy().ravel() for x in (p, g, m))
    A = np.stack([p[m], np.ones(m.sum())], axis=1)
    (s, t), *_ = np.linalg.lstsq(A, g[m], rcond=None)
    return s, t


def loop_gradient_term(r, m, scales):
    """Oracle: the MiDaS gradient term with explicit loops; ``r, m`` are lists of (H, W) numpy arrays."""
    total = 0.0
    for k in range(scales):
        step = 2**k
        num, count = 0.0, 0.0
        for ri, mi in zip(r, m, strict=True):
            rs, ms = ri[::step, ::step], mi[::step, ::step]
            res = np.where(ms, rs, 0.0)
            H, W = rs.shape
            for i in range(H):
                for j in range(W):
                    if j + 1 < W and ms[i, j] and ms[i, j + 1]:
                        num += abs(res[i, j + 1] - res[i, j])
                    if i + 1 < H and ms[i, j] and ms[i + 1, j]:
                        num += abs(res[i + 1, j] - res[i, j])
            count += ms.sum()
        total += num / count if count else 0.0
    return total


def test_scale_and_shift_matches_lstsq():
    torch.manual_seed(0)
    pred = torch.rand(3, 5, 7, dtype=torch.float64)
    target = torch.randn(3, 5, 7, dtype=torch.float64)
    mask = torch.rand(3, 5, 7) > 0.3
    s, t = scale_and_shift(pred, target, mask)
    for b in range(3):
        es, et = lstsq_fit(pred[b], target[b], mask[b])
        assert s[b].item() == pytest.approx(es, rel=1e-9)
        assert t[b].item() == pytest.approx(et, rel=1e-9, abs=1e-12)
    ls = torch.linalg.lstsq(
        torch.stack([pred[0][mask[0]], torch.ones(int(mask[0].sum()), dtype=torch.float64)], 1),
        target[0][mask[0]][:, None],
    ).solution
    torch.testing.assert_close(torch.stack([s[0], t[0]]), ls[:, 0])


def test_scale_and_shift_recovers_an_affine_relation_and_handles_singular_samples():
    pred = torch.rand(2, 4, 4, dtype=torch.float64) + 0.1
    target = 2.5 * pred - 0.75
    s, t = scale_and_shift(pred, target)
    torch.testing.assert_close(s, torch.full((2,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(t, torch.full((2,), -0.75, dtype=torch.float64))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True  # one valid pixel: singular
    s, t = scale_and_shift(pred, target, mask)
    assert s.tolist() == [0.0, 0.0] and t.tolist() == [0.0, 0.0]


def test_midas_se_loss_equals_the_written_formula():
    torch.manual_seed(1)
    pred = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    target = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    mask = torch.rand(2, 1, 9, 11) > 0.2
    got = midas_se_loss(pred, target, mask, gradient_weight=0.5, scales=3)
    data, count, aligned_res = 0.0, 0.0, []
    for b in range(2):
        p, g, m = pred[b, 0].numpy(), target[b, 0].numpy(), mask[b, 0].numpy()
        s, t = lstsq_fit(pred[b, 0], target[b, 0], mask[b, 0])
        data += (((s * p + t - g) ** 2) * m).sum()
        count += m.sum()
        aligned_res.append(s * p + t - g)
    expected = data / (2 * count) + 0.5 * loop_gradient_term(aligned_res, [mask[b, 0].numpy() for b in range(2)], 3)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_midas_se_loss_is_small_for_an_affine_target_and_invariant_to_it():
    torch.manual_seed(2)
    pred = torch.rand(2, 16, 16, dtype=torch.float64)
    noise = 0.01 * torch.randn(2, 16, 16, dtype=torch.float64)
    near = midas_se_loss(pred, 3 * pred + 1 + noise)
    far = midas_se_loss(pred, torch.rand(2, 16, 16, dtype=torch.float64))
    assert near < 0.05 * far
    assert midas_se_loss(pred, 3 * pred + 1).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(midas_se_loss(4 * pred - 2, pred + noise), midas_se_loss(pred, pred + noise))


def test_gradient_matching_equals_loops():
    torch.manual_seed(3)
    pred, target = torch.rand(2, 2, 8, 10, dtype=torch.float64), torch.rand(2, 2, 8, 10, dtype=torch.float64)
    mask = torch.rand(2, 2, 8, 10) > 0.25
    got = gradient_matching_loss(pred, target, mask, scales=4)
    r = [(pred - target)[i, j].numpy() for i in range(2) for j in range(2)]
    m = [mask[i, j].numpy() for i in range(2) for j in range(2)]
    assert got.item() == pytest.approx(loop_gradient_term(r, m, 4), rel=1e-9)


def test_temporal_gradient_loss_equals_loops():
    torch.manual_seed(4)
    B, N, H, W = 2, 4, 5, 6
    target = torch.rand(B, N, H, W, dtype=torch.float64)
    target[:, 1:] = target[:, :1] + 0.05 * torch.randn(B, N - 1, H, W, dtype=torch.float64)  # mostly small changes
    pred = 0.5 * target + 0.02 * torch.randn(B, N, H, W, dtype=torch.float64)
    mask = torch.rand(B, N, H, W) > 0.1
    got = temporal_gradient_loss(pred[:, :, None], target[:, :, None], mask[:, :, None], threshold=0.05)
    num, count = 0.0, 0
    for b in range(B):
        s, t = lstsq_fit(pred[b], target[b], mask[b])
        a = s * pred[b].numpy() + t
        g, m = target[b].numpy(), mask[b].numpy()
        for n in range(1, N):
            rng = g[n][m[n]].max() - g[n][m[n]].min()
            for i in range(H):
                for j in range(W):
                    dg = g[n, i, j] - g[n - 1, i, j]
                    if m[n, i, j] and m[n - 1, i, j] and abs(dg) < 0.05 * rng:
                        num += abs((a[n, i, j] - a[n - 1, i, j]) - dg)
                        count += 1
    assert 0 < count < B * (N - 1) * H * W
    assert got.item() == pytest.approx(num / count, rel=1e-9)


def test_temporal_gradient_loss_ignores_scale_and_is_zero_for_one_frame():
    torch.manual_seed(5)
    target = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    pred = target + 0.01 * torch.randn(1, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(temporal_gradient_loss(7 * pred + 3, target), temporal_gradient_loss(pred, target))
    single = temporal_gradient_loss(pred[:, :1].requires_grad_(), target[:, :1])
    assert single.item() == 0.0


def test_state_smooth_loss_equals_loops():
    torch.manual_seed(6)
    B, N = 2, 3
    temporal = [torch.randn(B, N, 3, 4, 4, dtype=torch.float64), torch.randn(B, N, 5, 2, 2, dtype=torch.float64)]
    static = torch.rand(B, N - 1, 8, 8) > 0.4
    static[1, 1] = False  # a pair without static pixels is left out
    got = state_smooth_loss(temporal, static)
    expected = 0.0
    for feat in temporal:
        h = feat.shape[-1]
        f = 8 // h
        num, pairs = 0.0, 0
        for b in range(B):
            for t in range(N - 1):
                cells = static[b, t].reshape(h, f, h, f).double().mean(dim=(1, 3)) >= 0.5
                if not cells.any():
                    continue
                s0 = feat[b, t][:, cells].mean(-1)
                s1 = feat[b, t + 1][:, cells].mean(-1)
                num += ((s1 - s0) ** 2).sum().item()
                pairs += 1
        expected += num / pairs
    assert got.item() == pytest.approx(expected / 2, rel=1e-9)
    unmasked = state_smooth_loss(temporal[:1])
    s = temporal[0].mean(dim=(-2, -1))
    assert unmasked.item() == pytest.approx(((s[:, 1:] - s[:, :-1]) ** 2).sum(-1).mean().item(), rel=1e-12)


def test_empty_masks_give_zero_with_gradients():
    pred = torch.rand(1, 2, 4, 4, requires_grad=True)
    target = torch.rand(1, 2, 4, 4)
    empty = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    for loss in (midas_se_loss(pred, target, empty), temporal_gradient_loss(pred, target, empty)):
        assert loss.item() == 0.0
        loss.backward()


def test_loss_input_errors():
    x = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="one shape"):
        midas_se_loss(x, torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        midas_se_loss(x, x, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, N, 1, H, W\)"):
        temporal_gradient_loss(torch.rand(1, 2, 3, 4, 4), torch.rand(1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, N-1, H, W\)"):
        state_smooth_loss([torch.rand(1, 3, 2, 4, 4)], torch.ones(1, 3, 4, 4, dtype=torch.bool))


def test_depth_to_disparity():
    depth = torch.tensor([[2.0, 0.0], [0.5, 4.0]])
    disp, valid = depth_to_disparity(depth)
    torch.testing.assert_close(disp, torch.tensor([[0.5, 0.0], [2.0, 0.25]]))
    assert valid.tolist() == [[True, False], [True, True]]


def test_output_anchor_loss_is_its_formula_and_ignores_shape():
    from videostate.depth.losses import output_anchor_loss

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 5, 7, generator=g)
    raw = torch.randn(3, 5, 7, generator=g) * 2 + 1
    expected = []
    for r, q in zip(raw, ref, strict=True):
        tr, tq = r.flatten().median(), q.flatten().median()
        sr, sq = (r - tr).abs().mean(), (q - tq).abs().mean()
        expected.append(((tr - tq) / sq) ** 2 + torch.log(sr / sq) ** 2)
    torch.testing.assert_close(output_anchor_loss(raw, ref), torch.stack(expected).mean())
    # zero for any map with the reference's median and spread, whatever its shape (a permutation of it)
    shuffled = ref.flatten(1)[:, torch.randperm(35, generator=g)].reshape(3, 5, 7).requires_grad_(True)
    loss = output_anchor_loss(shuffled, ref)
    loss.backward()
    assert float(loss.detach()) < 1e-10 and float(shuffled.grad.abs().max()) < 1e-5
    # a shift of one reference spread costs 1, a doubled spread log(2)^2
    t, s = ref.flatten(1).median(1).values, None
    s = (ref.flatten(1) - t[:, None]).abs().mean(1)
    torch.testing.assert_close(output_anchor_loss(ref + s[:, None, None], ref), torch.tensor(1.0))
    doubled = (ref - t[:, None, None]) * 2 + t[:, None, None]
    torch.testing.assert_close(output_anchor_loss(doubled, ref), torch.tensor(math.log(2.0) ** 2))
