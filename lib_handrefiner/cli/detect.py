"""`python -m lib_handrefiner detect IMAGE... --out DIR`: find hands; write depth, mask, overlay and JSON.

For each image: `<stem>.hands.json` (width, height, hands with handedness, score, mask box, 21 landmarks in pixels
and mesh model name; timings_ms), `<stem>.depth.png`, `<stem>.mask.png` and `<stem>.overlay.png`. Needs no
downloaded weights; `--mesh graphormer` needs Mesh Graphormer's three files (exit 1 naming each one missing). An
unreadable image gets a one-line error naming it; the others are still processed and the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from pydantic import ValidationError

from lib_handrefiner.cli.common import add_mesh_arguments, load_mesh_model, make_output_folder, settings_error
from lib_handrefiner.safe_write import OutputError, OutputFolder, png
from lib_handrefiner.settings import FIELDS, HandRefinerArgs

DEFAULTS = HandRefinerArgs()


def _describe(name: str) -> str:
    return f"{FIELDS[name].description} (default {getattr(DEFAULTS, name)})"


def _box(text: str) -> Tuple[float, float, float, float]:
    parts = text.replace(",", " ").split()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1 in pixels, got {text!r}")
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box is four numbers X0,Y0,X1,Y1, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="images to look for hands in")
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: out)")
    parser.add_argument("--max-hands", type=int, default=DEFAULTS.max_hands, metavar="N", help=_describe("max_hands"))
    parser.add_argument("--detection-confidence", type=float, default=DEFAULTS.detection_confidence, metavar="C",
                        help=_describe("detection_confidence"))
    parser.add_argument("--presence-confidence", type=float, default=DEFAULTS.presence_confidence, metavar="C",
                        help=_describe("presence_confidence"))
    parser.add_argument("--min-hand-size", type=int, default=DEFAULTS.min_hand_size, metavar="PX",
                        help=_describe("min_hand_size"))
    parser.add_argument("--mask-padding", type=int, default=DEFAULTS.mask_padding, metavar="PX",
                        help=_describe("mask_padding"))
    parser.add_argument("--mask-padding-ratio", type=float, default=DEFAULTS.mask_padding_ratio, metavar="R",
                        help=_describe("mask_padding_ratio"))
    parser.add_argument("--mask-dilation", type=int, default=DEFAULTS.mask_dilation, metavar="PX",
                        help=_describe("mask_dilation"))
    add_mesh_arguments(parser)
    parser.add_argument("--box", type=_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="a hand box in pixels (repeat for several); see --boxes-mode")
    parser.add_argument("--boxes-mode", choices=["replace", "add"], default=DEFAULTS.boxes_mode,
                        help=_describe("boxes_mode"))


def settings(ns: argparse.Namespace) -> HandRefinerArgs:
    return HandRefinerArgs(max_hands=ns.max_hands, detection_confidence=ns.detection_confidence,
                           presence_confidence=ns.presence_confidence, min_hand_size=ns.min_hand_size,
                           mask_padding=ns.mask_padding, mask_padding_ratio=ns.mask_padding_ratio,
                           mask_dilation=ns.mask_dilation, mesh_model=ns.mesh, mesh_fallback=ns.mesh_fallback,
                           boxes=ns.box, boxes_mode=ns.boxes_mode)


def hands_json(result) -> dict:
    """The `<stem>.hands.json` content of a PerceptionResult."""
    hands = []
    for p in result.hands:
        hand = p.hand
        hands.append({
            "handedness": hand.handedness if hand else None,
            "score": round(float(hand.score), 4) if hand else None,
            "box": [int(v) for v in p.box],
            "landmarks": [[round(float(v), 2) for v in point] for point in hand.landmarks] if hand else None,
            "mesh": p.mesh.model if p.mesh is not None else None,
            "refinable": bool(p.refinable),
            "from_user_box": bool(p.from_user_box),
            "found_by": p.found_by or None,
        })
    return {"width": result.width, "height": result.height, "hands": hands,
            **({"mesh_warning": result.mesh_warning} if result.mesh_warning else {}),
            "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}}


def _compact_json(data: dict) -> str:
    """Indented JSON with each innermost list of numbers (a box, a landmark) on one line."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def box_outside(path: Path, boxes, width: int, height: int) -> str | None:
    """The error for a user box that misses the image entirely (perception would drop it silently and report no
    hand); boxes partly outside are clipped to the image."""
    for box in boxes:
        x0, y0, x1, y1 = box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            return (f"{path}: box {[float(v) for v in box]} lies outside the {width}x{height} image; "
                    "give boxes in this image's pixels")
    return None


