"""Source samples → training samples: a square crop around the hands at the training resolution (cut and resized
exactly as the refiner cuts its crops: `pipeline.hand_crop_region` and `pipeline.crop_pixels`), the hand mask
and the depth hint in the project's convention, or a reason the sample is dropped.

The hint (`hint`):
- `dataset`: the dataset's own depth on each hand's segmentation pixels, normalised on each hand to
  255·(1 − 0.8·(d − dmin)/(dmax − dmin)) (near bright, 50 the farthest, truncated as `depth.hand_levels` does), 0
  elsewhere;
- `landmarks` / `graphormer`: MediaPipe on the image, that mesh model's mesh, its depth rendered in the crop's
  camera, as the refiner does at inference. A ControlNet trained on `landmarks` hints learns exactly the hints the
  MANO-free landmark mesh gives it.

The mask (`mask`): `segmentation` (the dataset's hand pixels) or `inference`
(what the refiner regenerates: each hand's padded keypoint box ∪ its depth pixels); `auto` takes segmentation with
the dataset's hint and the inference mask with a mesh hint.

A hand is left out of mask and hint when it is too small or its mask is broken (mostly hidden, in pieces, missing
its own keypoints, without depth); a sample none of whose hands is usable is dropped, and counted by reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from lib_handrefiner.depth import pixel_extent
from lib_handrefiner.masking import enclosing_box
from lib_handrefiner.safe_write import write_file
from lib_handrefiner.settings import HandRefinerArgs
from lib_handrefiner.train.sources import SourceHand, SourceSample

HINTS = ("dataset", "landmarks", "graphormer")
PREPARE_FILE = "prepare.json"
MASKS = ("auto", "segmentation", "inference")
KEYPOINT_TOLERANCE = 3  # px a hand's keypoints (or a detection's landmarks) may lie off its segmentation

DROP_REASONS = {
    "unreadable": "files missing or unreadable",
    "no_hand": "no hand in the segmentation",
    "too_small": "every hand smaller than --min-hand-size",
    "hidden": "hands mostly hidden or outside the image (under half their keypoints visible)",
    "keypoints_off_mask": "hand masks that miss their own keypoints (broken masks)",
    "in_pieces": "hand masks in pieces (an occluder splits them)",
    "no_depth": "no depth on the hand pixels",
    "no_detection": "no hand detected (a mesh hint needs MediaPipe to find one)",
    "detection_off_mask": "the detected hands are not the segmented ones",
    "mask_vanishes": "the mask is empty at latent size (1/8 of the resolution)",
}


@dataclass
class PrepareOptions:
    resolution: int = 512
    hint: str = "dataset"
    mask: str = "auto"
    min_hand_size: int = 32             # px, the longest side of a hand's pixels in the source image
    min_visible_keypoints: float = 0.5  # fraction of a hand's keypoints visible and inside the image
    min_keypoints_on_mask: float = 0.7  # fraction of the visible keypoints on the (3 px grown) hand mask
    min_largest_piece: float = 0.8      # fraction of a hand's pixels in its largest connected piece
    min_depth_coverage: float = 0.95    # fraction of a hand's pixels with a valid depth (dataset hints)
    mask_dilation: int = 0              # px, grows a segmentation mask
    args: HandRefinerArgs = field(default_factory=HandRefinerArgs)   # detection, mesh and mask box settings
    models_dir: Optional[Path] = None   # the mesh models folder (graphormer's files)

    def mask_kind(self, has_segmentation: bool) -> str:
        if self.mask != "auto":
            return self.mask
        return "segmentation" if self.hint == "dataset" and has_segmentation else "inference"


@dataclass
class PreparedSample:
    name: str
    rgb: np.ndarray       # R×R×3 uint8
    mask: np.ndarray      # R×R uint8 0/255
    hint: np.ndarray      # R×R uint8 depth levels


@dataclass
class Dropped:
    reason: str           # a key of DROP_REASONS


@dataclass
class PrepareReport:
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)   # reason → a few dropped source files
    uncaptioned: int = 0

    def drop(self, reason: str, source_file: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(source_file)

    def summary(self) -> str:
        total = self.written + sum(self.dropped.values())
        lines = [f"wrote {self.written} of {total} samples; dropped {sum(self.dropped.values())}"]
        lines += [f"  {n:6d}  {DROP_REASONS[r]} (e.g. {', '.join(self.examples[r][:3])})"
                  for r, n in self.dropped.most_common()]
        if self.uncaptioned:
            lines.append(f"  {self.uncaptioned} written sample(s) have no caption in --captions (trained with \"\")")
        return "\n".join(lines)


# ---- the hint from the dataset's depth --------------------------------------------------------------------------

def depth_levels(depth: np.ndarray, hands: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 H×W: each hand's pixels (H×W bool, in order; a later hand wins where they overlap) at its own depth
    levels (`depth.hand_levels`: 255·(1 − 0.8·(d − dmin)/(dmax − dmin)) over that hand alone, as the refiner
    renders each hand), 0 elsewhere and where the depth is missing."""
    from lib_handrefiner.depth import hand_levels

    levels = np.zeros(depth.shape, dtype=np.uint8)
    valid = np.isfinite(depth) & (depth > 0)
    for pixels in hands:
        on = pixels & valid
        levels[on] = hand_levels(depth[on])
    return levels


