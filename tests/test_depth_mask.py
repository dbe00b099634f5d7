"""Depth rendering (Open3D ray casting) and masks: the exact numbers of the depth formula, compositing, the
pixel-centre convention, box padding, dilation and feathering."""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from lib_handrefiner.depth import render_depth
from lib_handrefiner.masking import (box_iou, build_mask, clamp_box, dilate, feather, hand_box, pixels_box,
                                     union_box)
from lib_handrefiner.mesh import HandMesh


def box_mesh(x0, y0, z0, x1, y1, z1) -> HandMesh:
    cube = o3d.geometry.TriangleMesh.create_box(x1 - x0, y1 - y0, z1 - z0).translate((x0, y0, z0))
    return HandMesh(np.asarray(cube.vertices, np.float32), np.asarray(cube.triangles, np.int32),
                    np.zeros((21, 3), np.float32), "test")


def test_depth_formula_near_far_middle_and_background():
    near = box_mesh(10, 10, 10.0, 20, 20, 70)
    middle = box_mesh(30, 10, 35.0, 40, 20, 70)
    far = box_mesh(50, 10, 60.0, 60, 20, 70)
    result = render_depth([near, middle, far], 64, 32)
    d = result.depth
    assert d.dtype == np.uint8 and d.shape == (32, 64)
    assert np.all(d[10:20, 10:20] == 255)                            # dmin: 255
    assert np.all(d[10:20, 30:40] == round(255 * (1 - 0.8 * 0.5)))    # halfway: 153
    assert np.all(d[10:20, 50:60] == round(255 * 0.2))                # dmax: 51
    assert (d > 0).sum() == 300 and d[0, 0] == 0 and d[25, 15] == 0
    assert np.all(result.hand_index[10:20, 10:20] == 0) and np.all(result.hand_index[10:20, 50:60] == 2)
    assert result.hand_index.dtype == np.int16 and result.hand_index[0, 0] == -1


def test_pixel_centres_decide_coverage():
    d = render_depth([box_mesh(10, 5, 0, 20, 15, 5)], 32, 24).depth
    cols = np.flatnonzero(d[10] > 0)
    rows = np.flatnonzero(d[:, 15] > 0)
    assert cols.tolist() == list(range(10, 20)) and rows.tolist() == list(range(5, 15))


def test_nearer_surface_wins_where_hands_overlap():
    far = box_mesh(0, 0, 50, 30, 30, 60)
    near = box_mesh(10, 10, 0, 20, 20, 10)
    result = render_depth([far, near], 32, 32)
    assert np.all(result.hand_index[10:20, 10:20] == 1) and np.all(result.depth[10:20, 10:20] == 255)
    assert result.hand_index[5, 5] == 0 and result.depth[5, 5] == 51


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


def test_hand_box_padding_and_clamping():
    lm = np.array([[100.0, 100.0], [140.0, 120.0]])
    # Small box: the 30 px minimum wins.
    assert hand_box(lm, 512, 512) == (70, 70, 171, 151)
    big = np.array([[100.0, 100.0], [400.0, 200.0]])
    # 15 % of the longer side (300 px) = 45 px.
    assert hand_box(big, 512, 512) == (55, 55, 446, 246)
    assert hand_box(big, 420, 230) == (55, 55, 420, 230)
    assert hand_box(lm, 512, 512, pad_px=0, pad_ratio=0.0) == (100, 100, 141, 121)


def test_box_helpers():
    assert clamp_box((-3.2, 1.5, 10.1, 99), 50, 40) == (0, 1, 11, 40)
    assert union_box((0, 0, 5, 5), (3, 4, 9, 6)) == (0, 0, 9, 6) and union_box((1, 2, 3, 4), None) == (1, 2, 3, 4)
    pixels = np.zeros((10, 12), bool)
    pixels[3:5, 7:9] = True
    assert pixels_box(pixels) == (7, 3, 9, 5) and pixels_box(np.zeros((4, 4), bool)) is None
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


def test_feather_is_one_inside_and_exactly_zero_beyond_its_radius():
    mask = np.zeros((60, 60), np.uint8)
    mask[20:40, 20:40] = 255
    soft = feather(mask, 8)
    assert soft.dtype == np.float32
    assert np.all(soft[mask > 0] == 1.0)
    grown = dilate(mask, 8) > 0
    assert np.all(soft[~grown] == 0.0)
    row = soft[30, 40:50]
    assert np.all(np.diff(row) <= 0) and 0 < row[3] < 1 and row[-1] == 0
    np.testing.assert_array_equal(feather(mask, 0), (mask > 0).astype(np.float32))
