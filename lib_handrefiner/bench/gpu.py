"""`python -m lib_handrefiner.bench gpu`: what a refinement costs with the real networks.

On CUDA: the SD 1.5 inpainting UNet, VAE and CLIP text encoder and the HandRefiner ControlNet at full size, in
the layouts of the released files (`bench train --arch sd15` builds the same), with random weights (none can be
downloaded), in fp16 (the VAE in fp32, as the refiner runs it). One 512² image with one hand
(examples/malformed_1.jpg, refined whole at scale 1 as the official code does):

1. fixed strength at 50 and at 30 steps (ldm counts 31): ms per step and ms per hand (the whole refine of the hand,
   perception excluded: it is done once before);
2. adaptive mode with all 7 strengths in one batch (`adaptive_batch` 7) / fixed mode, at 50 steps: random weights
   paint no hand, so no strength passes and all are sampled, the worst case;
3. peak GPU memory of each;
4. the fp16 vs fp32 drift of one refinement (same seed): |Δ| of the refined pixels inside the mask.

Sized to run in under 5 minutes on one GPU (model building included). Without CUDA it runs measurements 1–3 on
the project's tiny models (the same architectures, a fraction of the width) at a 128² crop on the CPU in fp32, and
says so: those numbers show the harness works, not what a GPU does. (4 needs CUDA: ldm's GroupNorm32 normalises in
fp32 against half-precision weights, which the CPU's kernel refuses.)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lib_handrefiner.bench._timing import peak_memory_mib

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "malformed_1.jpg"


def build(arch: str, device: torch.device, dtype: torch.dtype):
    """The SD inpainting model and a ControlNet from its UNet (random zero convs, so control acts), at `dtype`."""
    from lib_handrefiner.bench.train import build as build_for_training
    from lib_handrefiner.sd_model import use_fast_attention

    sd, controlnet = build_for_training(arch, device, dtype)
    use_fast_attention(controlnet)
    return sd, controlnet.to(dtype=dtype).eval().requires_grad_(False)


def best_of(repeats: int, run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(fastest wall ms, its result) of `repeats` runs, after resetting the peak-memory counter."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) * 1000.0)
    return best, result


def main(argv: list[str]) -> int:
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import refine_image
    from lib_handrefiner.sampler import ddim_step_count
    from lib_handrefiner.sd_model import place
    from lib_handrefiner.settings import HandRefinerArgs

    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default="50,30", help="step counts of the fixed-strength runs; the first is also "
                                                         "the adaptive run's and the drift's (default 50,30)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the tiny CPU run (default 1: shared "
                                                               "machines)")
    ns = parser.parse_args(argv)
    device = torch.device(ns.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        name = torch.cuda.get_device_name(device)
        arch, resolution, dtype = "sd15", 512, torch.float16
        print(f"bench gpu: {name}, full-size SD 1.5 inpainting UNet/VAE/CLIP + HandRefiner ControlNet, random "
              "weights in the released layouts, fp16 (VAE fp32)")
    else:
        torch.set_num_threads(ns.threads)
        arch, resolution, dtype = "tiny", 128, torch.float32
        print(f"bench gpu: NO GPU ({ns.device}): the tiny models on the CPU ({torch.get_num_threads()} threads) at a "
              f"{resolution}² crop, fp32. These are not GPU numbers (not measured: no GPU); run it on a CUDA machine "
              "for those.")

    step_counts = [int(k) for k in ns.steps.split(",")]
    image = load_image(EXAMPLE)
    fixed = HandRefinerArgs(crop_resolution=resolution, seed=7, steps=step_counts[0])
    perception = perceive(image, fixed)
    started = time.perf_counter()
    sd, controlnet = build(arch, device, torch.float32)
    print(f"  models built in {time.perf_counter() - started:.0f} s; image {image.shape[1]}x{image.shape[0]}, "
          f"{sum(h.refinable for h in perception.hands)} hand")

    def refine(args: HandRefinerArgs):
        result = refine_image(image, sd, controlnet, args, seed=7, perception=perception)
        assert result.hands, result.message
        return result

    with torch.no_grad():
        reference = refine(fixed) if on_gpu else None  # fp32, for the drift below
        sd, controlnet = place(sd, device, dtype), controlnet.to(dtype=dtype)
        refine(fixed.copy(update={"steps": 2}))  # warm-up: kernels, allocator, MediaPipe
        results = {}
        for steps in step_counts:
            ms, result = best_of(ns.repeats, lambda: refine(fixed.copy(update={"steps": steps})), device)
            count = ddim_step_count(steps)
            sample_ms = result.timings_ms["sample"]
            results[steps] = ms
            print(f"  fixed, {steps} steps ({count} as ldm counts them): {sample_ms / count:.1f} ms/step, "
                  f"{ms:.0f} ms per hand, peak memory {peak_memory_mib(device):.0f} MiB")
        adaptive = fixed.copy(update={"mode": "adaptive", "adaptive_batch": 7})
        ms, result = best_of(ns.repeats, lambda: refine(adaptive), device)
        tried = len(result.hands[0].tried)
        print(f"  adaptive, batch 7, {fixed.steps} steps: {ms:.0f} ms per hand ({tried} strengths sampled), "
              f"{ms / results[fixed.steps]:.2f}x fixed, peak memory {peak_memory_mib(device):.0f} MiB")
        if reference is None:
            print("  fp16 vs fp32 drift: not measured (needs CUDA)")
            return 0
        half = refine(fixed)
    inside = perception.mask > 0
    drift = np.abs(half.image.astype(np.int16) - reference.image.astype(np.int16))[inside]
    print(f"  fp16 vs fp32, one refinement ({fixed.steps} steps, seed 7): |Δ| inside the mask max {drift.max()}, mean "
          f"{drift.mean():.2f} grey levels; {100.0 * (drift > 8).mean():.1f} % of the mask's pixels differ by more "
          "than 8")
    return 0
