"""The perception stage in one call: image → hands (MediaPipe) → meshes → depth map → mask, with per-stage
timings. User-given boxes (`args.boxes`) replace or add to the detected hands (`args.boxes_mode`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib_handrefiner.depth import render_depth
from lib_handrefiner.detection import Hand
from lib_handrefiner.hand_search import find_hands, hand_in_box
from lib_handrefiner.imageio import ImageLike, to_rgb
from lib_handrefiner.masking import IntBox, box_iou, build_mask, clamp_box, hand_box, union_box
from lib_handrefiner.mesh import HandMesh, MeshModel, resolve_mesh_model
from lib_handrefiner.settings import HandRefinerArgs

# In "add" mode, a hand found in a user box that overlaps a detected hand this much is that hand.
SAME_HAND_IOU = 0.5


@dataclass(frozen=True)
class PerceivedHand:
    hand: Optional[Hand]      # always a hand: hand_search finds one for every user box
    mesh: Optional[HandMesh]
    box: IntBox               # the box of this hand's mask: (keypoint ∪ depth extrema, padded) ∪ user box
    refinable: bool           # has a mesh and is at least min_hand_size
    from_user_box: bool = False
    found_by: str = ""        # how the hand was found: hand_search.FOUND_BY ("palm", "tile", "flip", "pose",
                              # "user_box": the landmark model alone on the user's box); "" for no hand
    mesh_box: Optional[IntBox] = None  # the box the mesh model read the hand from ("user_box" hands), else None



@dataclass(frozen=True)
class PerceptionResult:
    width: int
    height: int
    hands: List[PerceivedHand]
    depth: np.ndarray         # (H, W) uint8, 0 background, 50..255 hands (each hand normalised on its own)
    mask: np.ndarray          # (H, W) uint8 0/255, all hands, dilated by args.mask_dilation
    timings_ms: Dict[str, float]
    hand_index: Optional[np.ndarray] = field(default=None, repr=False)  # (H, W) int16: hand of each depth pixel, -1
    mesh_warning: str = ""    # why the meshes are not the model the settings asked for (mesh_fallback), else ""

    def hand_mask(self, i: int, dilation: int = 0) -> np.ndarray:
        """The mask of hand `i` alone: its box ∪ its depth pixels, uint8 0/255."""
        return build_mask(self.width, self.height, [self.hands[i].box], self.hand_index == i, dilation)


@dataclass
class _Candidate:
    hand: Optional[Hand]
    box: Optional[IntBox]     # the user's box (clamped) for a hand given or confirmed by one, else None
    from_user_box: bool
    found_by: str


def perceive(image: ImageLike, args: HandRefinerArgs = HandRefinerArgs(),
             mesh_model: Optional[MeshModel] = None, mesh_warning: str = "") -> PerceptionResult:
    """`mesh_model`: the model the settings resolved to (None: resolve `args.mesh_model` here, files from the
    HANDREFINER_MODELS_DIR folder), with the warning of that resolution."""
    timings: Dict[str, float] = {}
    start = clock = perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = perf_counter()
        timings[name] = (now - clock) * 1000.0
        clock = now

    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    lap("convert")
    candidates = _find_hands(rgb, args)
    lap("detect")
    if mesh_model is None:
        mesh_model, mesh_warning = resolve_mesh_model(args.mesh_model, fallback=args.mesh_fallback)
    model = mesh_model
    meshes = [model.fit(c.hand, rgb, _mesh_box(c)) if c.hand is not None else None for c in candidates]
    lap("mesh")
    present = [i for i, m in enumerate(meshes) if m is not None]
    rendered = render_depth([meshes[i] for i in present], width, height)
    hand_index = np.full((height, width), -1, dtype=np.int16)
    for k, i in enumerate(present):
        hand_index[rendered.hand_index == k] = i
    lap("depth")
    extents = [None] * len(candidates)
    for k, i in enumerate(present):
        extents[i] = rendered.extents[k]
    hands = [_perceived(c, m, extent, width, height, args)
             for c, m, extent in zip(candidates, meshes, extents)]
    mask = build_mask(width, height, [h.box for h in hands], rendered.depth > 0, args.mask_dilation)
    lap("mask")
    timings["total"] = (perf_counter() - start) * 1000.0
    return PerceptionResult(width, height, hands, rendered.depth, mask, timings, hand_index, mesh_warning)


def _find_hands(rgb: np.ndarray, args: HandRefinerArgs) -> List[_Candidate]:
    height, width = rgb.shape[:2]
    candidates: List[_Candidate] = []
    if not (args.boxes and args.boxes_mode == "replace"):
        candidates = [_Candidate(f.hand, None, False, f.found_by) for f in find_hands(
            rgb, args.max_hands, args.detection_confidence, args.presence_confidence).hands]
    detected = list(candidates)
    for user_box in args.boxes:
        box = clamp_box(user_box, width, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # entirely off the image
        found = hand_in_box(rgb, box, args.detection_confidence, args.presence_confidence)
        same = _same_hand(found.hand, detected)
        if same is not None:
            same.box = union_box(box, same.box)  # None for a detected hand: the user's box
            same.from_user_box = True
        else:
            candidates.append(_Candidate(found.hand, box, True, found.found_by))
    return candidates


def _same_hand(hand: Hand, detected: Sequence[_Candidate]) -> Optional[_Candidate]:
    for candidate in detected:
        if box_iou(hand.keypoint_box, candidate.hand.keypoint_box) > SAME_HAND_IOU:
            return candidate
    return None


def _perceived(candidate: _Candidate, mesh: Optional[HandMesh], depth_extent: Optional[Tuple[int, int, int, int]],
               width: int, height: int, args: HandRefinerArgs) -> PerceivedHand:
    hand = candidate.hand
    box = candidate.box
    if hand is not None:
        box = union_box(hand_box(hand.landmarks, width, height, args.mask_padding, args.mask_padding_ratio,
                                 depth_extent), box)
    refinable = hand is not None and mesh is not None and hand.size >= args.min_hand_size
    return PerceivedHand(hand, mesh, box, refinable, candidate.from_user_box, candidate.found_by if hand else "",
                         _mesh_box(candidate))


def _mesh_box(candidate: _Candidate) -> Optional[IntBox]:
    """The user's box of a hand only the landmark model found in it: the mesh model reads the hand from there."""
    return candidate.box if candidate.found_by == "user_box" else None


