"""VidEoMT training loss: Hungarian matching of queries to instances, then class and mask losses.

Matching (``VideomtHungarianMatcher``), per clip, cost ``C = cost_mask * BCE + cost_class * (-p[class]) +
cost_dice * dice`` minimized with scipy's ``linear_sum_assignment``:

- ``"clip"`` (Mask2Former-VIS): the mask costs are computed on point samples shared by every frame of the
  clip (the frames act as channels), the class cost on the frame-averaged probabilities, so one assignment
  holds for the whole clip.
- ``"consistent"`` (the official online VidEoMT matcher): each instance is matched on the first frame where
  its mask is non-empty, using that frame's predictions only; queries taken by earlier frames cost ``1e6``.
  An instance keeps its query on every frame. Instances whose mask is empty on every frame stay unmatched.

Losses (``VideomtLoss``), for the final prediction and every auxiliary one (each re-matched), summed:

- class: cross-entropy over every frame and query, matched queries targeting their instance's class on every
  frame, the rest "no object" (weighted ``no_object_weight``); weighted mean as ``F.cross_entropy``.
- mask: sigmoid BCE and dice on ``train_num_points`` points per (instance, frame), chosen by uncertainty
  (``oversample_ratio`` x candidates, the ``importance_sample_ratio`` most uncertain, the rest uniform);
  summed over (instance, frame) and divided by the number of instances (all-reduced under DDP).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy.optimize import linear_sum_assignment
from torch import nn

MATCHING_MODES = ("clip", "consistent")
USED_QUERY_COST = 1e6


def point_sample(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``features (N, C, H, W)`` at ``coords (N, P, 2)`` in ``[0, 1]`` (x, y) -> ``(N, C, P)``.

    Pixel centres sit at ``(i + 0.5) / size`` (``align_corners=False``); outside the image counts as 0.
    """
    grid = rearrange(2.0 * coords - 1.0, "n p xy -> n p 1 xy").to(features.dtype)
    return rearrange(F.grid_sample(features, grid, align_corners=False), "n c p 1 -> n c p")


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Point coordinates ``(N, num_points, 2)`` for mask logits ``(N, 1, H, W)``.

    ``int(num_points * oversample_ratio)`` uniform candidates are drawn; the ``int(importance_sample_ratio *
    num_points)`` with the smallest ``|logit|`` (most uncertain) are kept, followed by uniform points.
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1; got {oversample_ratio}, "
            f"{importance_sample_ratio}"
        )
    n = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_candidates, 2, generator=generator, device=logits.device)
    uncertainty = -point_sample(logits, candidates.to(logits.dtype))[:, 0].abs()  # (N, candidates)
    num_uncertain = int(importance_sample_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - num_uncertain, 2, generator=generator, device=logits.device)
    return torch.cat((chosen, uniform), dim=1)


def pairwise_sigmoid_ce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over points of BCE-with-logits for every pair: ``pred (Q, K)``, ``target (N, K)`` -> ``(Q, N)``."""
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    return (pos @ target.T + neg @ (1 - target).T) / pred.shape[1]


def pairwise_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` with ``p = sigmoid(pred)``, every pair -> ``(Q, N)``."""
    prob = pred.sigmoid()
    numerator = 2 * prob @ target.T
    denominator = prob.sum(-1)[:, None] + target.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _check_targets(masks: torch.Tensor, classes: torch.Tensor, mask_labels, class_labels, num_labels: int) -> None:
    batch, frames = masks.shape[:2]
    if not isinstance(mask_labels, (list, tuple)) or not isinstance(class_labels, (list, tuple)):
        raise TypeError(
            f"mask_labels and class_labels must be lists (one entry per clip); got {type(mask_labels).__name__}, "
            f"{type(class_labels).__name__}"
        )
    if len(mask_labels) != batch or len(class_labels) != batch:
        raise ValueError(f"need {batch} clips of labels; got {len(mask_labels)} mask_labels, {len(class_labels)}")
    for b, (m, c) in enumerate(zip(mask_labels, class_labels, strict=True)):
        if m.ndim != 4 or m.shape[1] != frames or c.shape != (m.shape[0],):
            raise ValueError(
                f"clip {b}: mask_labels must be (N, T={frames}, H, W) and class_labels (N,); got "
                f"{tuple(m.shape)} and {tuple(c.shape)}"
            )
        if c.dtype != torch.long:
            raise TypeError(f"clip {b}: class_labels must be int64; got {c.dtype}")
        if c.numel() and (c.min() < 0 or c.max() >= num_labels):
            raise ValueError(f"clip {b}: class_labels must be in [0, {num_labels}); got {c.tolist()}")


