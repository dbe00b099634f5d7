"""Depth rendering (Open3D ray casting) and masks: the exact numbers of the depth formula, compositing, the
pixel-centre convention, box padding, dilation and feathering."""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from lib_handrefiner.depth import hand_levels, render_depth
from lib_handrefiner.masking import box_iou, build_mask, clamp_box, feather, hand_box, union_box
from lib_handrefiner.mesh import HandMesh


def box_mesh(x0, y0, z0, x1, y1, z1) -> HandMesh:
    cube = o3d.geometry.TriangleMesh.create_box(x1 - x0, y1 - y0, z1 - z0).translate((x0, y0, z0))
    return HandMesh(np.asarray(cube.vertices, np.float32), np.asarray(cube.triangles, np.int32),
                    np.zeros((21, 3), np.float32), "test")


def official_level(relative: float) -> int:
    """preprocessor/meshgraphormer.py: depthmap = 1.0 - (0.8 * (depth - min) / (max - min)); *= 255; astype(uint8)."""
    return int(np.array([(1.0 - 0.8 * relative) * 255.0]).astype(np.uint8)[0])


def stepped_mesh(x0, y0, steps) -> HandMesh:
    """One mesh of 10x10 px boxes side by side, box k from z = steps[k] to 200: a hand whose surface has several
    depths."""
    parts = [box_mesh(x0 + 10 * k, y0, z, x0 + 10 * (k + 1), y0 + 10, 200.0) for k, z in enumerate(steps)]
    vertices = np.concatenate([p.vertices for p in parts])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)]).astype(np.int32)
    return HandMesh(vertices, faces, np.zeros((21, 3), np.float32), "test")


def test_depth_formula_near_far_middle_and_background():
    hand = stepped_mesh(10, 10, [10.0, 35.0, 60.0])
    result = render_depth([hand], 64, 32)
    d = result.depth
    assert d.dtype == np.uint8 and d.shape == (32, 64)
    assert np.all(d[10:20, 10:20] == 255)                       # dmin: 255
    assert np.all(d[10:20, 20:30] == official_level(0.5)) and official_level(0.5) == 153  # halfway
    assert np.all(d[10:20, 30:40] == official_level(1.0)) and official_level(1.0) == 50   # dmax: 50.99… → 50
    assert (d > 0).sum() == 300 and d[0, 0] == 0 and d[25, 15] == 0
    assert np.all(result.hand_index[10:20, 10:40] == 0) and result.hand_index.dtype == np.int16
    assert result.hand_index[0, 0] == -1 and result.extents == ((10, 10, 39, 19),)


def test_each_hand_spans_the_whole_range_on_its_own():
    """The official preprocessor normalises each hand in its own crop: two hands at different distances each go
    from 255 to 50 (normalised over both, the near one would be 255…233 and the far one 66…50)."""
    near = stepped_mesh(2, 10, [0.0, 10.0])
    far = stepped_mesh(30, 10, [100.0, 120.0])
    d = render_depth([near, far], 64, 32).depth
    for x0 in (2, 30):
        assert np.all(d[10:20, x0:x0 + 10] == 255) and np.all(d[10:20, x0 + 10:x0 + 20] == 50)


def test_hand_levels_follow_the_official_arithmetic():
    rng = np.random.default_rng(0)
    d = rng.uniform(-40, 90, 500)
    official = 1.0 - (0.8 * (d - d.min()) / (d.max() - d.min()))
    official *= 255
    np.testing.assert_array_equal(hand_levels(d), official.astype(np.uint8))
    assert hand_levels(np.full(4, 3.0)).tolist() == [255] * 4


def test_pixel_centres_decide_coverage():
    d = render_depth([box_mesh(10, 5, 0, 20, 15, 5)], 32, 24).depth
    cols = np.flatnonzero(d[10] > 0)
    rows = np.flatnonzero(d[:, 15] > 0)
    assert cols.tolist() == list(range(10, 20)) and rows.tolist() == list(range(5, 15))


def test_nearer_surface_wins_where_hands_overlap():
    far = stepped_mesh(0, 0, [50.0, 60.0])
    near = box_mesh(5, 2, 0, 15, 8, 10)
    result = render_depth([far, near], 32, 32)
    assert np.all(result.hand_index[2:8, 5:15] == 1) and np.all(result.depth[2:8, 5:15] == 255)
    assert result.hand_index[5, 2] == 0 and result.depth[5, 2] == 255 and result.depth[5, 17] == 50
    # Each hand's extent is its own, also where the other one covers it.
    assert result.extents == ((0, 0, 19, 9), (5, 2, 14, 7))


def test_flat_single_surface_is_all_near():
    d = render_depth([box_mesh(2, 2, 5, 8, 8, 9)], 10, 10).depth
    assert set(np.unique(d)) == {0, 255}


def test_no_meshes_and_meshes_off_the_image():
    empty = render_depth([], 16, 8)
    assert empty.depth.shape == (8, 16) and not empty.depth.any() and np.all(empty.hand_index == -1)
    off = render_depth([box_mesh(100, 100, 0, 120, 120, 5)], 16, 8)
    assert not off.depth.any()
    partly = render_depth([box_mesh(-5, -5, 0, 4, 4, 5)], 16, 8)
    assert (partly.depth > 0).sum() == 16
    # The whole hand, also past the image edge, up to half the image past it (the official canvas): y from -4.
    assert partly.extents == ((-5, -4, 3, 3),)


