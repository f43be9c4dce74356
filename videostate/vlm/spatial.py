"""Spatial (3D) inputs of VLM²: VLM-3R-format precomputed features, or geometry from depth and poses.

The fusion needs, per frame: camera (view) tokens, geometry (patch) tokens and a point map in one world
frame. VLM-3R precomputes CUT3R's tokens into one ``.pt`` file per video
(``{"camera_tokens": [F, 1, 768], "patch_tokens": [F, 729, 768]}``, optionally ``pts3d [F, H, W, 3]``
and ``conf [F, H, W]``). Without a 3D model, :func:`points_from_depth` back-projects depth maps with
camera intrinsics and camera-to-world poses (depth models of this library, RGB-D sensors), and
:func:`geometry_tokens_from_points` turns those points into tokens.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .fusion import pool_points_to_grid


@dataclasses.dataclass
class SpatialFeatures:
    """3D inputs for a batch of videos.

    Attributes:
        camera_tokens: ``(batch, frames, 1 or P, d_geom)``.
        patch_tokens: ``(batch, frames, P, d_geom)``.
        points: ``(batch, frames, H, W, 3)`` world-frame point maps, or ``None``.
        confidence: ``(batch, frames, H, W)``; zero marks a point invalid; or ``None``.
    """

    camera_tokens: torch.Tensor
    patch_tokens: torch.Tensor
    points: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    def __post_init__(self):
        c, p = self.camera_tokens, self.patch_tokens
        if c.dim() != 4 or p.dim() != 4 or c.shape[:2] != p.shape[:2] or c.shape[-1] != p.shape[-1]:
            raise ValueError(
                "camera_tokens must be (batch, frames, 1 or P, d) and patch_tokens (batch, frames, P, d) with "
                f"the same batch, frames and d; got {tuple(c.shape)} and {tuple(p.shape)}"
            )
        if self.points is not None and (
            self.points.dim() != 5 or self.points.shape[:2] != c.shape[:2] or self.points.shape[-1] != 3
        ):
            raise ValueError(
                f"points must have shape (batch, frames, H, W, 3) with (batch, frames)={tuple(c.shape[:2])}; "
                f"got {tuple(self.points.shape)}"
            )
        if self.confidence is not None and (self.points is None or self.confidence.shape != self.points.shape[:-1]):
            expected = None if self.points is None else tuple(self.points.shape[:-1])
            raise ValueError(
                f"confidence must have the points' shape (batch, frames, H, W)={expected}; got "
                f"{tuple(self.confidence.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, frames)``."""
        return tuple(self.camera_tokens.shape[:2])

    def to(self, *args, **kwargs) -> SpatialFeatures:
        return SpatialFeatures(
            **{
                f.name: None if (v := getattr(self, f.name)) is None else v.to(*args, **kwargs)
                for f in dataclasses.fields(self)
            }
        )

    @classmethod
    def stack(cls, items: list[SpatialFeatures]) -> SpatialFeatures:
        """Concatenate along the batch axis (all items must have the same frames and sizes)."""
        if not items:
            raise ValueError("stack needs at least one SpatialFeatures; got an empty list")
        fields = {}
        for f in dataclasses.fields(cls):
            values = [getattr(item, f.name) for item in items]
            if all(v is None for v in values):
                fields[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"{f.name} is given for some videos and missing for others")
            else:
                fields[f.name] = torch.cat(values)
        return cls(**fields)