# ---- judging hands ----------------------------------------------------------------------------------------------

def _grown(pixels: np.ndarray) -> np.ndarray:
    """A hand's pixels grown by KEYPOINT_TOLERANCE px: where its keypoints (and a detection's landmarks) may lie."""
    from lib_handrefiner.masking import dilate

    return dilate(np.where(pixels, 255, 0).astype(np.uint8), KEYPOINT_TOLERANCE) > 0


def _largest_piece_fraction(pixels: np.ndarray) -> float:
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(pixels.astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0.0
    return float(stats[1:, cv2.CC_STAT_AREA].max()) / float(pixels.sum())


def _visible_keypoints(hand: SourceHand, width: int, height: int) -> np.ndarray:
    kp = hand.keypoints
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    return kp[(kp[:, 2] > 0) & inside, :2]


def hand_problem(hand: SourceHand, depth: Optional[np.ndarray], options: PrepareOptions,
                 need_depth: bool) -> Optional[str]:
    """Why a segmented hand cannot be trained on (a DROP_REASONS key), or None."""
    extent = pixel_extent(hand.pixels)
    if extent is None:
        return "no_hand"
    if max(extent[2] - extent[0], extent[3] - extent[1]) + 1 < options.min_hand_size:
        return "too_small"
    height, width = hand.pixels.shape
    if hand.keypoints is not None:
        visible = _visible_keypoints(hand, width, height)
        if len(visible) < options.min_visible_keypoints * len(hand.keypoints):
            return "hidden"
        grown = _grown(hand.pixels)
        u, v = visible[:, 0].astype(int), visible[:, 1].astype(int)
        if grown[v, u].mean() < options.min_keypoints_on_mask:
            return "keypoints_off_mask"
    if _largest_piece_fraction(hand.pixels) < options.min_largest_piece:
        return "in_pieces"
    if need_depth:
        valid = depth is not None and (np.isfinite(depth) & (depth > 0))[hand.pixels].mean() >= \
            options.min_depth_coverage
        if not valid:
            return "no_depth"
    return None


def _first_reason(reasons: Sequence[str]) -> str:
    """The reason to report for a sample with no usable hand: a present hand's problem before an absent one's."""
    present = [r for r in reasons if r != "no_hand"]
    return min(present, key=list(DROP_REASONS).index) if present else "no_hand"


# ---- one sample -------------------------------------------------------------------------------------------------

def _segmentation_mask(hands: Sequence[SourceHand], dilation: int) -> np.ndarray:
    from lib_handrefiner.masking import dilate

    union = np.any([h.pixels for h in hands], axis=0)
    return dilate(np.where(union, 255, 0).astype(np.uint8), dilation)


def _inference_mask_of_segments(hands: Sequence[SourceHand], args: HandRefinerArgs) -> np.ndarray:
    """The refiner's mask rule (`masking.hand_box`, the official one) applied to the dataset's hands: each hand's
    keypoint extrema (its pixels' where it has no keypoints) united with its pixels' extrema (standing for the
    mesh's depth pixels), padded per axis, united with its pixels."""
    from lib_handrefiner.masking import build_mask, hand_box

    height, width = hands[0].pixels.shape
    boxes = []
    for hand in hands:
        extent = pixel_extent(hand.pixels)
        points = (_visible_keypoints(hand, width, height) if hand.keypoints is not None
                  else np.array([extent[:2], extent[2:]], dtype=float))
        boxes.append(hand_box(points, width, height, args.mask_padding, args.mask_padding_ratio, extent))
    pixels = np.any([h.pixels for h in hands], axis=0)
    return build_mask(width, height, boxes, pixels, args.mask_dilation)


def _finish(sample: SourceSample, rgb_crop: np.ndarray, mask_crop: np.ndarray,
            hint_crop: np.ndarray) -> Union[PreparedSample, Dropped]:
    import torch

    from lib_handrefiner.sampler import latent_mask

    if not latent_mask(torch.from_numpy(mask_crop.astype(np.float32))[None, None]).any():
        return Dropped("mask_vanishes")
    return PreparedSample(sample.name, rgb_crop, np.where(mask_crop, 255, 0).astype(np.uint8), hint_crop)


def prepare_from_dataset(sample: SourceSample, options: PrepareOptions) -> Union[PreparedSample, Dropped]:
    """A sample hinted by the dataset's own depth (rhd, static-gestures)."""
    from lib_handrefiner.pipeline import crop_pixels, cut, hand_crop_region, resize

    height, width = sample.rgb.shape[:2]
    problems = [hand_problem(h, sample.depth, options, need_depth=True) for h in sample.hands]
    usable = [h for h, p in zip(sample.hands, problems) if p is None]
    if not usable:
        return Dropped(_first_reason([p for p in problems if p]))
    mask = (_segmentation_mask(usable, options.mask_dilation) if options.mask_kind(True) == "segmentation"
            else _inference_mask_of_segments(usable, options.args))
    x0, y0, x1, y1 = pixel_extent(mask > 0)
    region = hand_crop_region((x0, y0, x1 + 1, y1 + 1), width, height, options.resolution,
                              min_side=options.args.crop_min_side)
    rgb_crop, mask_crop = crop_pixels(sample.rgb, mask, region)
    levels = depth_levels(sample.depth, [h.pixels for h in usable])
    hint_crop = resize(cut(levels, region, "constant"), region.work_width, region.work_height, Image.NEAREST)
    return _finish(sample, rgb_crop, mask_crop, hint_crop)


def _on_segment(landmarks: np.ndarray, grown: np.ndarray) -> float:
    """Fraction of a detection's landmarks that fall on a segmented hand (its `_grown` pixels)."""
    height, width = grown.shape
    u = np.clip(landmarks[:, 0].astype(int), 0, width - 1)
    v = np.clip(landmarks[:, 1].astype(int), 0, height - 1)
    return float(grown[v, u].mean())


def prepare_from_mesh(sample: SourceSample, options: PrepareOptions, mesh_model) -> Union[PreparedSample, Dropped]:
    """A sample hinted by a mesh model's depth, found, fitted, rendered and masked as the refiner does."""
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import crop_pixels, hand_crop_region, render_hint, unit_mask

    height, width = sample.rgb.shape[:2]
    perception = perceive(sample.rgb, options.args, mesh_model=mesh_model)
    refinable = [h for h in perception.hands if h.refinable]
    if not refinable:
        return Dropped("no_detection")
    segments = [h for h in sample.hands if h.pixels.any()]
    grown = [_grown(s.pixels) for s in segments]
    if segments:  # keep the detections that are the dataset's hands
        refinable = [h for h in refinable if max(_on_segment(h.hand.landmarks, g) for g in grown) >= 0.5]
        if not refinable:
            return Dropped("detection_off_mask")
    boxes = [h.box for h in refinable]
    region = hand_crop_region(enclosing_box(boxes), width, height, options.resolution,
                              min_side=options.args.crop_min_side)
    if options.mask_kind(bool(segments)) == "segmentation":
        if not segments:
            raise ValueError("--mask segmentation: this source has no segmentation; use --mask inference")
        detected = [s for s, g in zip(segments, grown)
                    if max(_on_segment(h.hand.landmarks, g) for h in refinable) >= 0.5]
        mask = _segmentation_mask(detected, options.mask_dilation)
    else:
        mask = unit_mask(perception.mask, boxes, region, options.args)
    rgb_crop, mask_crop = crop_pixels(sample.rgb, mask, region)
    return _finish(sample, rgb_crop, mask_crop, render_hint([h.mesh for h in refinable], region))


# ---- a whole source ---------------------------------------------------------------------------------------------

def prepare_sample(sample: SourceSample, options: PrepareOptions, mesh_model=None) -> Union[PreparedSample, Dropped]:
    if options.hint == "dataset":
        if sample.depth is None and not sample.hands:
            raise ValueError("--hint dataset: this source has no depth or segmentation (a folder of photos); use "
                             "--hint landmarks or --hint graphormer")
        return prepare_from_dataset(sample, options)
    return prepare_from_mesh(sample, options, mesh_model)


def process(source, i: int, options: PrepareOptions, mesh_model) -> Tuple[str, Union[PreparedSample, Dropped]]:
    """(source file, result) of sample i; a sample whose files cannot be read is dropped as "unreadable" (a
    source in the wrong layout altogether raises SourceError)."""
    from lib_handrefiner.train.sources import SourceError

    try:
        sample = source.read(i)
    except SourceError:
        raise
    except (OSError, ValueError, KeyError) as e:
        return f"{source.names[i]} ({e})", Dropped("unreadable")
    return sample.source_file, prepare_sample(sample, options, mesh_model)


def hint_mesh_model(options: PrepareOptions):
    """The mesh model of a mesh hint (`--hint landmarks|graphormer`); None for the dataset's depth."""
    if options.hint == "dataset":
        return None
    from lib_handrefiner.mesh import get_mesh_model

    return get_mesh_model(options.hint, options.models_dir)


_worker: dict = {}


def _start_worker(opened_as: tuple, options: PrepareOptions) -> None:
    import torch

    from lib_handrefiner.train.sources import open_source

    torch.set_num_threads(1)  # one core per process
    _worker["source"] = open_source(*opened_as)
    _worker["mesh"] = hint_mesh_model(options)
    _worker["options"] = options


def _work(i: int) -> Tuple[str, Union[PreparedSample, Dropped]]:
    return process(_worker["source"], i, _worker["options"], _worker["mesh"])


def _results(source, options: PrepareOptions, mesh_model, count: int, workers: int):
    """Each sample's (source file, result), in order; with workers > 1 from that many processes (spawned, so
    each has its own MediaPipe graph), each reopening the source."""
    if workers <= 1:
        for i in range(count):
            yield process(source, i, options, mesh_model)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (source.opened_as, options)) as pool:
        yield from pool.imap(_work, range(count), chunksize=4)


