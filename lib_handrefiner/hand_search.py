"""The hand-finding stage: `find_hands(rgb, …) -> HandSearch`, every pass that looks for hands behind one call,
and `hand_in_box` for a box a user drew, which always yields a hand.

Passes, in order (each hand keeps the name of the pass that found it first, in `FoundHand.found_by`):
- "palm": MediaPipe's palm detector and landmark model over the whole image (shrunk to MediaPipe's bounds);
  when it finds nothing, the image again with a grey border (hands cut by the edge).
- "pose": MediaPipe's pose model's wrists, elbows and hand points (up to POSE_PEOPLE people, the pose detector's
  most confident) give each arm's hand region; the landmark model alone looks there (no palm detector), as
  MediaPipe's holistic graph does, and keeps the hand at the presence threshold of the palm pass (a confident
  person's arm proposes its hand as a confident palm does).
  It finds the hands of a person the palm detector misses (small hands of full-body figures); it runs before the
  weak passes so that their candidates on its hands are not tried again, and not at all on a close-up
  (POSE_CLOSE_UP).
- "low": the same (whole image, and with the border) taking the palm detector's weak candidates too
  (LOW_DETECTION), each kept only when the landmark model's presence score passes CONFIRM_PRESENCE: malformed
  and partly hidden hands get low palm scores but still look like hands to the landmark model.
- "flip": the palm detector on the mirrored image (it is not mirror-symmetric), its candidates mirrored back and
  confirmed like "low"'s.
- "edge": the palm detector on the image with a grey border (palms cut by the image's edge), confirmed likewise.
- "tile": overlapping square tiles, for hands too small for the palm detector's 192 px view of the whole image.
A hand found by a later pass that overlaps one already found is the same hand (`same_hand`).

Every image given to MediaPipe is bounded (detection.bounded): no side over detection.MAX_SIDE, no more than
detection.MAX_PIXELS, whatever the aspect ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from time import perf_counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib_handrefiner import detection
from lib_handrefiner.detection import (
    Hand,
    PalmCandidate,
    bordered,
    detect_hands,
    landmarks_in_regions,
    make_hand,
    palm_candidates_each,
    pose_arms,
    uncrop_hand,
    upright_rotation,
    wrapped_angle,
)
from lib_handrefiner.masking import clamp_box

FOUND_BY = ("palm", "pose", "low", "flip", "edge", "tile", "user_box")
PASSES = ("palm", "pose", "low", "flip", "edge", "tile")
DEFAULT_PASSES = PASSES
# Two hands whose keypoint boxes overlap this much (intersection over the smaller box) are one hand.
SAME_HAND_OVERLAP = 0.3
# The passes after the first take the palm detector's weak candidates too (LOW_DETECTION) and keep a hand only
# when the landmark model's presence score passes CONFIRM_PRESENCE.
LOW_DETECTION = 0.01
CONFIRM_PRESENCE = 0.6
# The landmark model runs once per palm candidate: the low passes look at this many candidates (the most
# confident) over the whole image, and TILE_CANDIDATES per tile. (6 found no more hands than 5 on either image set
# and took ~15 % longer; 4 lost a small hand on the second set.)
LOW_CANDIDATES = 5
TILE_CANDIDATES = 2
# A candidate about the region of one already tried is not tried again.
SAME_REGION_SHIFT = 0.25
# Nor, in a weak pass, one about the region (turned at most REASKED_TURN rad from it) of a candidate the landmark
# model scored below REASKED_PRESENCE: the weak views repeat each other's candidates; 11-23 % fewer landmark runs,
# the same true hands on all five image sets. The model's presence can change from 0.16 to 0.69 between two such
# regions, so a region it nearly accepted is asked again, and the palm pass always asks (on set 4 its bordered
# fallback found a hand whose region in the whole image had scored below 0.1).
REASKED_PRESENCE = 0.1
REASKED_TURN = 0.5
# Tiles see the palm detector's ordinary candidates, but each view of a small region finds hand-like things in
# hair, straps and faces: their hands must pass this stricter presence threshold (the dev set: 0.6 kept 2 false
# hands, 0.85 none, and the same true ones).
TILE_PRESENCE = 0.85
# Tiles: squares of this fraction of the image's shorter side, overlapping by TILE_OVERLAP, only for images whose
# shorter
# side is at least TILE_MIN_SIDE (smaller images show their hands large enough to the whole-image pass).
TILE_FRACTION = 0.6
TILE_OVERLAP = 0.25
TILE_MIN_SIDE = 600
# A pose hand region: a square of this many times the pose wrist-to-hand-points distance (at least
# POSE_FOREARM_FRACTION of the forearm), centred this far from the wrist towards the hand points.
POSE_REGION_SCALE = 3.2
POSE_FOREARM_FRACTION = 0.8
POSE_CENTRE_SHIFT = 0.6
POSE_MIN_VISIBILITY = 0.3
# The pose model reads this many people at most, the pose detector's most confident (~25 ms each).
POSE_PEOPLE = 4
# The pose pass finds the small hands of full-body figures; where a hand found before it is at least this fraction
# of the picture's shorter side, the picture is a close-up whose hands the palm detector's views see, and the pose
# model (~30 ms) is not run. (On the dev set and set 2 it found hands only in pictures whose hands found before were
# at most 0.10 of the shorter side, or where none was.)
POSE_CLOSE_UP = 0.2
# A user's box: the landmark model alone on the box's square (grown by this), at these rotations (degrees); the
# rotation it gives the highest presence score wins, however low (the user said there is a hand).
USER_BOX_GROW = 1.2
# Before that, the palm passes look in a crop around the box grown by this fraction of its side on every side (the
# palm detector needs some context), resized so that its longer side is this many pixels.
USER_BOX_CONTEXT = 0.25
USER_BOX_CROP_SIDE = 512
USER_BOX_ROTATIONS = (0, 90, -90, 180, 45, -45, 135, -135)


@dataclass(frozen=True)
class FoundHand:
    hand: Hand
    found_by: str             # one of FOUND_BY


@dataclass(frozen=True)
class HandSearch:
    hands: List[FoundHand]
    # milliseconds: "views" (the palm detector on every view the passes need, in one batch), then each pass
    pass_ms: Dict[str, float] = field(default_factory=dict)

    def count_by(self) -> Dict[str, int]:
        return {name: sum(h.found_by == name for h in self.hands) for name in FOUND_BY}


def find_hands(rgb: np.ndarray, max_hands: int = 0, detection_confidence: float = 0.2,
               presence_confidence: float = 0.2, passes: Sequence[str] = DEFAULT_PASSES) -> HandSearch:
    """All hands (or the `max_hands` most confident, 0: all) found by `passes` in an RGB uint8 image."""
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown hand-search pass(es) {sorted(unknown)}; choose from {list(PASSES)}")
    search = _Search(rgb, detection_confidence, presence_confidence)
    start = perf_counter()
    search.look([view for name in passes for view in _VIEWS_OF_PASS[name]])
    timings: Dict[str, float] = {"views": (perf_counter() - start) * 1000.0}
    for name in passes:
        start = perf_counter()
        for hand in getattr(search, f"{name}_pass")():
            search.add(hand, name)
        timings[name] = (perf_counter() - start) * 1000.0
    found = search.found
    if max_hands > 0:
        found = sorted(found, key=lambda f: -f.hand.score)[:max_hands]
    return HandSearch(found, timings)


# The views of the image each pass gives the palm detector; `find_hands` has them all looked at in one batch
# before the passes run.
_VIEWS_OF_PASS = {"palm": ("whole",), "low": ("whole",), "flip": ("mirrored",), "edge": ("bordered",),
                  "tile": ("tiles",), "pose": ()}


class _Search:
    """One image's search: the hands found so far and the palm detector's candidates in each view, shared by the
    passes."""

    def __init__(self, rgb: np.ndarray, detection_confidence: float, presence_confidence: float):
        self.rgb = rgb
        self.detection = detection_confidence
        self.presence = presence_confidence
        self.confirm = max(CONFIRM_PRESENCE, presence_confidence)
        self.found: List[FoundHand] = []
        # the regions the landmark model scored below REASKED_PRESENCE
        self.rejected: List[PalmCandidate] = []
        # view name -> candidates in the image's pixels, one list per picture the view shows the detector
        self.palms: Dict[str, List[List[PalmCandidate]]] = {}

    def add(self, hand: Hand, found_by: str) -> None:
        if not any(same_hand(hand, f.hand) for f in self.found):
            self.found.append(FoundHand(hand, found_by))

    def look(self, views: Sequence[str]) -> None:
        """The palm detector on every picture of `views` not looked at yet, in one batch."""
        todo = [view for view in dict.fromkeys(views) if view not in self.palms]
        pictures = {view: getattr(self, f"_{view}_view")() for view in todo}
        looks = [(image, score) for view in todo for image, score, _ in pictures[view]]
        found = iter(palm_candidates_each(looks))
        for view in todo:
            self.palms[view] = [[back(c) for c in next(found)] for _, _, back in pictures[view]]

    def _whole_view(self):
        return [(self.rgb, min(LOW_DETECTION, self.detection), lambda c: c)]

    def _mirrored_view(self):
        """The mirrored image (the palm detector is not mirror-symmetric: it proposes other palms), its
        candidates mirrored back."""
        width = self.rgb.shape[1]
        return [(np.ascontiguousarray(self.rgb[:, ::-1]), min(LOW_DETECTION, self.detection),
                 lambda c: PalmCandidate(c.score, (width - c.centre[0], c.centre[1]), c.side, -c.rotation))]

    def _bordered_view(self):
        """The image with a grey border (palms cut by the image's edge), small images upscaled."""
        image, scale, pad = bordered(self.rgb)
        return [(image, min(LOW_DETECTION, self.detection),
                 lambda c: PalmCandidate(c.score, ((c.centre[0] - pad) / scale, (c.centre[1] - pad) / scale),
                                         c.side / scale, c.rotation))]

    def _tiles_view(self):
        """Overlapping square tiles (hands too small for the palm detector's 192 px view of the whole image), only
        for images of TILE_MIN_SIDE and more; ordinary candidates only."""
        height, width = self.rgb.shape[:2]
        if min(height, width) < TILE_MIN_SIDE:
            return []
        side = int(TILE_FRACTION * min(height, width))
        return [(np.ascontiguousarray(self.rgb[y0:y0 + side, x0:x0 + side]), self.detection,
                 lambda c, x0=x0, y0=y0: PalmCandidate(c.score, (c.centre[0] + x0, c.centre[1] + y0), c.side,
                                                       c.rotation))
                for y0 in _starts(height, side) for x0 in _starts(width, side)]

    def _on_a_found_hand(self, point: Tuple[float, float]) -> bool:
        return any(_inside(point, f.hand) for f in self.found)

    def _confirm(self, groups: Sequence[Sequence[PalmCandidate]], presence: float, limit: int,
                 reask: bool = False) -> List[Hand]:
        """The landmark model, in one batch, on the first `limit` candidate regions of each group that are not on a
        hand found already nor about a region chosen before in the group; its hands above `presence`. A region
        like one it rejected outright before takes its place among the `limit` but is not asked again."""
        chosen: List[PalmCandidate] = []
        for group in groups:
            considered: List[PalmCandidate] = []
            for c in group:
                if len(considered) >= limit:
                    break
                if not (self._on_a_found_hand(c.centre) or any(_same_region(c, t) for t in considered)):
                    considered.append(c)
            chosen += [c for c in considered if reask or not any(
                _same_region(c, r) and _turn(c.rotation, r.rotation) <= REASKED_TURN for r in self.rejected)]
        # Presence 0 gives every region's score, so that the rejected ones are remembered.
        scored = landmarks_in_regions(self.rgb, [(c.centre, c.side, c.rotation) for c in chosen], 0.0)
        self.rejected += [c for c, hand in zip(chosen, scored) if hand is None or hand.score < REASKED_PRESENCE]
        return [_with_score(hand, c.score) for c, hand in zip(chosen, scored)
                if hand is not None and hand.score >= presence]

    def palm_pass(self) -> List[Hand]:
        """The palm detector's confident candidates in the whole image, else in the bordered one."""
        for view in ("whole", "bordered"):
            self.look([view])
            strong = [[c for c in self.palms[view][0] if c.score >= self.detection]]
            hands = self._confirm(strong, self.presence, detection.ALL_HANDS, reask=True)
            if hands:
                return hands
        return []

    def low_pass(self) -> List[Hand]:
        return self._confirm([[c for c in self.palms["whole"][0] if c.score < self.detection]], self.confirm,
                             LOW_CANDIDATES)

    def flip_pass(self) -> List[Hand]:
        return self._confirm(self.palms["mirrored"], self.confirm, LOW_CANDIDATES)

    def edge_pass(self) -> List[Hand]:
        return self._confirm(self.palms["bordered"], self.confirm, LOW_CANDIDATES)

    def tile_pass(self) -> List[Hand]:
        # Each small view of the image finds hand-like things in hair, straps and faces: TILE_PRESENCE.
        return self._confirm(self.palms["tiles"], max(TILE_PRESENCE, self.presence), TILE_CANDIDATES)

    def pose_pass(self) -> List[Hand]:
        # A confident person's arm proposes its hand as confidently as a strong palm candidate: the same presence
        # threshold as the palm pass. An arm whose hand was found already costs no landmark run.
        if any(f.hand.size >= POSE_CLOSE_UP * min(self.rgb.shape[:2]) for f in self.found):
            return []
        regions = [pose_hand_region(arm) for arm in pose_arms(self.rgb, POSE_PEOPLE)
                   if arm.visibility >= POSE_MIN_VISIBILITY]
        regions = [r for r in regions if not self._on_a_found_hand(r[0])]
        return [hand for hand in landmarks_in_regions(self.rgb, regions, self.presence) if hand is not None]


def _same_region(a: PalmCandidate, b: PalmCandidate) -> bool:
    """Whether two candidates show the landmark model nearly the same picture (the palm detector keeps many
    overlapping weak candidates): centres within SAME_REGION_SHIFT of the larger side, sides within 1.5×."""
    larger, smaller = max(a.side, b.side), min(a.side, b.side)
    shift = math.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1])
    return shift <= SAME_REGION_SHIFT * larger and larger <= 1.5 * smaller


