"""Mesh Graphormer's depth as the official preprocessor renders it, reproduced with Open3D's perspective rays.

The oracle below is run_inference of HandRefiner's preprocessor/meshgraphormer.py written out directly (float64
ray/triangle intersection in place of trimesh's): a camera at (−tx, −ty, −2f/(L·s + 1e-9)), f = 1000·L/224, one
normalised ray per pixel centre of the L × L crop, the first hit kept only when face_normal · ray ≤ 0, depth =
(hit + camera)_z normalised to 255·(1 − 0.8·(d − min)/(max − min)), truncated to uint8; a left hand's crop is
mirrored before and its depth mirrored back after; the 2D joints (MANO's regressor, projected) in the crop.
"""
from __future__ import annotations

import numpy as np
import pytest

from lib_handrefiner.depth import render_depth
from lib_handrefiner.mesh import transform_mesh
from lib_handrefiner.mesh.graphormer.model import Crop, hand_mesh, official_camera

IMAGE_W, IMAGE_H = 220, 170
CROP = Crop(x0=37, y0=12, side=96)
CAMERA = np.array([12.0, 0.012, -0.018], dtype=np.float32)  # (s, tx, ty) as the network predicts them


def blob(open_front: bool = False, n_lat: int = 16, n_lon: int = 28):
    """A bumpy closed ellipsoid (a palm-sized blob, metres, outward faces); `open_front` removes the faces
    around its pole nearest the camera, so rays through the hole first meet the far side's back faces."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(lat, lon, indexing="ij")
    r = 1.0 + 0.12 * np.sin(3 * p) * np.sin(2 * t) + 0.05 * np.cos(5 * t)
    ring = np.stack([r * np.sin(t) * np.cos(p) * 0.045, r * np.cos(t) * 0.07, -r * np.sin(t) * np.sin(p) * 0.025],
                    axis=-1).reshape(-1, 3)
    vertices = np.concatenate([ring, [[0, 0.07 * 1.05, 0], [0, -0.07 * 1.05, 0]]]) + np.array([0.004, -0.003, 0.0])
    top, bottom = len(ring), len(ring) + 1
    idx = np.arange(len(ring)).reshape(len(lat), n_lon)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([idx[:-1], idx[1:], nxt[1:]], -1).reshape(-1, 3),
             np.stack([idx[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3),
             np.stack([np.full(n_lon, top), idx[0], nxt[0]], -1),
             np.stack([np.full(n_lon, bottom), nxt[-1], idx[-1]], -1)]
    faces = np.concatenate(faces)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), (a + b + c) / 3 - vertices.mean(0)) > 0
    faces[~outward] = faces[~outward][:, ::-1]
    if open_front:
        centre = (a + b + c) / 3
        faces = faces[~((centre[:, 2] < -0.018) & (np.abs(centre[:, 0]) < 0.02) & (np.abs(centre[:, 1]) < 0.03))]
    return vertices, faces.astype(np.int32)


def official_depth(vertices, faces, camera, side):
    """run_inference's depth map (side × side, float 0..255 before the uint8 cast) for an unmirrored crop."""
    focal = 1000 * (side / 224)
    camera_t = np.array([-camera[1], -camera[2], -2 * focal / (side * camera[0] + 1e-9)],
                        dtype=np.float32).astype(np.float64)
    j, i = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    i, j = i + 0.5, j + 0.5
    directions = np.stack([(i - side / 2) / focal, (j - side / 2) / focal, np.ones_like(i)], -1).astype(np.float64)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    rays = directions.reshape(-1, 3)
    coords = np.array(list(np.ndindex(side, side))).reshape(side, side, -1).transpose(1, 0, 2).reshape(-1, 2)
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    normals = np.cross(b - a, c - a)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    t_first = np.full(len(rays), np.inf)
    tri_first = np.full(len(rays), -1)
    e1, e2 = b - a, c - a
    for start in range(0, len(rays), 512):
        d = rays[start:start + 512]
        pvec = np.cross(d[:, None, :], e2[None])
        det = np.einsum("fk,rfk->rf", e1, pvec)
        tvec = camera_t - a
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.einsum("fk,rfk->rf", tvec, pvec) / det
            qvec = np.cross(tvec, e1)
            v = np.einsum("rk,fk->rf", d, qvec) / det
            t = np.einsum("fk,fk->f", e2, qvec)[None] / det
        valid = (np.abs(det) > 1e-14) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        t = np.where(valid, t, np.inf)
        tri_first[start:start + 512] = np.argmin(t, axis=1)
        t_first[start:start + 512] = t.min(axis=1)
    hit = np.isfinite(t_first)
    front = np.einsum("rk,rk->r", normals[tri_first[hit]], rays[hit]) <= 0
    index_ray = np.nonzero(hit)[0][front]
    points = camera_t + t_first[index_ray, None] * rays[index_ray]
    depth = (points + camera_t)[:, -1]
    pixel = coords[index_ray]
    depthmap = np.zeros([side, side])
    depthmap[pixel[:, 0], pixel[:, 1]] = 1.0 - (0.8 * (depth - depth.min()) / (depth.max() - depth.min()))
    depthmap *= 255
    return depthmap, camera_t, focal


