"""`python -m lib_handrefiner.bench adaptive`: the cost of adaptive strength relative to a fixed strength, on the
tiny models (target: median ≤ 2.0×; the paper pays 3.5×).

1. Sampling time per call by batch size (several strengths per call, same noise): the price of batching.
2. The search's cost by where it stops (the first accepted strength, or none: the whole schedule) for each batch
   size, as the sum of the measured call times of the batches that search would draw, plus its measured
   re-detection time; the median over the stopping positions.
3. End to end: refine_image fixed vs adaptive on the example images (the perception shared, so the ratio is the
   refinement's), with the real pose errors. The tiny models draw noise, in which MediaPipe finds no hand, so
   there every search runs the whole schedule: the worst case.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from lib_handrefiner.bench._timing import median_ms

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGET = 2.0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench adaptive",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (default 10)")
    parser.add_argument("--crop-resolution", type=int, default=64, help="working resolution (default 64)")
    parser.add_argument("--batch-sizes", default="1,2,3,4,7", help="batch sizes to compare (default 1,2,3,4,7)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--images", nargs="*", default=["malformed_1.jpg", "freihand_sample1.jpg",
                                                        "internet_fig1.jpg"],
                        help="example images for the end-to-end part (names in examples/ or paths)")
    parser.add_argument("--pipeline-batches", default="2,7",
                        help="adaptive_batch values for the end-to-end part (default 2,7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", help="folder for the tiny models (default: a temporary one)")
    ns = parser.parse_args(argv)
    torch.set_num_threads(ns.threads)

    from lib_handrefiner.settings import HandRefinerArgs

    args = HandRefinerArgs(steps=ns.steps, crop_resolution=ns.crop_resolution, cfg_scale=5.0)
    schedule = [args.adaptive_reference, *args.adaptive_strengths]
    batch_sizes = sorted({min(int(b), len(schedule)) for b in ns.batch_sizes.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        sd, controlnet = _load(Path(ns.models or tmp))
        print(f"adaptive strength on the tiny models: crop {ns.crop_resolution} px, {ns.steps} steps, "
              f"{ns.threads} thread(s), {torch.get_num_threads()} in use; schedule {schedule}")
        calls = _call_times(sd, controlnet, ns.crop_resolution, ns.steps, batch_sizes, ns.repeats)
        base = calls[1] if 1 in calls else calls[min(calls)]
        print("\n1. sampling time per call (all strengths from the same noise)")
        for b, seconds in calls.items():
            print(f"   batch {b}: {seconds:.3f} s = {seconds / base:.2f}x one sample")
        detect = _detection_time(ns.repeats)
        _by_stopping_position(calls, base, detect, schedule, batch_sizes)
        pipeline_batches = [int(b) for b in ns.pipeline_batches.split(",")]
        ratios = {b: _end_to_end(sd, controlnet, args, ns.images, ns.repeats, b) for b in pipeline_batches}
    print()
    for b, values in ratios.items():
        if values:
            median = statistics.median(values)
            print(f"end-to-end median adaptive / fixed, batch {b}: {median:.2f}x (target <= {TARGET:.1f}x: "
                  f"{'met' if median <= TARGET else 'NOT met'}; the tiny models' worst case, see 3.)")
    return 0


def _load(folder: Path):
    from lib_handrefiner.controlnet import load_controlnet
    from lib_handrefiner.sd_model import load_sd_checkpoint
    from lib_handrefiner.tiny import ensure_tiny_models

    paths = ensure_tiny_models(folder)
    return load_sd_checkpoint(paths.checkpoint), load_controlnet(paths.controlnet)




def _call_times(sd, controlnet, resolution: int, steps: int, batch_sizes: Sequence[int],
                repeats: int) -> Dict[int, float]:
    from lib_handrefiner.sampler import InpaintRequest, sample_inpaint

    image = torch.zeros(1, 3, resolution, resolution)
    mask = torch.zeros(1, 1, resolution, resolution)
    mask[..., resolution // 4:-resolution // 4, resolution // 4:-resolution // 4] = 1.0
    request = InpaintRequest(image=image, mask=mask, hint=torch.rand(1, 3, resolution, resolution),
                             prompt="a hand", negative_prompt="fake 3D rendered image", steps=steps, cfg_scale=5.0)
    sample_inpaint(sd, controlnet, request, [0.5], seed=0)  # warm-up
    return {b: median_ms(lambda: sample_inpaint(sd, controlnet, request, [0.5 + 0.05 * i for i in range(b)],
                                                seed=0), repeats, warmup=0) / 1000.0
            for b in batch_sizes}


def _detection_time(repeats: int) -> float:
    """One pose error (MediaPipe on a crop + mesh fit): what the search pays per sample it judges."""
    from lib_handrefiner.adaptive import pose_error
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image

    rgb = load_image(EXAMPLES / "freihand_sample1.jpg")
    target = detect_hands(rgb)[0].landmarks[:, :2]
    pose_error(rgb, target, "landmarks")  # warm-up: MediaPipe builds its graph on the first call
    return median_ms(lambda: pose_error(rgb, target, "landmarks"), repeats, warmup=0) / 1000.0


def _by_stopping_position(calls: Dict[int, float], base: float, detect: float, schedule: Sequence[float],
                          batch_sizes: Sequence[int]) -> None:
    """Replays search_strength with scripted errors that stop it at each position, pricing every call it makes
    at the measured call time (plus the measured pose-error time per judged sample), in units of one fixed run
    (one sample + no judging)."""
    from lib_handrefiner.adaptive import search_strength

    print(f"\n2. search cost by where it stops, x one fixed-strength sample ({detect * 1000:.0f} ms per pose "
          f"error included)")
    print("   stops at   | " + " | ".join(f"batch {b}" for b in batch_sizes))
    outcomes = [(f"{s:g}", i) for i, s in enumerate(schedule[1:], start=1)] + [("none", None)]
    costs: Dict[int, List[float]] = {b: [] for b in batch_sizes}
    for label, accept_at in outcomes:
        row = []
        for b in batch_sizes:
            spent = [0.0]

            def sample(strengths, spent=spent):
                spent[0] += calls.get(len(strengths)) or _interpolate(calls, len(strengths))
                return list(strengths)

            def error(strength, accept_at=accept_at):
                spent[0] += detect
                position = schedule.index(strength)
                return 0.0 if position == accept_at else (10.0 if position == 0 else 50.0)

            result = search_strength(sample, error, reference=schedule[0], strengths=schedule[1:], batch_size=b)
            assert result.accepted == (accept_at is not None)
            costs[b].append(spent[0] / base)
            row.append(f"{spent[0] / base:7.2f}")
        print(f"   {label:>10} | " + " | ".join(row))
    print("   median     | " + " | ".join(f"{statistics.median(costs[b]):7.2f}" for b in batch_sizes)
          + "   (each stopping position counted once)")


def _interpolate(calls: Dict[int, float], size: int) -> float:
    """Call time of an unmeasured batch size (a short last batch): linear between the nearest measured ones."""
    sizes = sorted(calls)
    return float(np.interp(size, sizes, [calls[s] for s in sizes]))


def _end_to_end(sd, controlnet, args, images: Sequence[str], repeats: int, batch: int) -> List[float]:
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import refine_image

    print(f"\n3. end to end, refine_image with real pose errors (perception shared), {batch} strengths per call")
    args = args.copy(update={"adaptive_batch": batch})
    return _end_to_end_ratios(sd, controlnet, args, images, repeats, refine_image, perceive, load_image)


def _end_to_end_ratios(sd, controlnet, args, images, repeats, refine_image, perceive, load_image) -> List[float]:
    ratios = []
    for name in images:
        path = Path(name) if Path(name).is_file() else EXAMPLES / name
        rgb = load_image(path)
        perception = perceive(rgb, args)
        if not any(h.refinable for h in perception.hands):
            print(f"   {path.name}: no refinable hand, skipped")
            continue
        fixed = median_ms(lambda: refine_image(rgb, sd, controlnet, args, seed=0, perception=perception),
                          repeats, warmup=0) / 1000.0
        adaptive_args = args.copy(update={"mode": "adaptive"})
        last = {}

        def adaptive() -> None:
            last["result"] = refine_image(rgb, sd, controlnet, adaptive_args, seed=0, perception=perception)

        seconds = median_ms(adaptive, repeats, warmup=0) / 1000.0
        tried = last["result"].hands[0].tried
        kept = last["result"].hands[0].strength
        ratios.append(seconds / fixed)
        described = ", ".join(f"{s:g}:{'no hand' if not np.isfinite(e) else f'{e:.1f}px'}" for s, e in tried)
        print(f"   {path.name}: fixed {fixed:.2f} s, adaptive {seconds:.2f} s = {seconds / fixed:.2f}x; "
              f"kept {kept:g}; tried {described}")
    return ratios