def _turn(a: float, b: float) -> float:
    """The angle between two rotations (rad), 0..π."""
    return abs(wrapped_angle(a - b))


def _inside(point: Tuple[float, float], hand: Hand) -> bool:
    x0, y0, x1, y1 = hand.keypoint_box
    return x0 <= point[0] <= x1 and y0 <= point[1] <= y1


def _with_score(hand: Hand, palm_score: float) -> Hand:
    """The hand with its palm candidate's score (what `detection_confidence` thresholds)."""
    return make_hand(hand.handedness, palm_score, hand.landmarks, hand.world_landmarks, hand.handedness_score)


def same_hand(a: Hand, b: Hand) -> bool:
    """Whether two found hands are one: their keypoint boxes overlap by SAME_HAND_OVERLAP of the smaller box, or
    their wrists and middle-finger bases both lie within a quarter of the smaller hand's size."""
    ax0, ay0, ax1, ay1 = a.keypoint_box
    bx0, by0, bx1, by1 = b.keypoint_box
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    smaller = min(max(ax1 - ax0, 1.0) * max(ay1 - ay0, 1.0), max(bx1 - bx0, 1.0) * max(by1 - by0, 1.0))
    if inter / smaller >= SAME_HAND_OVERLAP:
        return True
    near = 0.25 * max(min(a.size, b.size), 1.0)
    return bool(np.all(np.hypot(*(a.landmarks[[0, 9], :2] - b.landmarks[[0, 9], :2]).T) < near))