def load_vlm3r_features(path: str | Path, frame_indices: list[int] | None = None) -> SpatialFeatures:
    """Read a VLM-3R spatial feature file (``torch.save`` dict) as a batch of one video.

    Required keys: ``camera_tokens [F, 1, d]``, ``patch_tokens [F, P, d]``; optional ``pts3d`` (or
    ``pts3d_in_other_view``) ``[F, H, W, 3]`` and ``conf [F, H, W]``. ``frame_indices`` selects frames
    (the sampled video frames), every index must exist.
    """
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a dict of tensors; got {type(data).__name__}")
    missing = [k for k in ("camera_tokens", "patch_tokens") if k not in data]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}; found {sorted(data)}")
    points = data.get("pts3d", data.get("pts3d_in_other_view"))
    values = {
        "camera_tokens": data["camera_tokens"],
        "patch_tokens": data["patch_tokens"],
        "points": points,
        "confidence": data.get("conf"),
    }
    frames = values["camera_tokens"].shape[0]
    if frame_indices is not None:
        bad = [i for i in frame_indices if not 0 <= i < frames]
        if bad:
            raise IndexError(f"{path} has {frames} frames; frame indices {bad} are out of range")
        index = torch.tensor(frame_indices, dtype=torch.long)
        values = {k: None if v is None else v.index_select(0, index) for k, v in values.items()}
    return SpatialFeatures(**{k: None if v is None else v[None] for k, v in values.items()})