def official_joints_2d(joints, camera_t, focal, side):
    camera_space = joints - camera_t
    return (camera_space / camera_space[:, 2:3] * np.array((focal, focal, 1)))[:, :2] + np.array((side / 2, side / 2))


def _regressor(n_vertices: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    regressor = rng.random((21, n_vertices)) ** 8
    return regressor / regressor.sum(axis=1, keepdims=True)


def _compare(ours: np.ndarray, official: np.ndarray) -> None:
    both = (ours > 0) & (official > 0)
    assert both.sum() > 2000
    assert np.abs(ours[both].astype(int) - official[both].astype(int)).max() <= 1
    # Coverage: the same pixels, up to rays grazing a silhouette edge (float32 Open3D vs float64).
    assert ((ours > 0) != (official > 0)).sum() <= 0.005 * both.sum()


@pytest.mark.parametrize("mirror", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("open_front", [False, True], ids=["closed", "back-faces"])
def test_depth_equals_the_official_render(mirror, open_front):
    vertices, faces = blob(open_front)
    regressor = _regressor(len(vertices))
    mesh = hand_mesh(CAMERA, vertices, faces, regressor, CROP, mirror, order=0.0)
    rendered = render_depth([mesh], IMAGE_W, IMAGE_H)
    window = (slice(CROP.y0, CROP.y0 + CROP.side), slice(CROP.x0, CROP.x0 + CROP.side))
    ours = rendered.depth[window]
    assert not rendered.depth[rendered.hand_index < 0].any()
    # The official code renders the network's (mirrored, for a left hand) crop, then mirrors the depth back.
    depthmap, camera_t, focal = official_depth(vertices, faces, CAMERA, CROP.side)
    official = (np.fliplr(depthmap) if mirror else depthmap).astype(np.uint8)
    _compare(ours, official)
    assert ours.max() == 255 and ours[ours > 0].min() in (50, 51)
    if open_front:  # the hole shows nothing: its rays' first hits are back faces
        closed = render_depth([hand_mesh(CAMERA, *blob(False), regressor, CROP, mirror, 0.0)], IMAGE_W, IMAGE_H)
        assert (closed.depth[window] > 0).sum() - (ours > 0).sum() > 100
    # The 2D joints: the official ones are in the (mirrored) crop's pixels.
    joints_2d = official_joints_2d(regressor @ vertices, camera_t, focal, CROP.side)
    in_crop = mesh.joints[:, :2] - np.array([CROP.x0, CROP.y0])
    if mirror:
        in_crop[:, 0] = CROP.side - in_crop[:, 0]
    np.testing.assert_allclose(in_crop, joints_2d, atol=1e-3)


def test_a_mesh_moved_into_a_crop_at_scale_one_renders_the_same_pixels():
    vertices, faces = blob()
    mesh = hand_mesh(CAMERA, vertices, faces, _regressor(len(vertices)), CROP, False, order=0.0)
    full = render_depth([mesh], IMAGE_W, IMAGE_H).depth
    moved = render_depth([transform_mesh(mesh, 1.0, (20, 5))], IMAGE_W - 20, IMAGE_H - 5).depth
    np.testing.assert_array_equal(moved, full[5:, 20:])


def test_official_camera_is_the_preprocessors():
    focal, origin = official_camera(CAMERA, 300)
    assert focal == pytest.approx(1000 * 300 / 224)
    np.testing.assert_allclose(origin, [-0.012, 0.018, -2 * focal / (300 * 12.0)], rtol=1e-6)


def test_hands_are_pasted_farther_first_each_over_the_others():
    """Two overlapping perspective hands: where both have depth, the one with the smaller MediaPipe z (nearer)
    shows, whatever their depths in their own cameras; each is normalised on its own (255 and ~50 both)."""
    vertices, faces = blob()
    regressor = _regressor(len(vertices))
    near = hand_mesh(CAMERA, vertices, faces, regressor, CROP, False, order=-30.0)
    far = hand_mesh(CAMERA, vertices, faces, regressor, Crop(CROP.x0 + 25, CROP.y0, CROP.side), True, order=10.0)
    for meshes in ([near, far], [far, near]):
        result = render_depth(meshes, IMAGE_W, IMAGE_H)
        near_index = 0 if meshes[0] is near else 1
        alone = render_depth([near], IMAGE_W, IMAGE_H)
        np.testing.assert_array_equal(result.depth[alone.depth > 0], alone.depth[alone.depth > 0])
        assert (result.hand_index == near_index).sum() == (alone.depth > 0).sum()
        assert (result.hand_index == 1 - near_index).sum() > 0