class OutputGuard:
    """Keeps a run's outputs from overwriting one of its input images or an earlier image's outputs (two inputs
    with the same stem)."""

    def __init__(self, inputs: Sequence[Path]) -> None:
        self.inputs = {p.resolve() for p in inputs if p.is_file()}
        self.claimed: Dict[Path, Path] = {}

    def clash(self, image: Path, outputs: Sequence[Path]) -> str | None:
        """The error for `image`, or None after claiming its outputs."""
        for output in outputs:
            key = output.resolve()
            if key in self.inputs:
                return f"{image}: its output would overwrite the input image {output}; pass another --out"
            if key in self.claimed:
                return (f"{image}: same output names as {self.claimed[key]} ({output}); rename one of them or run "
                        "them with different --out folders")
        self.claimed.update((output.resolve(), image) for output in outputs)
        return None


def output_paths(image: Path, out_dir: Path) -> List[Path]:
    return [out_dir / f"{image.stem}.{kind}" for kind in ("hands.json", "depth.png", "mask.png", "overlay.png")]


def _detect_one(path: Path, out_dir: Path, args: HandRefinerArgs, mesh_model, mesh_warning: str) -> str:
    from lib_handrefiner.imageio import ImageError, load_image
    from lib_handrefiner.perception import overlay_image, perceive

    rgb = load_image(path)
    outside = box_outside(path, args.boxes, rgb.shape[1], rgb.shape[0])
    if outside:
        raise ImageError(outside)
    result = perceive(rgb, args, mesh_model=mesh_model, mesh_warning=mesh_warning)
    # The JSON first: an image that is there always has its JSON.
    OutputFolder(out_dir, create=False).write_set([
        (f"{path.stem}.hands.json", _compact_json({"image": str(path), **hands_json(result)})),
        (f"{path.stem}.depth.png", png(result.depth)),
        (f"{path.stem}.mask.png", png(result.mask)),
        (f"{path.stem}.overlay.png", png(overlay_image(rgb, result)))])
    stem = out_dir / path.stem
    if not result.hands:
        return f"{path}: no hands found (hands: []) -> {stem}.*"
    found = ", ".join(f"{p.hand.handedness} {p.hand.score:.2f}" if p.hand else "box without a hand"
                      for p in result.hands)
    return f"{path}: {len(result.hands)} hand(s) [{found}] in {result.timings_ms['total']:.0f} ms -> {stem}.*"


def run(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lib_handrefiner.imageio import ImageError
    from lib_handrefiner.mesh import MeshModelError

    try:
        args = settings(ns)
    except ValidationError as e:
        print(f"error: {settings_error(e)}", file=sys.stderr)
        return 2
    try:
        mesh_model, mesh_warning = load_mesh_model(ns, args)
    except MeshModelError as e:  # the mesh model's files: missing or wrong, each named
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = Path(ns.out)
    problem = make_output_folder(out_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    paths: List[Path] = [Path(p) for p in ns.images]
    guard = OutputGuard(paths)
    folder = OutputFolder(out_dir, create=False)
    failures = 0
    with tqdm(paths, unit="image", disable=len(paths) < 2, file=sys.stderr) as bar:
        for path in bar:
            outputs = output_paths(path, out_dir)
            unwritable = folder.problem([o.name for o in outputs])  # before perception, which it would waste
            clash = guard.clash(path, outputs) or (unwritable and f"{path}: {unwritable}")
            if clash:
                tqdm.write(f"error: {clash}", file=sys.stderr)
                failures += 1
                continue
            try:
                tqdm.write(_detect_one(path, out_dir, args, mesh_model, mesh_warning), file=sys.stdout)
            except ImageError as e:
                tqdm.write(f"error: {e}", file=sys.stderr)
                failures += 1
            except OutputError as e:
                tqdm.write(f"error: {path}: {e}", file=sys.stderr)
                failures += 1
            except OSError as e:
                tqdm.write(f"error: {path}: cannot write its results to {out_dir}: {e.strerror or e}",
                           file=sys.stderr)
                failures += 1
    if failures:
        print(f"{failures} of {len(paths)} image(s) failed", file=sys.stderr)
    return 1 if failures else 0
