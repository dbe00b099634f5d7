"""`python -m lib_handrefiner.bench perception [--repeats N] [IMAGE...]`: per-stage median milliseconds of the
perception stage (load, detect, mesh, depth, mask) over the shipped example images, by image size.

Each image is run once untimed first (MediaPipe builds its graph, Open3D loads), then `--repeats` times. The
target is under 100 ms per 512×512 image for all stages together.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from time import perf_counter
from typing import Dict, List, Tuple

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STAGES = ("load", "convert", "detect", "mesh", "depth", "mask", "total")
TARGET_MS_512 = 100.0


def _time_image(path: Path, repeats: int) -> Tuple[Tuple[int, int], List[Dict[str, float]]]:
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.perception import perceive

    perceive(load_image(path))  # warm-up
    runs = []
    for _ in range(repeats):
        start = perf_counter()
        rgb = load_image(path)
        load_ms = (perf_counter() - start) * 1000.0
        timings = dict(perceive(rgb).timings_ms)
        timings["total"] += load_ms
        runs.append({"load": load_ms, **timings})
    return (rgb.shape[1], rgb.shape[0]), runs


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench perception", description=__doc__)
    parser.add_argument("images", nargs="*", type=Path, help="images (default: the shipped examples/*.jpg)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per image (default 5)")
    ns = parser.parse_args(argv)
    paths = ns.images or sorted(EXAMPLES.glob("*.jpg"))
    by_size: Dict[Tuple[int, int], List[Dict[str, float]]] = defaultdict(list)
    for path in paths:
        size, runs = _time_image(path, ns.repeats)
        by_size[size].extend(runs)
    header = f"{'image size':>12} {'runs':>5} " + " ".join(f"{s:>8}" for s in STAGES)
    print("perception stage, median ms per image")
    print(header)
    for (w, h), runs in sorted(by_size.items()):
        medians = [statistics.median(r[s] for r in runs) for s in STAGES]
        print(f"{f'{w}x{h}':>12} {len(runs):>5} " + " ".join(f"{m:8.1f}" for m in medians))
    all_runs = [r for runs in by_size.values() for r in runs]
    print(f"{'all':>12} {len(all_runs):>5} " + " ".join(f"{statistics.median(r[s] for r in all_runs):8.1f}"
                                                      for s in STAGES))
    runs_512 = by_size.get((512, 512))
    if runs_512:
        total = statistics.median(r["total"] for r in runs_512)
        verdict = "meets" if total < TARGET_MS_512 else "MISSES"
        print(f"512x512 total {total:.1f} ms {verdict} the {TARGET_MS_512:.0f} ms target")
    return 0
