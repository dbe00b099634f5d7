"""`python -m lib_handrefiner.bench detect --set DIR --manifest TSV [--boxes TSV] [--passes palm,tile,...]`:
how many of the visible hands the hand search finds, per kind of image, how many of its hands are false, and
its milliseconds per image.

The manifest (the dev set's `manifest.tsv`) gives each image's kind and its count of visible hands. How a found
hand is judged:
- with `--boxes` (a TSV of `file x0 y0 x1 y1`, one labelled hand per row; `bench/detect_boxes.tsv` holds ours
  for the dev set, drawn by eye on the images): a found hand is true when the centre of its keypoint box lies in
  a labelled box not matched yet (each label matches once) and its keypoint box's longer side is at least
  MIN_SIZE_RATIO of the label's (a fingertip is not the hand); every other found hand is a false detection.
  Recall is matched labels over the manifest's count.
- without: by counts only, min(found, visible) true, the rest false.

`--passes before` runs what the default was before the hand search (the palm pass, at most 2 hands). Each image
is run once untimed (graphs build), then timed `--repeats` times; ms is the median over images of each image's
fastest run (the CPU is shared: the fastest run is the least disturbed).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Dict, List, Optional, Sequence, Tuple

BOXES = Path(__file__).with_name("detect_boxes.tsv")
Box = Tuple[float, float, float, float]
MIN_SIZE_RATIO = 0.25


@dataclass(frozen=True)
class ImageScore:
    file: str
    kind: str
    visible: int
    found: int
    true: int
    false: int
    ms: float
    found_by: Dict[str, int]


def read_manifest(path: Path) -> List[Tuple[str, str, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(row["file"], row["kind"], int(row["n_hands_visible"]))
                for row in csv.DictReader(f, delimiter="\t")]


def read_boxes(path: Path) -> Dict[str, List[Box]]:
    boxes: Dict[str, List[Box]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split("#")[0].split()
            if len(fields) == 5:
                boxes[fields[0]].append(tuple(float(v) for v in fields[1:]))
    return boxes


def judge(found: Sequence[Box], labels: Optional[Sequence[Box]], visible: int) -> Tuple[int, int]:
    """(true, false) of the found hands' keypoint boxes: against the labelled boxes (each matched once), else by
    count."""
    if labels is None:
        true = min(len(found), visible)
        return true, len(found) - true
    unmatched = list(labels)
    true = 0
    for x0, y0, x1, y1 in found:
        cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
        hit = next((b for b in unmatched if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]
                    and size >= MIN_SIZE_RATIO * max(b[2] - b[0], b[3] - b[1])), None)
        if hit is not None:
            unmatched.remove(hit)
            true += 1
    return min(true, visible), len(found) - true


def _search(rgb, passes: Sequence[str]):
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.hand_search import FoundHand, HandSearch, find_hands

    if list(passes) == ["before"]:
        return HandSearch([FoundHand(h, "palm") for h in detect_hands(rgb, max_hands=2)])
    return find_hands(rgb, passes=passes)


def score_image(path: Path, kind: str, visible: int, labels: Optional[Sequence[Box]], passes: Sequence[str],
                repeats: int) -> ImageScore:
    from lib_handrefiner.imageio import load_image

    rgb = load_image(path)
    result = _search(rgb, passes)
    times = []
    for _ in range(repeats):
        start = perf_counter()
        result = _search(rgb, passes)
        times.append((perf_counter() - start) * 1000.0)
    true, false = judge([h.hand.keypoint_box for h in result.hands], labels, visible)
    by: Dict[str, int] = defaultdict(int)
    for h in result.hands:
        by[h.found_by] += 1
    return ImageScore(path.name, kind, visible, len(result.hands), true, false, min(times) if times else 0.0,
                      dict(by))


def report(scores: Sequence[ImageScore]) -> str:
    lines = [f"{'kind':<20} {'images':>6} {'hands':>6} {'found':>6} {'recall':>7} {'false':>6}"]
    kinds: Dict[str, List[ImageScore]] = defaultdict(list)
    for s in scores:
        kinds[s.kind].append(s)
    for kind in sorted(kinds) + ["all"]:
        group = scores if kind == "all" else kinds[kind]
        hands = sum(s.visible for s in group)
        true = sum(s.true for s in group)
        lines.append(f"{kind:<20} {len(group):>6} {hands:>6} {true:>6} {true / max(hands, 1):>7.2f} "
                     f"{sum(s.false for s in group):>6}")
    hands = sum(s.visible for s in scores)
    false = sum(s.false for s in scores)
    by: Dict[str, int] = defaultdict(int)
    for s in scores:
        for name, n in s.found_by.items():
            by[name] += n
    lines.append(f"false detections: {false} ({100.0 * false / max(hands, 1):.1f} % of the {hands} hands)")
    lines.append("found by: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    ms = [s.ms for s in scores]
    lines.append(f"ms per image: median {statistics.median(ms):.0f}, max {max(ms):.0f}")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True, help="folder of the images")
    parser.add_argument("--manifest", type=Path, required=True, help="TSV: file, kind, n_hands_visible")
    parser.add_argument("--boxes", type=Path, default=None,
                        help=f"TSV of labelled hand boxes (default: {BOXES.name} here if it labels the set's files; "
                             "'none': judge by counts)")
    parser.add_argument("--passes", default=None,
                        help="comma-separated passes of the hand search (default: its defaults); 'before': the "
                             "palm pass with at most 2 hands, as before the hand search")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per image (default 1)")
    parser.add_argument("--per-image", action="store_true", help="print a line per image too")
    ns = parser.parse_args(argv)
    from lib_handrefiner.hand_search import DEFAULT_PASSES

    passes = ns.passes.split(",") if ns.passes else list(DEFAULT_PASSES)
    manifest = read_manifest(ns.manifest)
    boxes: Optional[Dict[str, List[Box]]] = None
    if str(ns.boxes) != "none":
        path = ns.boxes or BOXES
        boxes = read_boxes(path) if path.is_file() else None
        if boxes is not None and not any(f in boxes for f, _, _ in manifest):
            boxes = None  # the default labels are for another set
    scores = []
    for file, kind, visible in manifest:
        path = ns.set / file
        if not path.is_file():
            print(f"missing {path}: skipped", file=sys.stderr)
            continue
        labels = boxes.get(file, []) if boxes is not None else None
        score = score_image(path, kind, visible, labels, passes, max(1, ns.repeats))
        scores.append(score)
        if ns.per_image:
            print(f"{file:<28} {kind:<20} visible {visible} found {score.found} true {score.true} "
                  f"false {score.false} {score.ms:6.0f} ms {score.found_by}")
    if not scores:
        print("no image of the manifest found in --set", file=sys.stderr)
        return 1
    print(f"passes: {','.join(passes)}; false detections judged "
          f"{'against labelled boxes' if boxes is not None else 'by counts'}")
    print(report(scores))
    return 0
