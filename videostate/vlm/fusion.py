"""VLM² view-consistent geometry fusion: coordinate injection, viewpoint alignment, cross-attention fusion.

Per frame, with visual tokens ``F (frames, h·w, d_visual)`` from the vision tower, geometry tokens
``G (frames, P, d_geom)``, camera (view) tokens ``Z (frames, 1 or P, d_geom)`` and a point map
``X (frames, H, W, 3)`` from a 3D reconstruction model (CUT3R in VLM-3R, π3 in VLM²):

- :class:`CoordinateInjection` (3D position injection): ``C = avg-pool(X)`` to the token grid over valid
  points only, ``F' = F + α ⊙ φ(C)`` with ``φ`` a 2-layer MLP ``3 → d_visual`` and ``α ∈ [0, 1]`` a
  learnable per-token gate; tokens whose cell has no valid point get no injection.
- :class:`ViewpointAwareAlignment`: view tokens ``V = ψ_v(Z)``; geometry–view alignment attention
  ``G + Attn(Q=G, KV=V)``; feature modulation ``(1 + s(v̄)) ⊙ · + b(v̄)`` by the mean view token
  ``v̄``; output the aligned tokens plus one global view token ``ψ_g(v̄)``: ``(frames, P + 1, d_geom)``.
- :class:`CrossAttentionFusion` (VLM-3R's block, same parameter names so its weights load):
  ``H = Dropout(LN(out_proj(Attn(Q=W_q LN(F'), K=W_k LN(G), V=W_v LN(G)))) + F')``.

:class:`SpatialFusion` chains the three, with each of the first two switchable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GATE_TYPES = ("sigmoid", "softmax")


class CoordinateInjection(nn.Module):
    """3D coordinate injection with a learnable gate: ``F' = F + α ⊙ φ(C)``.

    Args:
        d_visual: width of the visual tokens.
        gate_type: ``"sigmoid"``: ``α = σ(w·[F; φ(C)] + b)``; ``"softmax"``: two logits per token
            (keep, inject) from ``[F; φ(C)]``, ``α`` = the probability of inject.
    """

    def __init__(self, d_visual: int, gate_type: str = "sigmoid"):
        super().__init__()
        if gate_type not in GATE_TYPES:
            raise ValueError(f"coordinate_gate_type must be one of {GATE_TYPES}; got {gate_type!r}")
        self.gate_type = gate_type
        self.coord_encoder = nn.Sequential(nn.Linear(3, d_visual), nn.GELU(), nn.Linear(d_visual, d_visual))
        self.gate = nn.Linear(2 * d_visual, 1 if gate_type == "sigmoid" else 2)

    def gate_values(self, visual: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """``α (n, tokens, 1)`` from the visual tokens and encoded coordinates."""
        d = visual.shape[-1]  # the gate's weight over [F; φ(C)], applied by halves: no concatenated copy
        logits = F.linear(encoded, self.gate.weight[:, d:], self.gate.bias) + F.linear(visual, self.gate.weight[:, :d])
        if self.gate_type == "sigmoid":
            return torch.sigmoid(logits)
        return logits.softmax(dim=-1)[..., 1:]

    def forward(self, visual: torch.Tensor, coords: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """
        Args:
            visual: ``(n, tokens, d_visual)``.
            coords: ``(n, tokens, 3)`` pooled 3D points per token (values at invalid tokens are ignored,
                NaN included).
            valid: ``(n, tokens)`` bool, tokens whose cell had at least one valid point.

        Returns:
            ``(n, tokens, d_visual)``; invalid tokens are returned unchanged.
        """
        if coords.shape[:-1] != visual.shape[:-1] or coords.shape[-1] != 3:
            raise ValueError(
                f"coords must have shape (n, tokens, 3)={(*visual.shape[:-1], 3)}; got {tuple(coords.shape)}"
            )
        if valid.dtype != torch.bool or valid.shape != visual.shape[:-1]:
            raise ValueError(
                f"valid must be bool of shape (n, tokens)={tuple(visual.shape[:-1])}; "
                f"got dtype {valid.dtype}, shape {tuple(valid.shape)}"
            )
        coords = torch.where(valid[..., None], coords, torch.zeros((), dtype=coords.dtype, device=coords.device))
        encoded = self.coord_encoder(coords.to(visual.dtype))
        alpha = self.gate_values(visual, encoded)
        return torch.addcmul(visual, encoded, alpha.masked_fill(~valid[..., None], 0.0))


def pool_points_to_grid(
    points: torch.Tensor, grid: tuple[int, int], confidence: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the valid 3D points of each cell of a ``grid`` laid over the point map.

    A point is valid when all three coordinates are finite and its confidence (if given) is positive.
    Cells follow ``adaptive_avg_pool2d`` (any ``H, W``, exact blocks when they divide evenly).

    Args:
        points: ``(n, H, W, 3)``.
        grid: ``(h, w)`` token grid.
        confidence: ``(n, H, W)`` or ``None``.

    Returns:
        ``coords (n, h·w, 3)`` (zero where invalid) and ``valid (n, h·w)`` bool (cell has a valid point).
    """
    if points.dim() != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (n, H, W, 3); got {tuple(points.shape)}")
    valid = torch.isfinite(points).all(dim=-1)
    if confidence is not None:
        if confidence.shape != points.shape[:-1]:
            raise ValueError(
                f"confidence must have shape (n, H, W)={tuple(points.shape[:-1])}; got {tuple(confidence.shape)}"
            )
        valid = valid & (confidence > 0)
    clean = torch.where(valid[..., None], points, torch.zeros((), dtype=points.dtype, device=points.device))
    weight = valid.to(points.dtype)
    sums = F.adaptive_avg_pool2d(rearrange(clean, "n h w c -> n c h w"), grid)  # invalid points are zero
    counts = F.adaptive_avg_pool2d(weight[:, None], grid)
    has_point = counts > 0
    coords = torch.where(has_point, sums / counts.clamp_min(torch.finfo(points.dtype).tiny), 0.0)
    return rearrange(coords, "n c h w -> n (h w) c"), rearrange(has_point, "n 1 h w -> n (h w)")


