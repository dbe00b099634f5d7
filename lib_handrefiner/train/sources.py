"""Readers of the datasets `prepare-data` turns into training folders. Each yields `SourceSample`s: the image, the
hands' segmentation pixels (with keypoints where the dataset has them) and, where it has one, the metric depth.

- `rhd`: the Rendered Hand Pose dataset, RHD_published_v2/{training,evaluation}/: color/NNNNN.png (320² RGB),
  depth/NNNNN.png (16-bit depth spread over two 8-bit channels: d = (R·256 + G) / 65535 · 5 m), mask/NNNNN.png
  (per-pixel classes: 0 background, 1 person, 2–17 the left hand's parts, 18–33 the right hand's) and
  anno_<split>.pickle ({sample id: {"uv_vis": 42×3 (u, v, visible), "xyz": 42×3, "K": 3×3}}; keypoints 0–20 are
  the left hand, 21–41 the right), read with the restricted unpickler (numpy arrays only).
- `static-gestures`: Synthesis AI's static hand gesture set, per sample NAME.rgb.png, NAME.segments.png (segment
  indices), NAME.info.json ("segments_mapping": segment name → index) and NAME.depth.tif (float depth). The
  hand segments are those whose names contain the word hand, finger, thumb or palm (`hand_segments` overrides),
  split into left and right by the words left/right in their names (segments of neither side: one hand per
  connected piece).
- `images`: any folder of photos (JPEG, PNG, WebP, BMP; sub-folders included): no segmentation and no depth, so
  the hint and the mask come from a mesh model on MediaPipe's detection.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

RHD_DEPTH_METRES = 5.0
RHD_LEFT_LABELS = range(2, 18)
RHD_RIGHT_LABELS = range(18, 34)
RHD_KEYPOINTS = 21
HAND_SEGMENT_WORDS = ("hand", "hands", "finger", "fingers", "thumb", "palm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class SourceError(ValueError):
    """A source folder that is not in the expected layout; the message says what is missing and the fix."""


@dataclass
class SourceHand:
    pixels: np.ndarray                       # H×W bool: the hand's segmentation
    side: str = "unknown"                    # "left", "right" or "unknown" (the person's own)
    keypoints: Optional[np.ndarray] = None   # 21×3 (u, v, visible) in pixels, where the dataset has them


@dataclass
class SourceSample:
    name: str                                # unique output stem
    source_file: str                         # the file name captions refer to
    rgb: np.ndarray                          # H×W×3 uint8
    hands: List[SourceHand] = field(default_factory=list)
    depth: Optional[np.ndarray] = None       # H×W float32, larger is farther; ≤ 0 or non-finite: none


@dataclass
class Source:
    """A dataset: how many samples it has and a reader of the i-th (which may raise OSError/ValueError for a
    sample whose files are unreadable; prepare counts those)."""
    kind: str
    root: Path
    names: List[str]
    read: Callable[[int], SourceSample]
    opened_as: tuple = ()    # open_source's arguments: what a worker process reopens the source with

    def __len__(self) -> int:
        return len(self.names)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ---- RHD -------------------------------------------------------------------------------------------------------

def rhd_depth(encoded: np.ndarray) -> np.ndarray:
    """Metres from RHD's depth PNG: the top 8 bits in red, the bottom 8 in green, 0…65535 spanning 0…5 m."""
    top, bottom = encoded[..., 0].astype(np.float32), encoded[..., 1].astype(np.float32)
    return (top * 256.0 + bottom) / 65535.0 * RHD_DEPTH_METRES


def _rhd_split(src: Path, split: str) -> Path:
    if (src / "color").is_dir():
        return src
    if (src / split / "color").is_dir():
        return src / split
    raise SourceError(f"{src} is not RHD_published_v2 (nor one of its training/evaluation folders): no color/ "
                      f"or {split}/color/; pass the folder that holds training/ and evaluation/")


