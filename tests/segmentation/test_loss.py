"""Matcher and loss against brute force and the written formulas (bilinear sampling, BCE, dice, CE by loops)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from videostate.segmentation.loss import (
    USED_QUERY_COST,
    VideomtHungarianMatcher,
    VideomtLoss,
    point_sample,
    uncertain_point_coords,
)

from .tiny import random_video, tiny_config, tiny_model


def bilinear(image: torch.Tensor, x: float, y: float) -> float:
    """Value of ``image (H, W)`` at normalised (x, y), pixel centres at (i + 0.5) / size, zero outside."""
    h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            weight = (1 - abs(px - (x0 + dx))) * (1 - abs(py - (y0 + dy)))
            if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                total += weight * float(image[y0 + dy, x0 + dx])
    return total


def bce(z: float, t: float) -> float:
    return max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def dice(probs: list[float], targets: list[float]) -> float:
    inter = sum(p * t for p, t in zip(probs, targets, strict=True))
    return 1 - (2 * inter + 1) / (sum(probs) + sum(targets) + 1)


def random_clip(batch=2, frames=2, queries=4, classes=3, instances=(3, 2), seed=0, size=(8, 8), target_size=(12, 10)):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randn(batch, frames, queries, *size, generator=g, dtype=torch.float64) * 3
    logits = torch.randn(batch, frames, queries, classes + 1, generator=g, dtype=torch.float64)
    mask_labels = [(torch.rand(n, frames, *target_size, generator=g) < 0.4).double() for n in instances]
    class_labels = [torch.randint(0, classes, (n,), generator=g) for n in instances]
    return masks, logits, mask_labels, class_labels


def test_point_sample_is_bilinear_with_zero_padding():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 6, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1  # some points outside
    values = point_sample(features, coords)
    assert values.shape == (2, 3, 6)
    for n, c, p in itertools.product(range(2), range(3), range(6)):
        x, y = coords[n, p].tolist()
        assert values[n, c, p].item() == pytest.approx(bilinear(features[n, c], x, y), abs=1e-12)


def test_uncertain_points_keep_the_most_uncertain_candidates():
    logits = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coords = uncertain_point_coords(logits, 10, 3.0, 0.7, generator=torch.Generator().manual_seed(5))
    assert coords.shape == (3, 10, 2)
    replay = torch.Generator().manual_seed(5)
    candidates = torch.rand(3, 30, 2, generator=replay)
    uniform = torch.rand(3, 3, 2, generator=replay)
    for n in range(3):
        uncertainty = [-abs(bilinear(logits[n, 0], *candidates[n, i].double().tolist())) for i in range(30)]
        best = sorted(range(30), key=lambda i: -uncertainty[i])[:7]
        assert {tuple(candidates[n, i].tolist()) for i in best} == {tuple(p) for p in coords[n, :7].tolist()}
    assert torch.equal(coords[:, 7:], uniform)
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_point_coords(logits, 10, 0.5, 0.7)


def cost_by_loops(matcher, masks, logits, targets, labels, coords) -> torch.Tensor:
    """(Q, N) cost of one clip: masks (T, Q, h, w), logits (T, Q, C+1), targets (N, T, H, W)."""
    frames, queries = logits.shape[:2]
    probs = logits.softmax(-1).mean(0)
    cost = torch.zeros(queries, len(labels), dtype=torch.float64)
    for q, n in itertools.product(range(queries), range(len(labels))):
        z = [bilinear(masks[t, q], x, y) for t in range(frames) for x, y in coords.tolist()]
        tt = [bilinear(targets[n, t], x, y) for t in range(frames) for x, y in coords.tolist()]
        ce = sum(bce(a, b) for a, b in zip(z, tt, strict=True)) / len(z)
        cost[q, n] = (
            matcher.cost_mask * ce
            - matcher.cost_class * probs[q, labels[n]]
            + matcher.cost_dice * dice([sigmoid(a) for a in z], tt)
        )
    return cost


def test_cost_matrix_equals_the_formula():
    masks, logits, mask_labels, class_labels = random_clip()
    matcher = VideomtHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=7)
    coords = torch.rand(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cost = matcher.cost_matrix(masks[0], logits[0], mask_labels[0], class_labels[0], coords)
    expected = cost_by_loops(matcher, masks[0], logits[0], mask_labels[0], class_labels[0], coords)
    torch.testing.assert_close(cost, expected, rtol=0, atol=1e-10)


def brute_force_assignment(cost: torch.Tensor) -> float:
    """Smallest total cost of a one-to-one assignment of min(Q, N) pairs, by enumeration."""
    q, n = cost.shape
    if n <= q:
        return min(sum(cost[p[i], i].item() for i in range(n)) for p in itertools.permutations(range(q), n))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(n), q))


@pytest.mark.parametrize("instances", [(1, 3), (4, 2), (6, 5)])
def test_clip_matching_is_optimal_by_brute_force(instances):
    masks, logits, mask_labels, class_labels = random_clip(queries=5, instances=instances, seed=sum(instances))
    matcher = VideomtHungarianMatcher(num_points=16)
    indices = matcher(masks, logits, mask_labels, class_labels, generator=torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)
    for b in range(2):
        coords = torch.rand(16, 2, generator=replay)
        cost = matcher.cost_matrix(masks[b], logits[b], mask_labels[b], class_labels[b], coords)
        rows, cols = indices[b]
        assert len(rows) == min(5, instances[b]) and len(set(rows.tolist())) == len(rows)
        assert len(set(cols.tolist())) == len(cols) and torch.all(rows[1:] > rows[:-1])
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_assignment(cost), abs=1e-9)


def consistent_by_brute_force(matcher, masks, logits, targets, labels, coords) -> dict[int, int]:
    """Instance -> query: frame by frame in order, new instances take the cheapest unused queries."""
    present = [[bool(targets[n, t].any()) for t in range(targets.shape[1])] for n in range(len(labels))]
    first = {n: row.index(True) for n, row in enumerate(present) if any(row)}
    used: set[int] = set()
    assignment: dict[int, int] = {}
    for frame in sorted(set(first.values())):
        group = [n for n in sorted(first) if first[n] == frame]
        cost = matcher.cost_matrix(
            masks[frame : frame + 1],
            logits[frame : frame + 1],
            targets[group][:, frame : frame + 1],
            labels[group],
            coords,
        )
        free = [q for q in range(cost.shape[0]) if q not in used]
        best = min(
            itertools.permutations(free, len(group)),
            key=lambda p: sum(cost[p[i], i].item() for i in range(len(group))),
        )
        for i, n in enumerate(group):
            assignment[n] = best[i]
            used.add(best[i])
    return assignment


def test_consistent_matching_matches_each_instance_where_it_first_appears():
    masks, logits, mask_labels, class_labels = random_clip(frames=3, queries=5, instances=(4, 3), seed=4)
    mask_labels[0][0, :1] = 0  # instance 0 appears at frame 1
    mask_labels[0][1, :2] = 0  # instance 1 appears at frame 2
    mask_labels[0][3] = 0  # instance 3 never appears: unmatched
    mask_labels[1][2, :1] = 0
    matcher = VideomtHungarianMatcher(num_points=12, mode="consistent")
    indices = matcher(masks, logits, mask_labels, class_labels, generator=torch.Generator().manual_seed(2))
    replay = torch.Generator().manual_seed(2)
    for b in range(2):
        coords = torch.rand(12, 2, generator=replay)
        expected = consistent_by_brute_force(matcher, masks[b], logits[b], mask_labels[b], class_labels[b], coords)
        rows, cols = indices[b]
        assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == expected
    assert 3 not in indices[0][1].tolist()


def test_consistent_matching_prefers_the_first_frame_prediction():
    """Query 0 fits frame 0 and is unsure on frame 1; query 1 is wrong on frame 0 and right on frame 1."""
    frames, q = 2, 3
    target = torch.zeros(1, frames, 8, 8, dtype=torch.float64)
    target[0, 0, :4] = 1
    target[0, 1, 4:] = 1
    masks = torch.full((1, frames, q, 8, 8), -8.0, dtype=torch.float64)
    masks[0, 0, 0] = torch.where(target[0, 0].bool(), 8.0, -8.0)
    masks[0, 1, 0] = 0.0
    masks[0, :, 1] = torch.where(target[0, 1].bool(), 8.0, -8.0)
    logits = torch.zeros(1, frames, q, 2, dtype=torch.float64)
    labels = [torch.tensor([0])]
    clip = VideomtHungarianMatcher(num_points=256)(masks, logits, [target], labels)
    assert clip[0][0].tolist() == [0]
    target[0, 0] = 0  # now the instance first appears on frame 1
    consistent = VideomtHungarianMatcher(num_points=256, mode="consistent")(masks, logits, [target], labels)
    assert consistent[0][0].tolist() == [1]
    assert USED_QUERY_COST == 1e6


def loss_by_loops(loss, masks, logits, mask_labels, class_labels, indices, coords, num_masks):
    batch, frames, queries = logits.shape[:3]
    weight = [1.0] * loss.num_labels + [0.1]
    num = den = 0.0
    for b, t, q in itertools.product(range(batch), range(frames), range(queries)):
        target = loss.num_labels
        for qq, n in zip(*indices[b], strict=True):
            if qq == q:
                target = int(class_labels[b][n])
        log_prob = logits[b, t, q].log_softmax(-1)[target].item()
        num -= weight[target] * log_prob
        den += weight[target]
    ce_sum = dice_sum = 0.0
    row = 0
    for b in range(batch):
        for q, n in zip(*indices[b], strict=True):
            for t in range(frames):
                points = coords[row].tolist()
                z = [bilinear(masks[b, t, q], x, y) for x, y in points]
                tt = [bilinear(mask_labels[b][n, t], x, y) for x, y in points]
                ce_sum += sum(bce(a, c) for a, c in zip(z, tt, strict=True)) / len(points)
                dice_sum += dice([sigmoid(a) for a in z], tt)
                row += 1
    return {"class": num / den, "mask": ce_sum / num_masks, "dice": dice_sum / num_masks}


def test_losses_equal_the_formula():
    masks, logits, mask_labels, class_labels = random_clip(queries=5, instances=(3, 2), seed=6)
    loss = VideomtLoss(tiny_config(num_labels=3, train_num_points=9))
    indices = loss.matcher(masks, logits, mask_labels, class_labels)
    coords = loss.sample_points(masks, indices, generator=torch.Generator().manual_seed(0))
    assert coords.shape == (5 * 2, 9, 2)
    got = loss.losses(masks, logits, mask_labels, class_labels, indices, coords, torch.tensor(5.0))
    expected = loss_by_loops(loss, masks, logits, mask_labels, class_labels, indices, coords.double(), 5.0)
    for key in ("class", "mask", "dice"):
        assert got[key].item() == pytest.approx(expected[key], abs=1e-9)


def test_loss_sums_final_and_auxiliary_terms_with_config_weights():
    model = tiny_model(num_hidden_layers=3, num_blocks=2, train_num_points=16).train()
    video = random_video(2, 2)
    _, _, mask_labels, class_labels = random_clip(instances=(2, 1), seed=8, target_size=(16, 16))
    loss = VideomtLoss(model.config)
    assert loss.weights == {"class": 2.0, "mask": 5.0, "dice": 5.0}
    assert loss.class_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    outputs = model(video)
    out = loss(outputs, mask_labels, class_labels, generator=torch.Generator().manual_seed(0))
    names = {f"loss_{k}{s}" for k in ("class", "mask", "dice") for s in ("", "_aux0", "_aux1")}
    assert set(out) == names | {"loss"}
    weighted = sum(loss.weights[k.split("_")[1]] * v for k, v in out.items() if k != "loss")
    torch.testing.assert_close(out["loss"], weighted)
    out["loss"].backward()
    assert model.query_updater.weight.grad.abs().sum() > 0
    assert model.query.weight.grad.abs().sum() > 0


def test_clip_without_instances_has_only_the_class_loss():
    masks, logits, _, _ = random_clip(instances=(0, 0))
    loss = VideomtLoss(tiny_config())
    empty = [torch.zeros(0, 2, 8, 8)] * 2
    outputs = type("Out", (), {"masks_queries_logits": masks, "class_queries_logits": logits, "auxiliary_logits": None})
    out = loss(outputs, empty, [torch.zeros(0, dtype=torch.long)] * 2)
    assert out["loss_mask"].item() == out["loss_dice"].item() == 0.0
    expected = -(logits.log_softmax(-1)[..., -1]).mean()  # every query targets "no object"
    assert out["loss_class"].item() == pytest.approx(expected.item(), abs=1e-12)


def test_target_errors():
    masks, logits, mask_labels, class_labels = random_clip()
    matcher = VideomtHungarianMatcher(num_points=4)
    with pytest.raises(ValueError, match="need 2 clips"):
        matcher(masks, logits, mask_labels[:1], class_labels[:1])
    with pytest.raises(ValueError, match=r"T=2"):
        matcher(masks, logits, [m[:, :1] for m in mask_labels], class_labels)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        matcher(masks, logits, mask_labels, [c + 3 for c in class_labels])
    with pytest.raises(TypeError, match="int64"):
        matcher(masks, logits, mask_labels, [c.int() for c in class_labels])
    with pytest.raises(TypeError, match="lists"):
        matcher(masks, logits, mask_labels[0], class_labels)
    with pytest.raises(ValueError, match="mode"):
        VideomtHungarianMatcher(mode="frame")
    with pytest.raises(ValueError, match="non-zero"):
        VideomtHungarianMatcher(0, 0, 0)