def caption_lookup(entries) -> Dict[str, str]:
    """source file name (and its stem) → caption, from a captions JSONL's entries."""
    lookup: Dict[str, str] = {}
    for entry in entries:
        lookup.setdefault(Path(entry.name).stem, entry.caption)
        lookup[Path(entry.name).name] = entry.caption
    return lookup


def prepare(source, dst: Path, options: PrepareOptions, captions: Optional[Dict[str, str]] = None,
            limit: Optional[int] = None, progress: bool = True, append: bool = False,
            workers: int = 1) -> PrepareReport:
    """Writes the training folder `dst` from `source` (a sources.Source); returns what was written and dropped.
    `append` adds the samples to those `dst` already lists (several datasets in one folder, as the official
    training mixes RHD and Synthesis AI); DST/prepare.json records every run. `workers` > 1 prepares samples in
    that many processes (the same folder, faster)."""
    import json

    from tqdm import tqdm

    from lib_handrefiner.train.folder import CAPTIONS_FILE, FolderEntry, read_captions, write_captions, write_sample

    if options.hint not in HINTS:
        raise ValueError(f"--hint {options.hint!r}: one of {', '.join(HINTS)}")
    if options.mask not in MASKS:
        raise ValueError(f"--mask {options.mask!r}: one of {', '.join(MASKS)}")
    if options.resolution < 64 or options.resolution % 8:
        raise ValueError(f"--resolution {options.resolution}: a multiple of 8 of at least 64 (SD 1.5 trains at 512)")
    # Loaded here also when workers prepare the samples: a missing or wrong file is one error, before any starts.
    mesh_model = hint_mesh_model(options)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    entries: List[FolderEntry] = []
    runs: List[dict] = []
    if append and (dst / CAPTIONS_FILE).is_file():
        entries = read_captions(dst / CAPTIONS_FILE)
        if (dst / PREPARE_FILE).is_file():
            runs = json.loads((dst / PREPARE_FILE).read_text()).get("runs", [])
    kept = {e.name: i for i, e in enumerate(entries)}
    count = len(source) if limit is None else min(limit, len(source))
    results = _results(source, options, mesh_model, count, workers)
    for source_file, result in tqdm(results, total=count, unit="sample", disable=not progress, dynamic_ncols=True):
        if isinstance(result, Dropped):
            report.drop(result.reason, source_file)
            continue
        name = result.name + ".png"
        write_sample(dst, name, result.rgb, result.mask, result.hint)
        caption = ""
        if captions is not None:
            caption = captions.get(source_file, captions.get(Path(source_file).stem))
            report.uncaptioned += caption is None
            caption = caption or ""
        if name in kept:  # the same source sample again: its new version replaces the old
            entries[kept[name]] = FolderEntry(name, caption)
        else:
            kept[name] = len(entries)
            entries.append(FolderEntry(name, caption))
        report.written += 1
    write_captions(dst / CAPTIONS_FILE, entries)
    runs.append({"source": source.kind, "source_folder": str(source.root), "hint": options.hint,
                 "mask": options.mask_kind(source.kind != "images"), "resolution": options.resolution,
                 "written": report.written, "dropped": dict(report.dropped), "examples": report.examples})
    write_file(dst / PREPARE_FILE, json.dumps({"samples": len(entries), "runs": runs}, indent=1))
    return report
