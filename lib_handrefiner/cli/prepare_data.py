"""`python -m lib_handrefiner prepare-data rhd|static-gestures|images SRC DST [--hint dataset|landmarks|graphormer]`:
turn a hand dataset into a training folder (DST/image/, mask/, pose/, prompt.json).

Each sample becomes a crop around its hands at --resolution (cut as the refiner cuts its crops), with the hand
mask and the depth hint in the project's convention; samples whose masks are broken are dropped and counted
(DST/prepare.json lists the reasons). `--hint landmarks` renders the hint with the project's own MANO-free mesh
(MediaPipe → landmark mesh → depth) instead of the dataset's depth, so that the ControlNet learns exactly the hints
the refiner gives it with the landmark mesh. Captions come from `--captions FILE.jsonl` ({"jpg": source file name,
"txt": caption}
per line); without it they are empty.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib_handrefiner.train.prepare import HINTS, MASKS, PrepareOptions
from lib_handrefiner.train.sources import SOURCES

DEFAULTS = PrepareOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("source", choices=SOURCES, help="the dataset's layout")
    parser.add_argument("src", type=Path, metavar="SRC", help="the dataset folder (RHD: RHD_published_v2)")
    parser.add_argument("dst", type=Path, metavar="DST", help="the training folder to write")
    parser.add_argument("--hint", choices=HINTS, default=d.hint,
                        help="depth hint: the dataset's depth (default), or a mesh model's rendered depth "
                             "(landmarks: the project's weight-free mesh; graphormer: Mesh Graphormer, needs its "
                             "files)")
    parser.add_argument("--mask", choices=MASKS, default=d.mask,
                        help="hand mask: the segmentation, or the refiner's inference mask (padded keypoint box ∪ "
                             "depth pixels); auto: segmentation with --hint dataset, else inference")
    parser.add_argument("--resolution", type=int, default=d.resolution, help=f"crop size in px (default "
                                                                              f"{d.resolution}, the paper's)")
    parser.add_argument("--captions", type=Path, metavar="JSONL",
                        help="captions by source file name: {\"jpg\": \"00012.png\", \"txt\": \"…\"} per line")
    parser.add_argument("--split", choices=("training", "evaluation"), default="training",
                        help="rhd: which split of RHD_published_v2 (default training)")
    parser.add_argument("--hand-segments", metavar="NAMES",
                        help="static-gestures: comma-separated segment names of the hands (default: the segments "
                             "whose names contain hand, finger, thumb or palm)")
    parser.add_argument("--min-hand-size", type=int, default=d.min_hand_size,
                        help=f"hands smaller than this (px, source image) are not trained on (default "
                             f"{d.min_hand_size})")
    parser.add_argument("--mask-dilation", type=int, default=d.mask_dilation,
                        help="grow a segmentation mask by this many px (default 0)")
    parser.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="folder of the mesh models' files (--hint graphormer)")
    parser.add_argument("--limit", type=int, help="prepare only the first N samples (a quick look)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes preparing samples (default 1; up to the number of CPU cores)")
    parser.add_argument("--append", action="store_true",
                        help="add these samples to the training folder DST already holds (several datasets in one "
                             "folder, as the official training mixes RHD and Synthesis AI)")
    parser.add_argument("--force", action="store_true",
                        help="write into a DST that already holds a training folder (its prompt.json is rewritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(ns: argparse.Namespace) -> int:
    from lib_handrefiner.mesh import MeshModelError
    from lib_handrefiner.train.folder import CAPTIONS_FILE, DatasetFolderError, read_captions
    from lib_handrefiner.train.prepare import caption_lookup, prepare
    from lib_handrefiner.train.sources import SourceError, open_source

    if (ns.dst / CAPTIONS_FILE).exists() and not (ns.force or ns.append):
        print(f"error: {ns.dst} already holds a training folder ({CAPTIONS_FILE}); pass --append to add these "
              "samples to it, --force to replace its list, or choose another DST", file=sys.stderr)
        return 2
    if ns.dst.resolve() == ns.src.resolve():
        print(f"error: DST {ns.dst} is the source folder itself; write the training folder elsewhere", file=sys.stderr)
        return 2
    segments = [s.strip() for s in ns.hand_segments.split(",") if s.strip()] if ns.hand_segments else None
    options = PrepareOptions(resolution=ns.resolution, hint=ns.hint, mask=ns.mask, min_hand_size=ns.min_hand_size,
                             mask_dilation=ns.mask_dilation, models_dir=ns.models_dir)
    try:
        captions = caption_lookup(read_captions(ns.captions)) if ns.captions else None
        source = open_source(ns.source, ns.src, ns.split, segments)
        report = prepare(source, ns.dst, options, captions, ns.limit, progress=not ns.no_progress, append=ns.append,
                         workers=ns.workers)
    except (SourceError, DatasetFolderError, MeshModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {ns.dst}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.written else 1
