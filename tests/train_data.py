"""Small synthetic folders in the layouts the training readers take (written by the tests, nothing downloaded):
RHD_published_v2, Synthesis AI static gestures, and a prepared training folder."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

RHD_SIZE = 320


def encode_rhd_depth(metres: np.ndarray) -> np.ndarray:
    """RHD's depth PNG: the 16-bit value (0…65535 for 0…5 m) split into red (top 8 bits) and green (bottom 8)."""
    value = np.clip(np.round(metres / 5.0 * 65535), 0, 65535).astype(np.uint16)
    out = np.zeros(metres.shape + (3,), dtype=np.uint8)
    out[..., 0], out[..., 1] = value >> 8, value & 255
    return out


def _disc(cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2


def _keypoints_in(cx: float, cy: float, r: float, visible: bool = True) -> np.ndarray:
    """21 keypoints (u, v, visible) spread inside a disc."""
    angles = np.linspace(0, 2 * np.pi, 21, endpoint=False)
    radii = np.linspace(0.1, 0.8, 21) * r
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles),
                     np.full(21, 1.0 if visible else 0.0)], axis=1)


# Each sample: the hands (cx, cy, r, keypoint centre offset, visible) and what prepare-data should make of it.
RHD_SAMPLES: List[Tuple[str, List[Tuple[float, float, float, float, bool]]]] = [
    ("one_hand", [(110, 150, 40, 0, True)]),
    ("two_hands", [(90, 160, 35, 0, True), (230, 150, 38, 0, True)]),
    ("no_hand", []),
    ("keypoints_off_mask", [(160, 160, 40, 120, True)]),
    ("too_small", [(160, 160, 8, 0, True)]),
    ("hidden", [(160, 160, 40, 0, False)]),
    ("in_pieces", [(160, 160, 40, 0, True)]),
    ("one_good_one_small", [(100, 160, 40, 0, True), (250, 160, 6, 0, True)]),
]


def write_rhd(root: Path, samples=RHD_SAMPLES, split: str = "training") -> Dict[str, str]:
    """RHD_published_v2/<split>/ with color/, depth/, mask/ and anno_<split>.pickle; returns file → case.
    Hand pixels get RHD's part classes (left 2–17, right 18–33), depth rises left to right on each hand."""
    folder = Path(root) / split
    for sub in ("color", "depth", "mask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    annotations, cases = {}, {}
    rng = np.random.default_rng(7)
    for sample_id, (case, hands) in enumerate(samples):
        name = f"{sample_id:05d}.png"
        cases[name] = case
        rgb = rng.integers(0, 80, (RHD_SIZE, RHD_SIZE, 3), dtype=np.uint8)
        labels = np.where(rng.random((RHD_SIZE, RHD_SIZE)) < 0.3, 1, 0).astype(np.uint8)  # some "person"
        depth = np.full((RHD_SIZE, RHD_SIZE), 3.0)
        uv_vis = np.zeros((42, 3))
        for side, (cx, cy, r, offset, visible) in enumerate(hands):
            pixels = _disc(cx, cy, r, RHD_SIZE)
            if case == "in_pieces":
                pixels &= np.abs(np.mgrid[0:RHD_SIZE, 0:RHD_SIZE][1] - cx) > 2  # cut in two by a 5 px gap
            yy, xx = np.mgrid[0:RHD_SIZE, 0:RHD_SIZE]
            parts = 2 + 16 * side + ((xx + yy) // 7) % 16
            labels[pixels] = parts[pixels]
            depth[pixels] = 0.5 + 0.002 * (xx[pixels] - (cx - r)) + 0.1 * side
            rgb[pixels] = (200, 150, 120)
            uv_vis[21 * side:21 * side + 21] = _keypoints_in(cx + offset, cy, r, visible)
        Image.fromarray(rgb).save(folder / "color" / name)
        Image.fromarray(encode_rhd_depth(depth)).save(folder / "depth" / name)
        Image.fromarray(labels).save(folder / "mask" / name)
        annotations[sample_id] = {"uv_vis": uv_vis.astype(np.float64), "xyz": np.zeros((42, 3), np.float32),
                                  "K": np.eye(3, dtype=np.float32)}
    with open(folder / f"anno_{split}.pickle", "wb") as f:
        pickle.dump(annotations, f, protocol=2)
    return cases


SAI_MAPPING = {"background": 0, "body": 1, "hand_left": 2, "hand_right": 3, "hair": 4}


def write_static_gestures(root: Path, count: int = 3, size: int = 256, mapping=SAI_MAPPING) -> None:
    """Synthesis AI layout: NAME.rgb.png, NAME.segments.png, NAME.info.json, NAME.depth.tif (float32 metres)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        stem = f"{i}.cam_default.f_1"
        rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        segments = np.full((size, size), mapping["body"], dtype=np.uint8)
        segments[:, : size // 8] = mapping["background"]
        depth = np.full((size, size), 2.0, dtype=np.float32)
        for side, cx in (("hand_left", size * 0.3), ("hand_right", size * 0.7)):
            pixels = _disc(cx, size * 0.5, size * 0.12, size)
            segments[pixels] = mapping[side]
            depth[pixels] = (0.6 + 0.001 * yy[pixels] + (0.05 if side == "hand_right" else 0)).astype(np.float32)
        Image.fromarray(rgb).save(root / f"{stem}.rgb.png")
        Image.fromarray(segments).save(root / f"{stem}.segments.png")
        Image.fromarray(depth, mode="F").save(root / f"{stem}.depth.tif")
        (root / f"{stem}.info.json").write_text(json.dumps({"segments_mapping": mapping}))


def write_training_folder(root: Path, count: int = 8, size: int = 64, seed: int = 0) -> Path:
    """A prepared training folder: a skin-coloured disc (the "hand", masked) with a depth ramp as its hint."""
    from lib_handrefiner.train.folder import FolderEntry, write_captions, write_sample

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    entries = []
    for i in range(count):
        cx, cy, r = rng.uniform(0.35, 0.65) * size, rng.uniform(0.35, 0.65) * size, rng.uniform(0.15, 0.3) * size
        hand = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        rgb = (rng.uniform(0, 255, (size, size, 3)) * 0.3 + np.array([60, 120, 200]) * 0.7).astype(np.uint8)
        rgb[hand] = (220, 170, 140)
        hint = np.where(hand, np.clip(255 - 204 * (xx - (cx - r)) / (2 * r), 50, 255), 0).astype(np.uint8)
        name = f"{i:05d}.png"
        write_sample(root, name, rgb, np.where(hand, 255, 0).astype(np.uint8), hint)
        entries.append(FolderEntry(name, "a photo of a hand" if i % 2 else "a hand, close up"))
    write_captions(root / "prompt.json", entries)
    return root