class VideomtHungarianMatcher(nn.Module):
    """Assign queries to instances per clip (see the module docstring for the two modes).

    ``forward(masks (B, T, Q, h, w), classes (B, T, Q, C+1), mask_labels [(N_b, T, H, W)], class_labels [(N_b,)])``
    returns per clip ``(query_indices, instance_indices)``, int64, sorted by query.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        mode: str = "clip",
    ):
        super().__init__()
        if mode not in MATCHING_MODES:
            raise ValueError(f"mode must be one of {MATCHING_MODES}; got {mode!r}")
        if cost_class == cost_mask == cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points
        self.mode = mode

    def cost_matrix(
        self,
        masks: torch.Tensor,
        classes: torch.Tensor,
        target_masks: torch.Tensor,
        labels: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """Cost ``(Q, N)`` of one clip: ``masks (T, Q, h, w)``, ``classes (T, Q, C+1)``, ``target_masks (N, T, H, W)``,
        ``labels (N,)``, ``point_coords (K, 2)`` shared by every frame and mask. Computed in float32 or wider."""
        dtype = torch.promote_types(masks.dtype, torch.float32)
        probs = classes.to(dtype).softmax(-1).mean(0)  # (Q, C+1)
        cost_class = -probs[:, labels]
        pred = rearrange(masks.to(dtype), "t q h w -> q t h w")
        target = target_masks.to(dtype)
        pred = rearrange(point_sample(pred, point_coords[None].expand(pred.shape[0], -1, -1)), "q t k -> q (t k)")
        target = rearrange(
            point_sample(target, point_coords[None].expand(target.shape[0], -1, -1).to(dtype)), "n t k -> n (t k)"
        )
        cost = (
            self.cost_mask * pairwise_sigmoid_ce(pred, target)
            + self.cost_class * cost_class
            + self.cost_dice * pairwise_dice(pred, target)
        )
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    @torch.no_grad()
    def forward(
        self,
        masks: torch.Tensor,
        classes: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        _check_targets(masks, classes, mask_labels, class_labels, classes.shape[-1] - 1)
        indices = []
        for b in range(masks.shape[0]):
            coords = torch.rand(self.num_points, 2, generator=generator, device=masks.device)
            if self.mode == "clip":
                cost = self.cost_matrix(masks[b], classes[b], mask_labels[b], class_labels[b], coords)
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
            else:
                rows, cols = self._match_consistent(masks[b], classes[b], mask_labels[b], class_labels[b], coords)
            order = np.argsort(rows)
            indices.append(
                (torch.as_tensor(rows[order], dtype=torch.long), torch.as_tensor(cols[order], dtype=torch.long))
            )
        return indices

    def _match_consistent(self, masks, classes, target_masks, labels, coords) -> tuple[np.ndarray, np.ndarray]:
        present = target_masks.flatten(2).any(-1)  # (N, T)
        first = torch.where(present.any(1), present.float().argmax(1), -1).tolist()
        used: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        for frame in sorted({f for f in first if f >= 0}):
            group = [n for n, f in enumerate(first) if f == frame]
            cost = self.cost_matrix(
                masks[frame : frame + 1],
                classes[frame : frame + 1],
                target_masks[group][:, frame : frame + 1],
                labels[group],
                coords,
            ).cpu()
            cost[used] = USED_QUERY_COST
            r, c = linear_sum_assignment(cost.numpy())
            used += r.tolist()
            rows += r.tolist()
            cols += [group[i] for i in c]
        return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def _num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Instances in the batch, averaged over DDP processes, at least 1."""
    num = torch.as_tensor(float(sum(len(c) for c in class_labels)), device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        world = torch.distributed.get_world_size()
    return (num / world).clamp(min=1)


class VideomtLoss(nn.Module):
    """Weighted VidEoMT loss over the final and auxiliary predictions.

    Weights and point sampling come from the ``VideomtConfig`` (``class_weight`` 2, ``mask_weight`` 5,
    ``dice_weight`` 5, ``no_object_weight`` 0.1, ``train_num_points``, ``oversample_ratio``,
    ``importance_sample_ratio``); the matcher uses the same weights as costs.

    ``forward(outputs, mask_labels [(N_b, T, H, W)], class_labels [(N_b,)], generator=None) -> dict``: ``"loss"``
    (the weighted total), ``"loss_class"``, ``"loss_mask"``, ``"loss_dice"`` of the final prediction and
    ``"loss_class_aux{i}"`` ... of auxiliary prediction ``i`` (all unweighted).
    """

    def __init__(self, config, matching: str = "clip"):
        super().__init__()
        self.num_labels = config.num_labels
        self.weights = {"class": config.class_weight, "mask": config.mask_weight, "dice": config.dice_weight}
        self.num_points = config.train_num_points
        self.oversample_ratio = config.oversample_ratio
        self.importance_sample_ratio = config.importance_sample_ratio
        self.matcher = VideomtHungarianMatcher(
            cost_class=config.class_weight,
            cost_mask=config.mask_weight,
            cost_dice=config.dice_weight,
            num_points=config.train_num_points,
            mode=matching,
        )
        class_weight = torch.ones(config.num_labels + 1)
        class_weight[-1] = config.no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, outputs, mask_labels, class_labels, generator: torch.Generator | None = None) -> dict:
        predictions = [(outputs.masks_queries_logits, outputs.class_queries_logits, "")]
        for i, aux in enumerate(outputs.auxiliary_logits or ()):
            predictions.append((aux["masks_queries_logits"], aux["class_queries_logits"], f"_aux{i}"))
        num_masks = _num_masks(class_labels, outputs.masks_queries_logits.device)
        losses: dict[str, torch.Tensor] = {}
        for masks, classes, suffix in predictions:
            indices = self.matcher(masks, classes, mask_labels, class_labels, generator=generator)
            coords = self.sample_points(masks, indices, generator)
            for name, value in self.losses(
                masks, classes, mask_labels, class_labels, indices, coords, num_masks
            ).items():
                losses[f"loss_{name}{suffix}"] = value
        losses["loss"] = sum(self.weights[key.split("_")[1]] * value for key, value in losses.items())
        return losses

    def sample_points(self, masks: torch.Tensor, indices, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uncertainty-chosen coordinates ``(M*T, P, 2)`` for the matched masks (``M`` matches, clip-major)."""
        matched = self._matched_predictions(masks, indices)
        with torch.no_grad():
            return uncertain_point_coords(
                rearrange(matched.detach(), "m t h w -> (m t) 1 h w"),
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generator,
            )

    @staticmethod
    def _matched_predictions(masks: torch.Tensor, indices) -> torch.Tensor:
        """``(M, T, h, w)`` predicted masks of the matched queries, clip by clip."""
        return torch.cat([rearrange(masks[b][:, q], "t m h w -> m t h w") for b, (q, _) in enumerate(indices)])

    def losses(
        self,
        masks: torch.Tensor,
        classes: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        point_coords: torch.Tensor,
        num_masks: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Unweighted ``class``, ``mask``, ``dice`` losses for a given assignment and given points.

        ``masks (B, T, Q, h, w)``, ``classes (B, T, Q, C+1)``, ``point_coords (M*T, P, 2)`` ordered as
        :meth:`sample_points` (clip, match, frame).
        """
        batch, frames, num_queries = classes.shape[:3]
        target_classes = torch.full((batch, num_queries), self.num_labels, dtype=torch.long, device=classes.device)
        for b, (q, n) in enumerate(indices):
            target_classes[b, q.to(classes.device)] = class_labels[b][n].to(classes.device)
        target_classes = target_classes[:, None].expand(-1, frames, -1)
        loss_class = F.cross_entropy(
            rearrange(classes, "b t q c -> (b t q) c"),
            target_classes.reshape(-1),
            weight=self.class_weight.to(classes),
        )

        pred = rearrange(self._matched_predictions(masks, indices), "m t h w -> (m t) 1 h w")
        target = torch.cat([mask_labels[b][n.to(mask_labels[b].device)] for b, (_, n) in enumerate(indices)])
        target = rearrange(target.to(pred), "m t h w -> (m t) 1 h w")
        if pred.shape[0] == 0:
            zero = masks.sum() * 0
            return {"class": loss_class, "mask": zero, "dice": zero}
        pred_points = point_sample(pred, point_coords.to(pred))[:, 0]  # (M*T, P)
        target_points = point_sample(target, point_coords.to(pred))[:, 0]
        loss_mask = F.binary_cross_entropy_with_logits(pred_points, target_points, reduction="none").mean(1).sum()
        prob = pred_points.sigmoid()
        dice = 1 - (2 * (prob * target_points).sum(1) + 1) / (prob.sum(1) + target_points.sum(1) + 1)
        return {"class": loss_class, "mask": loss_mask / num_masks, "dice": dice.sum() / num_masks}
