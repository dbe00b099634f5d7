"""Depth maps of hand meshes, ray cast offscreen with Open3D's `RaycastingScene` (no window, no GPU).

One orthographic ray per pixel centre (u + 0.5, v + 0.5) along +z (the image camera, see dev/ARCHITECTURE.md).
Hand pixels get 255·(1 − 0.8·(d − dmin)/(dmax − dmin)): the nearest hand surface 255, the farthest 51, with
dmin/dmax over all hand pixels of the image; background is 0. Several hands composite by the nearer surface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from lib_handrefiner.mesh import HandMesh

NEAR_LEVEL = 255.0
FAR_FRACTION = 0.8  # the farthest hand pixel is 255 * (1 - 0.8) = 51, well above the background's 0


@dataclass(frozen=True)
class DepthResult:
    depth: np.ndarray       # (H, W) uint8: 0 background, 51..255 hand (255 nearest)
    hand_index: np.ndarray  # (H, W) int16: index into the meshes of the visible hand at each pixel, -1 background


def render_depth(meshes: Sequence[HandMesh], width: int, height: int) -> DepthResult:
    depth = np.zeros((height, width), dtype=np.uint8)
    hand_index = np.full((height, width), -1, dtype=np.int16)
    window = _pixel_window(meshes, width, height)
    if window is None:
        return DepthResult(depth, hand_index)
    x0, y0, x1, y1 = window
    distance, index = _cast(meshes, x0, y0, x1, y1)
    hit = index >= 0
    if hit.any():
        d = distance[hit]
        d_min, d_max = float(d.min()), float(d.max())
        span = d_max - d_min
        relative = (d - d_min) / span if span > 1e-9 else np.zeros_like(d)
        levels = np.zeros(distance.shape, dtype=np.uint8)
        levels[hit] = np.round(NEAR_LEVEL * (1.0 - FAR_FRACTION * relative)).astype(np.uint8)
        depth[y0:y1, x0:x1] = levels
        hand_index[y0:y1, x0:x1] = index
    return DepthResult(depth, hand_index)


def _pixel_window(meshes: Sequence[HandMesh], width: int, height: int) -> Tuple[int, int, int, int] | None:
    """The pixel rectangle [x0, x1) × [y0, y1) covering every mesh's projection, clamped to the image; rays are
    cast only there."""
    if not meshes or width <= 0 or height <= 0:
        return None
    xy = np.concatenate([m.vertices[:, :2] for m in meshes])
    x0, y0 = np.floor(xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _cast(meshes: Sequence[HandMesh], x0: int, y0: int, x1: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Distance along +z (from the plane z = z_start) and mesh index of the first hit for each pixel of the
    window; index -1 where a ray hits nothing."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    geometry_to_hand = {}
    for i, mesh in enumerate(meshes):
        geometry_id = scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
                                          o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)))
        geometry_to_hand[geometry_id] = i
    z_start = min(float(m.vertices[:, 2].min()) for m in meshes) - 1.0
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rays = np.zeros(u.shape + (6,), dtype=np.float32)
    rays[..., 0] = u + 0.5
    rays[..., 1] = v + 0.5
    rays[..., 2] = z_start
    rays[..., 5] = 1.0
    answer = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = answer["t_hit"].numpy()
    geometry_ids = answer["geometry_ids"].numpy()
    hit = np.isfinite(t_hit)
    index = np.full(t_hit.shape, -1, dtype=np.int16)
    for geometry_id, hand in geometry_to_hand.items():
        index[hit & (geometry_ids == geometry_id)] = hand
    return np.where(hit, t_hit, np.inf).astype(np.float64), index