def _starts(length: int, side: int) -> List[int]:
    """Tile origins along one axis: tiles of `side` overlapping by TILE_OVERLAP, the last one flush with the end."""
    count = max(1, math.ceil((length - side) / (side * (1 - TILE_OVERLAP))) + 1)
    return sorted({round(i * (length - side) / max(count - 1, 1)) for i in range(count)})


def pose_hand_region(arm) -> Tuple[Tuple[float, float], float, float]:
    """The square region (centre px, side px, rotation rad) where an arm's hand is, from the pose model's wrist,
    elbow and hand points; rotated so that the wrist-to-hand direction points up, as the landmark model wants."""
    hand_centre = arm.hand_points.mean(axis=0)
    direction = hand_centre - arm.wrist
    reach = float(np.hypot(*direction))
    forearm = float(np.hypot(*(arm.wrist - arm.elbow)))
    side = max(POSE_REGION_SCALE * reach, POSE_FOREARM_FRACTION * forearm, 16.0)
    if reach < 1e-3:  # hand points on the wrist: continue the forearm
        direction = arm.wrist - arm.elbow
        reach = max(float(np.hypot(*direction)), 1e-3)
    unit = direction / max(float(np.hypot(*direction)), 1e-3)
    centre = arm.wrist + unit * POSE_CENTRE_SHIFT * side / 2
    return (float(centre[0]), float(centre[1])), side, upright_rotation(float(unit[0]), float(unit[1]))


