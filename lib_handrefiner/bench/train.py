"""`python -m lib_handrefiner.bench train`: training speed (steps/s, samples/s) and peak memory of the ControlNet
training step, with and without gradient checkpointing.

Random weights with the real architectures: `--arch tiny` (the project's tiny models, default, CPU) or
`--arch sd15` (the SD 1.5 inpainting UNet, VAE and CLIP text encoder and an SD 1.5 ControlNet at full size: a GPU
job; defaults batch 4 × 4 accumulation at 512², bf16). One step is what `train` runs per optimizer step: the
frozen VAE and text encoder, the UNet with the ControlNet, the masked loss, backward over every micro-batch and
the AdamW update (`loop.train_step`); data loading is not included. Each gradient-checkpointing setting runs in
its own process, so that each peak memory is its own (CUDA: peak allocated; CPU: the process's peak RSS, models
included).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import List

import torch

from lib_handrefiner.bench._timing import median_ms, peak_memory_mib

ARCH_DEFAULTS = {"tiny": dict(resolution=64, precision="fp32"), "sd15": dict(resolution=512, precision="bf16")}


def build(arch: str, device: torch.device, dtype: torch.dtype):
    """The frozen SD model and a ControlNet initialised from its UNet (random zero convs, so all of it acts)."""
    from lib_handrefiner.controlnet import controlnet_from_unet
    from lib_handrefiner.sd_model import (
        CLIP_VIT_L14_TEXT,
        SD15_UNET,
        SD15_VAE,
        SDConfig,
        build_model,
        place,
        use_fast_attention,
    )
    from lib_handrefiner.tiny import make_non_degenerate, tiny_config

    config = tiny_config() if arch == "tiny" else SDConfig(unet=dict(SD15_UNET), vae=dict(SD15_VAE), embed_dim=4,
                                                           text=dict(CLIP_VIT_L14_TEXT), source="sd15")
    torch.manual_seed(0)
    sd = build_model(config)
    make_non_degenerate(sd.unet, torch.Generator().manual_seed(1))  # a fresh UNet's output conv is zero
    use_fast_attention(sd.unet)
    controlnet = controlnet_from_unet(sd.unet.state_dict(), random_zero_convs=True, seed=2)
    return place(sd, device, dtype), controlnet.to(device)


def synthetic_batches(count: int, batch_size: int, resolution: int, latent_channels: int, seed: int = 0):
    """(TrainBatch, SampleNoise) pairs of random images with a square hand mask and a depth ramp as the hint."""
    from lib_handrefiner.train.objective import TrainBatch, draw_noise

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch_size, 1, resolution, resolution)
    lo, hi = resolution // 4, 3 * resolution // 4
    mask[..., lo:hi, lo:hi] = 1.0
    hint = mask * torch.linspace(1.0, 0.2, resolution).view(1, 1, 1, -1)
    out = []
    for i in range(count):
        keys = list(range(i * batch_size, (i + 1) * batch_size))
        batch = TrainBatch(torch.rand(batch_size, 3, resolution, resolution, generator=g) * 2 - 1, mask,
                           hint.expand(-1, 3, -1, -1).contiguous(), ["a photo of a hand"] * batch_size, keys)
        out.append((batch, draw_noise(seed, keys, (latent_channels, resolution // 8, resolution // 8), 1000)))
    return out


def measure(ns: argparse.Namespace) -> int:
    from lib_handrefiner.train.loop import (
        ControlNetObjective,
        enable_gradient_checkpointing,
        freeze,
        resolve_precision,
        train_step,
    )

    torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    dtype = resolve_precision(ns.precision, device)
    sd, controlnet = build(ns.arch, device, dtype)
    freeze(sd)
    controlnet.train().requires_grad_(True)
    if ns.checkpointing == "on":
        enable_gradient_checkpointing(sd, controlnet)
    objective = ControlNetObjective(sd, controlnet, masked=True)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    micro = synthetic_batches(ns.grad_accum, ns.batch, ns.resolution, sd.unet.out_channels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    ms = median_ms(lambda: train_step(objective, micro, optimizer, scaler, autocast, False), ns.steps, ns.warmup,
                   sync)
    wall = time.perf_counter() - started
    samples = ns.batch * ns.grad_accum
    print(f"  gradient checkpointing {ns.checkpointing:3s}: {1000.0 / ms:7.3f} steps/s  ({samples * 1000.0 / ms:8.2f} "
          f"samples/s, {ms / 1000.0:7.2f} s/step), peak memory {peak_memory_mib(device):9.0f} MiB; "
          f"2,307 steps ≈ {2307 * ms / 3.6e6:.1f} h  [{ns.warmup + ns.steps} steps in {wall:.0f} s]")
    return 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench train", description=__doc__)
    parser.add_argument("--arch", choices=sorted(ARCH_DEFAULTS), default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="micro-batch size (default 4, the official's)")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per step (default 4: 16 samples)")
    parser.add_argument("--resolution", type=int, help="px (default: 64 tiny, 512 sd15)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: fp32 tiny, bf16 sd15")
    parser.add_argument("--checkpointing", choices=("both", "off", "on"), default="both",
                        help="gradient checkpointing: off, on, or both (each in its own process)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: shared machines)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ns = parser.parse_args(argv)
    for key, value in ARCH_DEFAULTS[ns.arch].items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    if ns.arch == "sd15" and not ns.device.startswith("cuda"):
        print(f"train: --arch sd15 is the full-size benchmark for a CUDA GPU; no GPU here ({ns.device}): not "
              "measured", file=sys.stderr)
        return 2
    if ns.checkpointing != "both":
        return measure(ns)
    threads = f", {ns.threads} thread(s)" if not ns.device.startswith("cuda") else ""
    print(f"train: {ns.arch} SD inpainting UNet + VAE + text encoder (frozen) + ControlNet (trained), "
          f"{ns.resolution}² px, batch {ns.batch} × {ns.grad_accum} accumulation = {ns.batch * ns.grad_accum} samples "
          f"per step, {ns.device} {ns.precision}{threads}, median of {ns.steps} steps after {ns.warmup} warm-up")
    settings = [f"--{name.replace('_', '-')}={getattr(ns, name)}" for name in
                ("arch", "batch", "grad_accum", "resolution", "precision", "steps", "warmup", "threads", "device")]
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-m", "lib_handrefiner.bench", "train", *settings,
                               f"--checkpointing={mode}"])
        if done.returncode:
            return done.returncode
    return 0