def official_box(landmarks_xy, depth_extent, w, h, padding=30, dynamic_resize=0.15):
    """get_depth's extrema and get_mask_bounding_box of preprocessor/meshgraphormer.py, written out; returns the
    inclusive official box as our exclusive one."""
    x_min, x_max = int(min(landmarks_xy[:, 0])), int(max(landmarks_xy[:, 0]))
    y_min, y_max = int(min(landmarks_xy[:, 1])), int(max(landmarks_xy[:, 1]))
    if depth_extent is not None:
        x_min, x_max = min(depth_extent[0], x_min), max(depth_extent[2], x_max)
        y_min, y_max = min(depth_extent[1], y_min), max(depth_extent[3], y_max)
    bb_xpad = max(int((x_max - x_min + 1) * dynamic_resize), padding)
    bb_ypad = max(int((y_max - y_min + 1) * dynamic_resize), padding)
    bbx_min, bbx_max = np.max((x_min - bb_xpad, 0)), np.min((x_max + bb_xpad, w - 1))
    bby_min, bby_max = np.max((y_min - bb_ypad, 0)), np.min((y_max + bb_ypad, h - 1))
    return int(bbx_min), int(bby_min), int(bbx_max) + 1, int(bby_max) + 1


def test_hand_box_is_the_official_rule():
    lm = np.array([[100.7, 100.2], [140.9, 120.5]])
    # Small box: the 30 px minimum wins on both axes; keypoints are truncated to whole pixels.
    assert hand_box(lm, 512, 512) == (70, 70, 171, 151) == official_box(lm, None, 512, 512)
    big = np.array([[100.0, 100.0], [400.0, 200.0]])
    # Per axis: int(301 × 0.15) = 45 px across, the 30 px minimum down (int(101 × 0.15) = 15).
    assert hand_box(big, 512, 512) == (55, 70, 446, 231) == official_box(big, None, 512, 512)
    assert hand_box(big, 420, 230) == (55, 70, 420, 230)
    assert hand_box(lm, 512, 512, pad_px=0, pad_ratio=0.0) == (100, 100, 141, 121)
    # The depth extent is united before padding, so the padding grows with it; past the edge it is clamped.
    extent = (90, 60, 170, 125)
    assert hand_box(lm, 512, 512, depth_extent=extent) == (60, 30, 201, 156) == official_box(lm, extent, 512, 512)
    assert hand_box(lm, 512, 512, depth_extent=(-20, -9, 150, 130)) == (0, 0, 181, 161)
    rng = np.random.default_rng(1)
    for _ in range(200):
        pts = rng.uniform(-30, 300, (21, 2))
        lo = rng.integers(-40, 250, 2)
        extent = (int(lo[0]), int(lo[1]), int(lo[0] + rng.integers(0, 80)), int(lo[1] + rng.integers(0, 80)))
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        assert hand_box(pts, w, h, depth_extent=extent) == official_box(pts, extent, w, h)


def test_box_helpers():
    assert clamp_box((-3.2, 1.5, 10.1, 99), 50, 40) == (0, 1, 11, 40)
    assert union_box((0, 0, 5, 5), (3, 4, 9, 6)) == (0, 0, 9, 6) and union_box((1, 2, 3, 4), None) == (1, 2, 3, 4)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_build_mask_is_boxes_union_depth_pixels():
    depth_pixels = np.zeros((40, 60), bool)
    depth_pixels[30:35, 50:55] = True
    mask = build_mask(60, 40, [(5, 5, 15, 10)], depth_pixels)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert mask[5:10, 5:15].all() and mask[30:35, 50:55].all()
    assert (mask > 0).sum() == 50 + 25
    grown = build_mask(60, 40, [(5, 5, 15, 10)], depth_pixels, dilation=3)
    assert grown[2, 10] == 255 and grown[1, 10] == 0 and np.all(grown[mask > 0] == 255)


def test_feather_is_inward_exactly_zero_outside_the_mask():
    """Compositing used to feather 8 px outward, so pixels outside the shown mask changed; now the weight is 0
    wherever the mask is, 1 from `radius` px inside it."""
    mask = np.zeros((60, 60), np.uint8)
    mask[20:40, 20:40] = 255
    soft = feather(mask, 8)
    assert soft.dtype == np.float32
    assert np.all(soft[mask == 0] == 0.0)
    assert np.all(soft[29:31, 29:31] == 1.0) and np.all(soft[29:31, 29] == 1.0)
    row = soft[30, 20:30]
    assert np.all(np.diff(row) >= 0) and 0 < row[0] < 0.05 and row[-1] == 1.0
    np.testing.assert_array_equal(feather(mask, 0), (mask > 0).astype(np.float32))
    # A mask edge on the image border is not feathered.
    edge = np.zeros((20, 20), np.uint8)
    edge[:, :10] = 255
    assert np.all(feather(edge, 4)[:, 0] == 1.0) and np.all(feather(edge, 4)[:, 10:] == 0.0)