def read_rhd_annotations(path: Path) -> Dict[int, dict]:
    """The annotation pickle through the restricted unpickler: numpy arrays and plain containers, nothing else
    (a pickle that names any other global is refused, so nothing in the file runs)."""
    from lib_handrefiner import safe_pickle

    try:
        annotations = safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS, unknown="refuse", encoding="latin1")
    except (safe_pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise SourceError(f"{path}: not a readable RHD annotation pickle ({e}); download it again") from None
    if not isinstance(annotations, dict) or not all(isinstance(k, int) and isinstance(v, dict)
                                                     for k, v in annotations.items()):
        raise SourceError(f"{path}: expected a dict of sample id → annotation dict, got "
                          f"{type(annotations).__name__}")
    return annotations


def _rhd_keypoints(annotation: dict, sample_id: int) -> np.ndarray:
    uv_vis = np.asarray(annotation.get("uv_vis"), dtype=np.float64) if "uv_vis" in annotation else None
    if uv_vis is None or uv_vis.shape != (2 * RHD_KEYPOINTS, 3):
        raise ValueError(f"RHD sample {sample_id}: 'uv_vis' is not 42×3")
    return uv_vis


def open_rhd(src: Path, split: str = "training") -> Source:
    root = _rhd_split(Path(src), split)
    pickles = sorted(root.glob("anno_*.pickle"))
    if not pickles:
        raise SourceError(f"{root}: no anno_*.pickle (RHD's keypoint annotations, e.g. anno_{split}.pickle)")
    annotations = read_rhd_annotations(pickles[0])
    ids = sorted(annotations)

    def read(i: int) -> SourceSample:
        sample_id = ids[i]
        name = f"{sample_id:05d}.png"
        rgb = _rgb(root / "color" / name)
        labels = _array(root / "mask" / name)
        depth = rhd_depth(np.asarray(Image.open(root / "depth" / name).convert("RGB")))
        if labels.shape != rgb.shape[:2] or depth.shape != rgb.shape[:2]:
            raise ValueError(f"RHD sample {name}: color, depth and mask differ in size")
        uv_vis = _rhd_keypoints(annotations[sample_id], sample_id)
        hands = [SourceHand((labels >= span.start) & (labels < span.stop), side,
                            uv_vis[offset:offset + RHD_KEYPOINTS])
                 for side, span, offset in (("left", RHD_LEFT_LABELS, 0), ("right", RHD_RIGHT_LABELS, RHD_KEYPOINTS))]
        return SourceSample(f"rhd_{sample_id:05d}", name, rgb, hands, depth)

    return Source("rhd", root, [f"{i:05d}.png" for i in ids], read)


# ---- Synthesis AI static gestures -----------------------------------------------------------------------------

def _words(name: str) -> List[str]:
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


def hand_segments(mapping: Dict[str, int], names: Optional[Sequence[str]] = None) -> Dict[str, List[int]]:
    """side → segment indices of the hands: the named segments, or those named like hand parts."""
    chosen = [n for n in mapping if n in names] if names else \
        [n for n in mapping if set(_words(n)) & set(HAND_SEGMENT_WORDS)]
    sides: Dict[str, List[int]] = {}
    for segment in chosen:
        words = set(_words(segment))
        side = "left" if "left" in words else "right" if "right" in words else "unknown"
        sides.setdefault(side, []).append(int(mapping[segment]))
    return sides


def _split_unsided(pixels: np.ndarray, side: str) -> List[np.ndarray]:
    """Segments of no known side are split into connected pieces, one hand each (two hands apart stay two)."""
    if side != "unknown":
        return [pixels]
    import cv2

    count, labels = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


def _tiff_depth(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float32)


def open_static_gestures(src: Path, segment_names: Optional[Sequence[str]] = None) -> Source:
    root = Path(src)
    rgbs = sorted(root.rglob("*.rgb.png"))
    if not rgbs:
        raise SourceError(f"{root}: no *.rgb.png files; the Synthesis AI layout is NAME.rgb.png, "
                          "NAME.segments.png, NAME.info.json and NAME.depth.tif per sample")
    stems = [str(p.relative_to(root))[:-len(".rgb.png")] for p in rgbs]

    def read(i: int) -> SourceSample:
        stem = stems[i]
        rgb = _rgb(root / f"{stem}.rgb.png")
        info = json.loads((root / f"{stem}.info.json").read_text())
        mapping = info.get("segments_mapping")
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"{stem}.info.json has no 'segments_mapping'")
        sides = hand_segments(mapping, segment_names)
        if not sides:
            raise SourceError(f"{stem}.info.json names no hand segment among {sorted(mapping)}; name them with "
                              "--hand-segments")
        segments = _array(root / f"{stem}.segments.png")
        if segments.ndim == 3:
            segments = segments[..., 0]
        hands = [SourceHand(pixels, side) for side, indices in sorted(sides.items())
                 for pixels in _split_unsided(np.isin(segments, indices), side)]
        depth_file = root / f"{stem}.depth.tif"
        depth = _tiff_depth(depth_file) if depth_file.is_file() else None
        if segments.shape != rgb.shape[:2] or (depth is not None and depth.shape != rgb.shape[:2]):
            raise ValueError(f"{stem}: rgb, segments and depth differ in size")
        return SourceSample("sai_" + stem.replace("/", "__"), f"{Path(stem).name}.rgb.png", rgb, hands, depth)

    return Source("static-gestures", root, [f"{s}.rgb.png" for s in stems], read)


# ---- photo folders ---------------------------------------------------------------------------------------------

def open_images(src: Path) -> Source:
    from lib_handrefiner.imageio import load_image

    root = Path(src)
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def read(i: int) -> SourceSample:
        relative = files[i].relative_to(root)
        name = "img_" + str(relative.with_suffix("")).replace("/", "__")
        return SourceSample(name, relative.name, load_image(files[i]))

    return Source("images", root, [str(f.relative_to(root)) for f in files], read)


SOURCES = ("rhd", "static-gestures", "images")


def open_source(kind: str, src: Path, split: str = "training",
                segment_names: Optional[Sequence[str]] = None) -> Source:
    if not Path(src).exists():
        raise SourceError(f"{src} does not exist")
    if kind == "rhd":
        source = open_rhd(src, split)
    elif kind == "static-gestures":
        source = open_static_gestures(src, segment_names)
    elif kind == "images":
        source = open_images(src)
    else:
        raise SourceError(f"unknown source {kind!r}; one of {', '.join(SOURCES)}")
    source.opened_as = (kind, str(src), split, tuple(segment_names) if segment_names else None)
    return source