def hand_in_box(rgb: np.ndarray, box: Sequence[float], detection_confidence: float = 0.2,
                presence_confidence: float = 0.2) -> FoundHand:
    """A hand for a box the user drew (image pixels x0, y0, x1, y1): the most confident hand the palm passes find
    in a crop around the box, else the landmark model alone on the box at several rotations, the one it is most
    confident at (the user said a hand is there, so it answers even below any threshold). Always returns a hand;
    a "user_box" hand's score is the landmark model's presence score."""
    hand = detect_in_box_crop(rgb, box, detection_confidence, presence_confidence)
    if hand is not None:
        return FoundHand(hand, "palm")
    x0, y0, x1, y1 = (float(v) for v in box)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    side = max(x1 - x0, y1 - y0, 8.0) * USER_BOX_GROW
    turned = [(centre, side, math.radians(degrees)) for degrees in USER_BOX_ROTATIONS]
    # ties (a box where the model sees nothing anywhere) go to the first rotation, upright
    hand = max(landmarks_in_regions(rgb, turned, 0.0), key=lambda h: h.score)
    return FoundHand(hand, "user_box")


def detect_in_box_crop(rgb: np.ndarray, box: Sequence[float], detection_confidence: float,
                       presence_confidence: float) -> Optional[Hand]:
    """The most confident hand whose keypoint-box centre lies in `box`, searched by the palm detector in a crop
    around the box resized to USER_BOX_CROP_SIDE (small or cut-off hands that whole-image detection misses are
    often found this way); None if there is none."""
    import cv2

    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = box
    grow = USER_BOX_CONTEXT * max(x1 - x0, y1 - y0)
    cx0, cy0, cx1, cy1 = clamp_box((x0 - grow, y0 - grow, x1 + grow, y1 + grow), width, height)
    scale = USER_BOX_CROP_SIDE / max(cx1 - cx0, cy1 - cy0)
    crop = cv2.resize(rgb[cy0:cy1, cx0:cx1], (max(1, round((cx1 - cx0) * scale)), max(1, round((cy1 - cy0) * scale))),
                      interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    found = [uncrop_hand(h, scale, (cx0, cy0)) for h in detect_hands(
        crop, 0, detection_confidence, presence_confidence)]
    inside = [h for h in found if _centre_in(h.keypoint_box, box)]
    return max(inside, key=lambda h: h.score) if inside else None


def _centre_in(inner: Sequence[float], box: Sequence[float]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return box[0] <= cx < box[2] and box[1] <= cy < box[3]
