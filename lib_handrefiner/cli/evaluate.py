"""`python -m lib_handrefiner evaluate --before DIR --after DIR [--reference DIR] [--inception FILE] --out DIR`:
the paper's evaluation table (Tables 1-3) for images before and after refinement.

Columns, as the inputs allow:
- hands found, and the mean detection confidence ("Det. Conf.": MediaPipe's score of each image's best hand, 0 for
  an image without one) — always;
- MPJPE (px): each hand of a before image is fitted with the mesh model; the after image of the same name (cli
  refine's `<stem>.refined.png` pairs with `<stem>.*`) is re-detected, its hand nearest that mesh's joints is
  fitted with the same model, and the 2D joint distance averaged. Hands not found again are counted as lost;
- FID and KID (needs `--inception`, the FID Inception-v3 weights): each set against `--reference` (real hand
  photos) when given, else after against before.
Writes `evaluation.md` and `evaluation.json` (with per-image details) to `--out` and prints the table.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from lib_handrefiner import strict_json
from lib_handrefiner.cli.common import make_output_folder
from lib_handrefiner.safe_write import OutputFolder
from lib_handrefiner.settings import HandRefinerArgs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
REFINED_TAG = ".refined"  # cli refine's output name: <stem>.refined.png
DEFAULTS = HandRefinerArgs()


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated; the message says what to pass instead."""


@dataclass
class ImageRecord:
    file: str
    width: int
    height: int
    hands: int
    best_score: float                                        # 0 without a hand
    mpjpe_px: List[float] = field(default_factory=list)     # per before hand (after set only); inf = lost


@dataclass
class SetRow:
    name: str
    images: int
    images_with_hands: int
    hands_found: int
    detection_confidence: float
    mpjpe_px: Optional[float] = None      # mean over the hands found again
    mpjpe_hands: int = 0
    hands_lost: int = 0
    fid: Optional[float] = None
    kid_mean: Optional[float] = None
    kid_std: Optional[float] = None


@dataclass
class Evaluation:
    rows: List[SetRow]
    fid_against: Optional[str]            # "reference", "before" or None (no features)
    kid_subsets: Optional[int]
    kid_subset_size: Optional[int]
    mesh_model: str
    notes: List[str]
    images: Dict[str, List[ImageRecord]]


