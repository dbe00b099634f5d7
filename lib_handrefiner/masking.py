"""Inpainting masks: each hand's box (the official rule: keypoint and depth extrema united, then padded), optionally
dilated, and a soft (feathered) version for compositing.

Boxes are [x0, y0, x1, y1] in pixels with x1/y1 exclusive; integer boxes are clamped to the image.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

IntBox = Tuple[int, int, int, int]


def keypoint_extrema(landmarks_xy: np.ndarray) -> Tuple[int, int, int, int]:
    """The official keypoint extrema (x_min, y_min, x_max, y_max), inclusive, each truncated to a whole pixel as
    the official preprocessor's int() does: what its mask box (`hand_box`) and Mesh Graphormer's crop start from."""
    xy = np.asarray(landmarks_xy, dtype=np.float64)[:, :2]
    x_min, y_min = (math.trunc(v) for v in xy.min(axis=0))
    x_max, y_max = (math.trunc(v) for v in xy.max(axis=0))
    return x_min, y_min, x_max, y_max


def hand_box(landmarks_xy: np.ndarray, width: int, height: int, pad_px: int = 30, pad_ratio: float = 0.15,
             depth_extent: Optional[Sequence[int]] = None) -> IntBox:
    """The official HandRefiner mask box (preprocessor/meshgraphormer.py, get_depth and get_mask_bounding_box):
    the keypoint extrema (whole pixels, truncated as int() does) united with the extrema of the hand's depth
    pixels (`depth_extent`: inclusive x_min, y_min, x_max, y_max, possibly past the image edge), then padded on
    each axis by max(int((extent + 1) × pad_ratio), pad_px) and clamped to the image."""
    x_min, y_min, x_max, y_max = keypoint_extrema(landmarks_xy)
    if depth_extent is not None:
        dx0, dy0, dx1, dy1 = depth_extent
        x_min, y_min, x_max, y_max = min(x_min, dx0), min(y_min, dy0), max(x_max, dx1), max(y_max, dy1)
    pad_x = max(int((x_max - x_min + 1) * pad_ratio), int(pad_px))
    pad_y = max(int((y_max - y_min + 1) * pad_ratio), int(pad_px))
    # The official box is inclusive ([min, max] clamped to [0, W-1]); ours ends one past it.
    return clamp_box((x_min - pad_x, y_min - pad_y, x_max + pad_x + 1, y_max + pad_y + 1), width, height)


def clamp_box(box: Sequence[float], width: int, height: int) -> IntBox:
    """A float box as whole pixels (outward) inside the image; may be empty (x1 == x0) when off the image."""
    x0, y0, x1, y1 = box
    x0, y0 = min(max(math.floor(x0), 0), width), min(max(math.floor(y0), 0), height)
    x1, y1 = min(max(math.ceil(x1), x0), width), min(max(math.ceil(y1), y0), height)
    return int(x0), int(y0), int(x1), int(y1)


def union_box(a: IntBox, b: Optional[IntBox]) -> IntBox:
    if b is None:
        return a
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def enclosing_box(boxes: Iterable[IntBox]) -> IntBox:
    """The box around all of `boxes` (at least one): what a pass over several hands together is cropped around."""
    return functools.reduce(union_box, boxes)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def build_mask(width: int, height: int, boxes: Iterable[IntBox], depth_pixels: Optional[np.ndarray] = None,
               dilation: int = 0) -> np.ndarray:
    """uint8 H×W mask, 255 inside any box or depth pixel (boolean H×W, e.g. depth > 0), grown by `dilation` px."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = clamp_box((x0, y0, x1, y1), width, height)
        mask[y0:y1, x0:x1] = 255
    if depth_pixels is not None:
        mask[np.asarray(depth_pixels, dtype=bool)] = 255
    return dilate(mask, dilation)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grows a 0/255 mask by `radius` pixels (a round structuring element)."""
    if radius <= 0:
        return mask
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel)


def feather(mask: np.ndarray, radius: int) -> np.ndarray:
    """float32 H×W weights for compositing, feathered inward: 1 from `radius` px inside the mask's edge, easing
    towards 0 at the edge, exactly 0 outside the mask. So the mask that is shown (saved, returned, previewed) bounds
    every change: a pixel where it is 0 keeps the original's bytes. A mask edge on the image border is not
    feathered (nothing lies beyond it)."""
    inside = np.asarray(mask) > 0
    if radius <= 0:
        return inside.astype(np.float32)
    import cv2

    # Distance of each mask pixel to the nearest pixel outside it (1 on the edge; pixels past the border do not
    # count as outside).
    distance = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    t = np.clip(distance / float(radius + 1), 0.0, 1.0)
    return np.where(inside, t * t * (3.0 - 2.0 * t), 0.0).astype(np.float32)  # smoothstep: no visible edge