def points_from_depth(depth: torch.Tensor, intrinsics: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """Back-project depth maps to world-frame points.

    Pixel ``(u, v)`` (column, row, pixel centres at integers) with depth ``z`` maps to the camera point
    ``z · K⁻¹ [u, v, 1]ᵀ`` and then to ``R p + t`` with ``[R | t]`` the camera-to-world pose. Pixels with
    depth ``<= 0`` or non-finite depth (sensor holes) give NaN points, which the fusion masks.

    Args:
        depth: ``(n, H, W)`` metric depth.
        intrinsics: ``(3, 3)`` or ``(n, 3, 3)`` pinhole matrices ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        cam_to_world: ``(n, 4, 4)`` poses.

    Returns:
        ``(n, H, W, 3)`` points.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth must have shape (n, H, W); got {tuple(depth.shape)}")
    n, h, w = depth.shape
    if intrinsics.shape == (3, 3):
        intrinsics = intrinsics.expand(n, 3, 3)
    if intrinsics.shape != (n, 3, 3) or cam_to_world.shape != (n, 4, 4):
        raise ValueError(
            f"intrinsics must be (3, 3) or (n, 3, 3) and cam_to_world (n, 4, 4) with n={n}; got "
            f"{tuple(intrinsics.shape)} and {tuple(cam_to_world.shape)}"
        )
    dtype = depth.dtype
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).to(depth.device)  # (H, W, 3)
    rays = torch.einsum("nij,hwj->nhwi", torch.linalg.inv(intrinsics.to(dtype)), pixels)
    cam_points = rays * depth[..., None]
    pose = cam_to_world.to(dtype)
    world = torch.einsum("nij,nhwj->nhwi", pose[:, :3, :3], cam_points) + pose[:, None, None, :3, 3]
    valid = torch.isfinite(depth) & (depth > 0)
    return world.masked_fill(~valid[..., None], float("nan"))


def geometry_tokens_from_points(
    points: torch.Tensor, cam_to_world: torch.Tensor, grid: tuple[int, int], dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic geometry and camera tokens from point maps and poses (a 3D model's tokens are
    preferable; these let the fusion run on RGB-D data and depth-model output without one).

    Patch tokens: sinusoidal encodings of the cell's mean world point (zero where the cell has no valid
    point). Camera tokens: sinusoidal encodings of the camera centre and its viewing direction.

    Args:
        points: ``(n, H, W, 3)``; cam_to_world: ``(n, 4, 4)``; grid: ``(h, w)``; dim: token width,
            a multiple of 6.

    Returns:
        ``camera_tokens (n, 1, dim)``, ``patch_tokens (n, h·w, dim)``.
    """
    if dim % 6:
        raise ValueError(f"dim must be a multiple of 6 (sin and cos per coordinate); got {dim}")
    coords, valid = pool_points_to_grid(points, grid)
    patch = sinusoidal_encoding(coords, dim) * valid[..., None]
    centre = cam_to_world[:, :3, 3]
    direction = cam_to_world[:, :3, 2]
    camera = (sinusoidal_encoding(centre, dim) + sinusoidal_encoding(direction, dim))[:, None]
    return camera.to(points.dtype), patch.to(points.dtype)


def sinusoidal_encoding(xyz: torch.Tensor, dim: int) -> torch.Tensor:
    """``(..., 3)`` → ``(..., dim)``: ``sin(x·f_k), cos(x·f_k)`` per coordinate, ``dim/6`` frequencies
    ``f_k = 2^k`` (k from −2)."""
    freqs = 2.0 ** (torch.arange(dim // 6, dtype=xyz.dtype, device=xyz.device) - 2)
    angles = rearrange(xyz[..., None] * freqs, "... c k -> ... (c k)")
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def read_open3d_trajectory(path: str | Path) -> torch.Tensor:
    """Camera-to-world poses from an Open3D ``trajectory.log`` (a header line, then 4 rows, per frame)
    → ``(n, 4, 4)`` float64."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) % 5:
        raise ValueError(f"{path}: expected blocks of 5 lines (header + 4x4 matrix); got {len(lines)} lines")
    poses = [[[float(x) for x in row] for row in lines[i + 1 : i + 5]] for i in range(0, len(lines), 5)]
    return torch.tensor(poses, dtype=torch.float64)


def load_rgbd_sequence(
    folder: str | Path,
    intrinsics: torch.Tensor,
    frame_indices: list[int] | None = None,
    depth_scale: float = 1000.0,
) -> dict[str, torch.Tensor]:
    """Read an RGB-D sequence folder (``image/`` or ``color/`` JPEGs, ``depth/`` uint16 PNGs,
    ``trajectory.log``) into frames, metric depth, poses and world points.

    Returns ``{"frames": (n, 3, H, W) float in [0, 1], "depth": (n, H, W), "cam_to_world": (n, 4, 4),
    "points": (n, H, W, 3)}``.
    """
    import cv2

    folder = Path(folder)
    color_dir = folder / "image" if (folder / "image").is_dir() else folder / "color"
    colors = sorted(color_dir.glob("*.jpg")) + sorted(color_dir.glob("*.png"))
    depths = sorted((folder / "depth").glob("*.png"))
    poses = read_open3d_trajectory(folder / "trajectory.log")
    count = min(len(colors), len(depths), len(poses))
    if count == 0:
        raise FileNotFoundError(f"{folder}: no colour/depth/pose triples found")
    indices = list(range(count)) if frame_indices is None else frame_indices
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise IndexError(f"{folder} has {count} frames; frame indices {bad} are out of range")
    frames, depth = [], []
    for i in indices:
        bgr = cv2.imread(str(colors[i]), cv2.IMREAD_COLOR)
        frames.append(torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float() / 255)
        raw = cv2.imread(str(depths[i]), cv2.IMREAD_UNCHANGED)
        depth.append(torch.from_numpy(raw.astype(np.float64)) / depth_scale)
    depth_t = torch.stack(depth)
    pose_t = poses[indices]
    return {
        "frames": torch.stack(frames),
        "depth": depth_t,
        "cam_to_world": pose_t,
        "points": points_from_depth(depth_t, intrinsics.to(torch.float64), pose_t),
    }


def spatial_features_from_rgbd(
    points: torch.Tensor, cam_to_world: torch.Tensor, grid_tokens: int, dim: int, frame_size: int | None = None
) -> SpatialFeatures:
    """A batch of one video of :class:`SpatialFeatures` from world points ``(n, H, W, 3)`` and poses,
    with ``grid_tokens`` (a square) patch tokens per frame; points are resized to ``frame_size``
    (nearest) when given, so they line up with the resized video frames."""
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise ValueError(f"grid_tokens must be a square number; got {grid_tokens}")
    if frame_size is not None:
        points = rearrange(
            F.interpolate(rearrange(points, "n h w c -> n c h w"), size=(frame_size, frame_size), mode="nearest"),
            "n c h w -> n h w c",
        )
    camera, patch = geometry_tokens_from_points(points, cam_to_world, (side, side), dim)
    return SpatialFeatures(camera_tokens=camera[None], patch_tokens=patch[None], points=points[None])