@dataclass
class _Scan:
    records: List[ImageRecord]
    targets: Dict[str, List[np.ndarray]]  # pairing key -> joints (21, 2) of each hand's mesh (before set)
    sizes: Dict[str, tuple]
    features: Optional[np.ndarray]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--before", required=True, metavar="DIR", help="images before refinement")
    parser.add_argument("--after", required=True, metavar="DIR",
                        help="refined images (cli refine's output folder: its *.refined.png are used)")
    parser.add_argument("--reference", metavar="DIR", help="real hand photos for FID/KID (optional)")
    parser.add_argument("--inception", metavar="FILE",
                        help="FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth from pytorch-fid's "
                             "GitHub release); without it FID and KID are left out")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for evaluation.md / evaluation.json")
    parser.add_argument("--mesh-model", default=DEFAULTS.mesh_model, metavar="NAME",
                        help=f"mesh model for MPJPE (default {DEFAULTS.mesh_model})")
    parser.add_argument("--kid-subsets", type=int, default=100, metavar="N", help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, metavar="N",
                        help="KID subset size (default 1000, lowered to the smallest set's image count)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="Inception batch (default 16)")


def run(ns: argparse.Namespace) -> int:
    from lib_handrefiner.inception import InceptionWeightsError

    out = Path(ns.out)
    problem = make_output_folder(out)
    folder = OutputFolder(out, create=False)
    problem = problem or folder.problem(["evaluation.json", "evaluation.md"])  # before the costly evaluation
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        extractor = _load_extractor(ns.inception) if ns.inception else None
        evaluation = evaluate(
            list_images(ns.before, refined_only=False), list_images(ns.after, refined_only=True),
            list_images(ns.reference, refined_only=False) if ns.reference else None, extractor=extractor,
            args=HandRefinerArgs(mesh_model=ns.mesh_model), kid_subsets=ns.kid_subsets,
            kid_subset_size=ns.kid_subset_size, batch_size=ns.batch_size)
    except (EvaluationError, InceptionWeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown_table(evaluation)
    try:
        folder.write_set([("evaluation.json", strict_json.dumps(to_json(evaluation), indent=2)),
                          ("evaluation.md", table)])
    except OSError as error:
        print(f"error: cannot write the evaluation to {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"wrote {out / 'evaluation.md'} and {out / 'evaluation.json'}")
    return 0


def _load_extractor(path: str):
    import torch

    from lib_handrefiner.inception import load_fid_inception

    return load_fid_inception(path, device="cuda" if torch.cuda.is_available() else "cpu")


def list_images(folder, refined_only: bool) -> List[Path]:
    """The images of a folder, sorted. With `refined_only`, a folder holding cli refine's `*.refined.*` files
    yields only those (not the depth / mask images beside them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    refined = [p for p in paths if p.stem.endswith(REFINED_TAG)]
    if refined_only and refined:
        paths = refined
    if not paths:
        raise EvaluationError(f"{folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def pairing_key(path: Path) -> str:
    stem = path.stem
    return stem[:-len(REFINED_TAG)] if stem.endswith(REFINED_TAG) else stem


def evaluate(before: Sequence[Path], after: Sequence[Path], reference: Optional[Sequence[Path]] = None,
             extractor=None, args: HandRefinerArgs = DEFAULTS, kid_subsets: int = 100, kid_subset_size: int = 1000,
             batch_size: int = 16) -> Evaluation:
    """The table for the given sets; `extractor` (a FIDInceptionV3 or any module taking (B,3,H,W) in [0,1] and
    giving (B,D) features, with an `input_size`) adds FID and KID."""
    from lib_handrefiner.mesh import get_mesh_model

    mesh_model = get_mesh_model(args.mesh_model)
    notes: List[str] = []
    scans = {"before": _scan_set(before, args, extractor, batch_size, mesh_model=mesh_model, notes=notes)}
    scans["after"] = _scan_set(after, args, extractor, batch_size, mesh_model=mesh_model, notes=notes,
                               targets=scans["before"])
    if reference:
        scans["reference"] = _scan_set(reference, args, extractor, batch_size, notes=notes)
    rows = {name: _row(name, scan) for name, scan in scans.items()}
    _add_mpjpe(rows["after"], scans["after"], notes)

    fid_against, subsets, subset_size = None, None, None
    if extractor is not None:
        fid_against = "reference" if reference else "before"
        compared = ["before", "after"] if reference else ["after"]
        subsets, subset_size = _add_fid_kid(rows, scans, fid_against, compared, kid_subsets, kid_subset_size, notes)
    elif reference:
        notes.append("FID/KID need --inception (the FID Inception-v3 weights)")
    return Evaluation(rows=list(rows.values()), fid_against=fid_against, kid_subsets=subsets,
                      kid_subset_size=subset_size, mesh_model=args.mesh_model, notes=notes,
                      images={name: scan.records for name, scan in scans.items()})


def _scan_set(paths: Sequence[Path], args: HandRefinerArgs, extractor, batch_size: int, notes: List[str],
              mesh_model=None, targets: Optional[_Scan] = None) -> _Scan:
    """Detects the hands of every image; fits meshes (before set) or measures MPJPE against `targets` (after
    set); extracts features. Unreadable images are skipped with a note."""
    from lib_handrefiner.adaptive import nearest_hand_error
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import ImageError, load_image

    scan = _Scan(records=[], targets={}, sizes={}, features=None)
    rows: List[np.ndarray] = []
    batch: List[np.ndarray] = []
    for path in paths:
        try:
            rgb = load_image(path)
        except ImageError as error:
            notes.append(f"skipped {path}: {error}")
            continue
        hands = detect_hands(rgb, max_hands=args.max_hands, detection_confidence=args.detection_confidence,
                             presence_confidence=args.presence_confidence)
        height, width = rgb.shape[:2]
        record = ImageRecord(file=path.name, width=width, height=height, hands=len(hands),
                             best_score=max((h.score for h in hands), default=0.0))
        key = pairing_key(path)
        if targets is None and mesh_model is not None:
            scan.targets[key] = [mesh_model.fit(h, rgb).joints[:, :2] for h in hands]
            scan.sizes[key] = (width, height)
        elif targets is not None and key in targets.targets:
            # Refinement keeps the size; scale anyway so a resized after image is still compared fairly.
            bw, bh = targets.sizes[key]
            scale = np.array([width / bw, height / bh])
            record.mpjpe_px = [nearest_hand_error(hands, rgb, joints * scale, mesh_model)
                               for joints in targets.targets[key]]
        scan.records.append(record)
        if extractor is not None:
            batch.append(rgb)
            if len(batch) == batch_size:
                rows.append(_features(extractor, batch))
                batch = []
    if extractor is not None and batch:
        rows.append(_features(extractor, batch))
    if rows:
        scan.features = np.concatenate(rows)
    return scan


def _features(extractor, images: List[np.ndarray]) -> np.ndarray:
    from lib_handrefiner.inception import extract_features

    return extract_features(extractor, images, batch_size=len(images))


def _row(name: str, scan: _Scan) -> SetRow:
    records = scan.records
    return SetRow(name=name, images=len(records), images_with_hands=sum(r.hands > 0 for r in records),
                  hands_found=sum(r.hands for r in records),
                  detection_confidence=float(np.mean([r.best_score for r in records])) if records else math.nan)


def _add_mpjpe(row: SetRow, scan: _Scan, notes: List[str]) -> None:
    errors = [e for r in scan.records for e in r.mpjpe_px]
    found = [e for e in errors if math.isfinite(e)]
    row.mpjpe_hands, row.hands_lost = len(found), len(errors) - len(found)
    row.mpjpe_px = float(np.mean(found)) if found else None
    if not errors:
        notes.append("MPJPE: no after image pairs with a before image that has hands (names must match: "
                     "<stem>.png ↔ <stem>.refined.png or the same name)")


def _add_fid_kid(rows: Dict[str, SetRow], scans: Dict[str, _Scan], against: str, compared: List[str],
                 kid_subsets: int, kid_subset_size: int, notes: List[str]):
    from lib_handrefiner.metrics import fid_from_features, kid_from_features

    base = scans[against].features
    smallest = min(len(scans[name].features) for name in [against, *compared])
    subset_size = min(kid_subset_size, smallest)
    if smallest < 2:
        notes.append(f"FID/KID need at least 2 images per set; the smallest set has {smallest}")
        return None, None
    if subset_size < kid_subset_size:
        notes.append(f"KID subset size lowered to {subset_size}, the smallest set's image count")
    dims = base.shape[1]
    if smallest <= dims:
        notes.append(f"FID from {smallest} images: with no more images than the {dims} feature dimensions the "
                     f"covariance is singular and FID is biased upwards; compare only equal set sizes")
    for name in compared:
        features = scans[name].features
        try:
            rows[name].fid = fid_from_features(features, base)
        except ValueError as error:  # e.g. sqrtm's imaginary part on far too few images: keep the other columns
            notes.append(f"FID {name} vs {against}: {error}")
        kid = kid_from_features(features, base, num_subsets=kid_subsets, subset_size=subset_size)
        rows[name].kid_mean, rows[name].kid_std = kid.mean, kid.std
    return kid_subsets, subset_size


def _fmt(value: Optional[float], digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(evaluation: Evaluation) -> str:
    """The table with only the columns the inputs allowed."""
    rows = evaluation.rows
    columns = [("Set", lambda r: r.name), ("Images", lambda r: str(r.images)),
               ("Hands found", lambda r: f"{r.hands_found} ({r.images_with_hands} images)"),
               ("Det. Conf. ↑", lambda r: _fmt(r.detection_confidence, 3))]
    if any(r.mpjpe_hands or r.hands_lost for r in rows):
        columns.append(("MPJPE (px) ↓", lambda r: _fmt(r.mpjpe_px, 2) if r.name == "after" else "—"))
        columns.append(("Hands lost", lambda r: str(r.hands_lost) if r.name == "after" else "—"))
    if evaluation.fid_against and any(r.fid is not None for r in rows):
        columns.append((f"FID vs {evaluation.fid_against} ↓", lambda r: _fmt(r.fid, 2)))
        columns.append((f"KID vs {evaluation.fid_against} ↓",
                        lambda r: "—" if r.kid_mean is None else f"{r.kid_mean:.4f} ± {r.kid_std:.4f}"))
    lines = ["| " + " | ".join(name for name, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    details = [f"Mesh model for MPJPE: {evaluation.mesh_model}."]
    if evaluation.kid_subset_size:
        details.append(f"KID: {evaluation.kid_subsets} subsets of {evaluation.kid_subset_size}.")
    return "\n".join(lines + ["", " ".join(details)] + [f"- {n}" for n in evaluation.notes]) + "\n"


def to_json(evaluation: Evaluation) -> dict:
    return strict_json.clean(asdict(evaluation))  # a lost hand's MPJPE (inf) is null