# ---- pictures ---------------------------------------------------------------------------------------------------

# MediaPipe's 21-landmark skeleton: (from, to) pairs, wrist-to-knuckle lines and each finger's chain.
SKELETON: Tuple[Tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12),
    (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20))
FINGER_COLOURS = ((255, 80, 80), (255, 200, 40), (80, 220, 80), (60, 170, 255), (200, 90, 255))


def overlay_image(rgb: np.ndarray, result: PerceptionResult) -> np.ndarray:
    """The image with the depth map blended over the hands, the mask outline, each hand's box and label and its
    landmark skeleton; RGB uint8."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(rgb)
    out = rgb.astype(np.float32) * 0.55
    hit = result.depth > 0
    # Depth in a warm tint over the darkened image: near (255) bright, far (50) dim.
    tint = result.depth[hit, None].astype(np.float32) / 255.0 * np.array([255.0, 235.0, 200.0])
    out[hit] = 0.25 * rgb[hit] + 0.75 * tint
    out = _with_mask_outline(np.clip(out, 0, 255).astype(np.uint8), result.mask)
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    line = max(1, round(min(result.width, result.height) / 256))
    font = _font(10 + 4 * line)
    for perceived in result.hands:
        colour = (60, 255, 120) if perceived.refinable else (255, 160, 0)
        x0, y0, x1, y1 = perceived.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
        hand = perceived.hand
        if hand is None:
            draw.text((x0 + 3 * line, y0 + 2 * line), "box (no hand found)", fill=colour, font=font)
            continue
        draw.text((x0 + 3 * line, y0 + 2 * line), f"{hand.handedness} {hand.score:.2f}", fill=colour, font=font)
        xy = hand.landmarks[:, :2]
        for a, b in SKELETON:
            finger = min(max((b - 1) // 4, 0), 4)
            draw.line((*xy[a], *xy[b]), fill=FINGER_COLOURS[finger], width=line)
        r = 1.5 * line + 0.5
        for i, (x, y) in enumerate(xy):
            fill = (255, 255, 255) if i == 0 else FINGER_COLOURS[(i - 1) // 4]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=(0, 0, 0))
    return np.asarray(picture)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _with_mask_outline(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(np.ascontiguousarray(rgb), contours, -1, (255, 255, 255), 1)


def nothing_to_refine_message(perception, args: HandRefinerArgs) -> str:
    """Why an image with no refinable hand is left unchanged."""
    if not perception.hands:
        return "no hands found; image unchanged"
    # Every hand is refinable but for its size: a user's box always gets a hand (hand_search.hand_in_box).
    return (f"nothing to refine: {len(perception.hands)} hand(s) smaller than min_hand_size "
            f"({args.min_hand_size}px); image unchanged")


def with_mesh_warning(message: str, perception: PerceptionResult) -> str:
    """`message` with the perception's mesh warning (mesh_fallback used the landmark mesh), if any, on one line."""
    warning = " ".join(perception.mesh_warning.split())
    return f"{message}; warning: {warning}" if warning else message
