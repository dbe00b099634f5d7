"""Depth maps of hand meshes, ray cast offscreen with Open3D's `RaycastingScene` (no window, no GPU).

One orthographic ray per pixel centre (u + 0.5, v + 0.5) along +z (the image camera, see dev/ARCHITECTURE.md).
Each hand is rendered whole and on its own, and normalised on its own, as the official preprocessor
(preprocessor/meshgraphormer.py) renders each hand in its own crop: its nearest surface 255, its farthest 50
(`hand_levels`). Where hands overlap, the nearer surface shows. Background is 0.

A mesh with a `PerspectiveView` (Mesh Graphormer) is rendered as the official preprocessor renders it: its
camera's rays through the pixel centres of its crop window, the first hit discarded when it is on a back face
(the official `face_normals · ray ≤ 0` rule), normalised over the hits in that window. Such hands are pasted in
decreasing `view.order` (MediaPipe's depth of the middle knuckle), each over the others wherever it has depth, as
the official code pastes its crops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from lib_handrefiner.mesh import HandMesh

FAR_FRACTION = 0.8  # the farthest surface of a hand is 255 · (1 − 0.8) = 50.99…, truncated to 50

# Inclusive pixel extrema (x_min, y_min, x_max, y_max) of a hand's depth pixels; may lie outside the image.
PixelExtent = Tuple[int, int, int, int]


@dataclass(frozen=True)
class DepthResult:
    depth: np.ndarray       # (H, W) uint8: 0 background, 50..255 hand (255 its nearest surface)
    hand_index: np.ndarray  # (H, W) int16: index into the meshes of the visible hand at each pixel, -1 background
    # Per mesh: the extent of its depth pixels rendered alone, including any past the image edge (None: no pixel).
    extents: Tuple[Optional[PixelExtent], ...] = ()


def pixel_extent(pixels: np.ndarray) -> Optional[PixelExtent]:
    """Inclusive (x_min, y_min, x_max, y_max) of the True pixels of an H×W array; None when there are none."""
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def hand_levels(distance: np.ndarray) -> np.ndarray:
    """The depth levels of one hand's surface pixels from their distances along the view direction, normalised
    over this hand alone: 255 · (1 − 0.8 · (d − dmin)/(dmax − dmin)), truncated to uint8, with the official code's
    order of float64 operations (so the same distances give the same bytes). A flat hand is 255."""
    d = np.asarray(distance, dtype=np.float64)
    if d.size == 0:
        return np.zeros(d.shape, dtype=np.uint8)
    d_min, d_max = d.min(), d.max()
    if d_max - d_min <= 1e-9:
        return np.full(d.shape, 255, dtype=np.uint8)
    levels = 1.0 - (FAR_FRACTION * (d - d_min) / (d_max - d_min))
    levels *= 255
    return levels.astype(np.uint8)


def render_depth(meshes: Sequence[HandMesh], width: int, height: int) -> DepthResult:
    depth = np.zeros((height, width), dtype=np.uint8)
    hand_index = np.full((height, width), -1, dtype=np.int16)
    nearest = np.full((height, width), np.inf)
    renders = [_render_alone(mesh, width, height) for mesh in meshes]
    extents = []
    for rendered in renders:
        if rendered is None:
            extents.append(None)
            continue
        (x0, y0), z, _ = rendered
        hx0, hy0, hx1, hy1 = pixel_extent(np.isfinite(z))  # a render always has a hit
        extents.append((x0 + hx0, y0 + hy0, x0 + hx1, y0 + hy1))
    pasted = any(m.view is not None for m in meshes)
    for i in _paste_order(meshes) if pasted else range(len(meshes)):
        rendered = renders[i]
        if rendered is None:
            continue
        (x0, y0), z, levels = rendered
        # The part of the hand's window on the image, where this hand is nearer than those drawn so far.
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + z.shape[1], width), min(y0 + z.shape[0], height)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        part = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        on_image = (slice(iy0, iy1), slice(ix0, ix1))
        # Perspective hands live in cameras of their own: their depths do not compare, the later pasted wins.
        wins = np.isfinite(z[part]) if pasted else z[part] < nearest[on_image]
        nearest[on_image][wins] = z[part][wins]
        depth[on_image][wins] = levels[part][wins]
        hand_index[on_image][wins] = i
    return DepthResult(depth, hand_index, tuple(extents))


def _paste_order(meshes: Sequence[HandMesh]) -> list:
    """Farther hands first (the official sort by the middle knuckle's MediaPipe z, largest first)."""
    key = [m.view.order if m.view is not None else float(m.joints[9, 2]) for m in meshes]
    return sorted(range(len(meshes)), key=lambda i: -key[i])


def _render_alone(mesh: HandMesh, width: int, height: int
                  ) -> Optional[Tuple[Tuple[int, int], np.ndarray, np.ndarray]]:
    """The hand's whole projection, ray cast with no other hand in the scene: (window origin x0, y0), the hit's
    z per pixel (inf where a ray misses) and the hand's own depth levels (0 where it misses). The window may
    extend half the image past each edge, as the official code's canvas does (and no further: a runaway mesh
    cannot ask for unbounded rays). A perspective hand: its view's window and its own depth."""
    if mesh.view is not None:
        return _render_perspective(mesh, width, height)
    xy = mesh.vertices[:, :2]
    if len(xy) == 0 or width <= 0 or height <= 0:
        return None
    x0, y0 = np.floor(xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 1
    window = _bounded(int(x0), int(y0), int(x1), int(y1), width, height)
    if window is None:
        return None
    return _with_levels(window, _cast(mesh, *window))


def _bounded(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> Optional[Tuple[int, int, int, int]]:
    """The window [x0, x1) × [y0, y1) cut to half an image past each edge (the official padded canvas); None when
    nothing of it is left."""
    x0, y0 = max(x0, -(width // 2)), max(y0, -(height // 2))
    x1, y1 = min(x1, width + width // 2), min(y1, height + height // 2)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _with_levels(window: Tuple[int, int, int, int], z: np.ndarray
                 ) -> Optional[Tuple[Tuple[int, int], np.ndarray, np.ndarray]]:
    """A hand's render: (window origin), z per pixel (inf where nothing is hit) and its own depth levels; None
    when no ray hit it."""
    hit = np.isfinite(z)
    if not hit.any():
        return None
    levels = np.zeros(z.shape, dtype=np.uint8)
    levels[hit] = hand_levels(z[hit])
    return (window[0], window[1]), z, levels


def _cast(mesh: HandMesh, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """z of the first hit of each pixel's ray over the window [x0, x1) × [y0, y1); inf where it misses."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)))
    z_start = float(mesh.vertices[:, 2].min()) - 1.0
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rays = np.zeros(u.shape + (6,), dtype=np.float32)
    rays[..., 0] = u + 0.5
    rays[..., 1] = v + 0.5
    rays[..., 2] = z_start
    rays[..., 5] = 1.0
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)
    return np.where(np.isfinite(t_hit), z_start + t_hit, np.inf)


def _render_perspective(mesh: HandMesh, width: int, height: int
                        ) -> Optional[Tuple[Tuple[int, int], np.ndarray, np.ndarray]]:
    """The view's window ray cast with its camera: (window origin), depth per pixel (inf where nothing, or a back
    face, is hit first) and the hand's depth levels. The depth is the official `(hit + camera position)_z`."""
    import open3d as o3d

    view = mesh.view
    window = _bounded(*view.window, width, height)  # the same bound as for orthographic hands
    if window is None:
        return None
    x0, y0, x1, y1 = window
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    directions = np.stack([(u + 0.5 - view.principal[0]) / view.focal, (v + 0.5 - view.principal[1]) / view.focal,
                           np.ones_like(u)], axis=-1)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    rays = np.concatenate([np.broadcast_to(view.origin, directions.shape), directions], axis=-1)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(view.vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)))
    answer = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))
    t_hit = answer["t_hit"].numpy().astype(np.float64)
    normals = answer["primitive_normals"].numpy().astype(np.float64)
    hit = np.isfinite(t_hit) & (np.einsum("...i,...i->...", normals, directions) <= 0)
    points_z = view.origin[2] + t_hit[hit] * directions[..., 2][hit]
    z = np.full(t_hit.shape, np.inf)
    z[hit] = points_z + view.origin[2]
    return _with_levels(window, z)