class ViewpointAwareAlignment(nn.Module):
    """Aligns geometry tokens with the camera's viewpoint.

    Args:
        d_geom: width of the geometry and camera tokens (768 for CUT3R).
        num_heads: heads of the geometry–view alignment attention.
    """

    def __init__(self, d_geom: int, num_heads: int = 8):
        super().__init__()
        self.view_encoder = nn.Sequential(nn.Linear(d_geom, d_geom), nn.GELU(), nn.Linear(d_geom, d_geom))
        self.geometry_norm = nn.LayerNorm(d_geom)
        self.view_norm = nn.LayerNorm(d_geom)
        self.alignment_attention = nn.MultiheadAttention(d_geom, num_heads, batch_first=True)
        self.modulation = nn.Linear(d_geom, 2 * d_geom)
        self.global_view = nn.Linear(d_geom, d_geom)

    def forward(self, geometry: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """
        Args:
            geometry: ``(n, P, d_geom)`` geometry (patch) tokens.
            camera: ``(n, V, d_geom)`` camera tokens, ``V = 1`` (CUT3R: one per frame) or ``V = P``
                (per-patch view tokens).

        Returns:
            ``(n, P + 1, d_geom)``: the view-aligned geometry tokens and one global view token.
        """
        if geometry.dim() != 3 or camera.dim() != 3 or camera.shape[::2] != geometry.shape[::2]:
            raise ValueError(
                f"geometry must be (n, P, d) and camera (n, V, d) with the same n and d; "
                f"got {tuple(geometry.shape)} and {tuple(camera.shape)}"
            )
        view = self.view_encoder(camera)
        keys = self.view_norm(view)
        if keys.shape[1] == 1 and not torch.is_grad_enabled():
            # inference with one view token: its softmax weight is 1 for every query, so the attention is its
            # projected value (under autograd the full attention runs, so every parameter keeps its gradient)
            attended = self._single_key_attention(keys)
        else:
            attended, _ = self.alignment_attention(self.geometry_norm(geometry), keys, keys, need_weights=False)
        aligned = geometry + attended
        mean_view = view.mean(dim=1, keepdim=True)
        scale, shift = self.modulation(mean_view).chunk(2, dim=-1)
        aligned = torch.addcmul(shift, aligned, 1 + scale)
        return torch.cat([aligned, self.global_view(mean_view)], dim=1)

    def _single_key_attention(self, key: torch.Tensor) -> torch.Tensor:
        """``alignment_attention`` over the single key ``key (n, 1, d_geom)``: ``out_proj(W_v key + b_v)`` for
        every query, ``(n, 1, d_geom)`` (broadcast over the queries)."""
        attention, d = self.alignment_attention, key.shape[-1]
        value = F.linear(key, attention.in_proj_weight[2 * d :], attention.in_proj_bias[2 * d :])
        return attention.out_proj(value)


class CrossAttentionFusion(nn.Module):
    """VLM-3R's cross-attention fusion block: visual tokens query geometry tokens, residual to the visual.

    Args:
        d_visual: width of the visual tokens (``d_clip``; 1152 for SigLIP-so400m).
        d_geom: width of the geometry tokens (768 for CUT3R).
        num_heads: attention heads (VLM-3R uses 18).
        dropout: dropout on the fused output (VLM-3R uses 0.1).
    """

    def __init__(self, d_visual: int, d_geom: int, num_heads: int = 18, dropout: float = 0.1):
        super().__init__()
        if d_visual % num_heads:
            raise ValueError(f"d_visual must be divisible by num_heads; got {d_visual} and {num_heads}")
        self.clip_norm = nn.LayerNorm(d_visual)
        self.spatial_encoder_norm = nn.LayerNorm(d_geom)
        self.clip_query_proj = nn.Linear(d_visual, d_visual)
        self.spatial_encoder_key_proj = nn.Linear(d_geom, d_visual)
        self.spatial_encoder_value_proj = nn.Linear(d_geom, d_visual)
        self.cross_attention = nn.MultiheadAttention(d_visual, num_heads, batch_first=True)
        self.out_norm = nn.LayerNorm(d_visual)
        self.out_proj = nn.Linear(d_visual, d_visual)
        self.dropout = nn.Dropout(dropout)

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """``visual (n, N, d_visual)``, ``geometry (n, K, d_geom)`` → ``(n, N, d_visual)``."""
        if visual.shape[0] != geometry.shape[0]:
            raise ValueError(
                f"visual and geometry must have the same number of frames; got {visual.shape[0]} and "
                f"{geometry.shape[0]}"
            )
        geometry = self.spatial_encoder_norm(geometry)
        query = self.clip_query_proj(self.clip_norm(visual))
        key = self.spatial_encoder_key_proj(geometry)
        value = self.spatial_encoder_value_proj(geometry)
        fused, _ = self.cross_attention(query, key, value, need_weights=False)
        return self.dropout(self.out_norm(self.out_proj(fused)) + visual)


class SpatialFusion(nn.Module):
    """Coordinate injection → viewpoint alignment → cross-attention fusion, per frame.

    Args:
        d_visual: visual token width.
        d_geom: geometry token width.
        num_heads: heads of the cross-attention fusion.
        alignment_heads: heads of the viewpoint alignment attention.
        dropout: fusion output dropout.
        use_viewpoint_alignment: align geometry with the view tokens; otherwise the key/values are
            ``[camera; geometry]`` as in VLM-3R.
        use_coordinate_injection: inject pooled 3D points into the visual tokens before fusion.
        coordinate_gate_type: ``"sigmoid"`` or ``"softmax"``.
    """

    def __init__(
        self,
        d_visual: int,
        d_geom: int,
        num_heads: int = 18,
        alignment_heads: int = 8,
        dropout: float = 0.1,
        use_viewpoint_alignment: bool = True,
        use_coordinate_injection: bool = True,
        coordinate_gate_type: str = "sigmoid",
    ):
        super().__init__()
        self.viewpoint_alignment = ViewpointAwareAlignment(d_geom, alignment_heads) if use_viewpoint_alignment else None
        self.coordinate_injection = (
            CoordinateInjection(d_visual, coordinate_gate_type) if use_coordinate_injection else None
        )
        self.fusion = CrossAttentionFusion(d_visual, d_geom, num_heads, dropout)

    def forward(
        self,
        visual: torch.Tensor,
        patch_tokens: torch.Tensor,
        camera_tokens: torch.Tensor,
        points: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            visual: ``(n, h·w, d_visual)`` visual tokens of ``n`` frames on a square grid.
            patch_tokens: ``(n, P, d_geom)``.
            camera_tokens: ``(n, 1 or P, d_geom)``.
            points: ``(n, H, W, 3)`` point maps; required when coordinate injection is on.
            confidence: ``(n, H, W)`` point confidences (zero marks a point invalid), optional.

        Returns:
            ``(n, h·w, d_visual)`` fused visual tokens.
        """
        if self.coordinate_injection is not None:
            if points is None:
                raise ValueError("coordinate injection is on, so points (n, H, W, 3) are required; got None")
            if points.shape[0] != visual.shape[0]:
                raise ValueError(f"points must cover the {visual.shape[0]} frames; got {points.shape[0]}")
            side = math.isqrt(visual.shape[1])
            if side * side != visual.shape[1]:
                raise ValueError(f"visual tokens must form a square grid; got {visual.shape[1]} tokens")
            coords, valid = pool_points_to_grid(points, (side, side), confidence)
            visual = self.coordinate_injection(visual, coords, valid)
        if self.viewpoint_alignment is not None:
            geometry = self.viewpoint_alignment(patch_tokens, camera_tokens)
        else:
            geometry = torch.cat([camera_tokens, patch_tokens], dim=1)
        return self.fusion(visual, geometry)
