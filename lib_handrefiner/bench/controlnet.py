"""`python -m lib_handrefiner.bench controlnet`: UNet forward time alone vs with the ControlNet injected.

Random weights with the real architectures (tiny by default, `--arch sd15` for SD 1.5 sizes); the time of one
UNet call, which is what every sampling step pays (CFG: one call with batch 2). The hint encoder runs once per hint
and is reported on its own line.
"""
from __future__ import annotations

import argparse
from typing import List

import torch

from lib_handrefiner.bench._timing import median_ms


def build(arch: str, device: torch.device, dtype: torch.dtype):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lib_handrefiner.controlnet import controlnet_from_unet
    from lib_handrefiner.sd_model import SD15_UNET, quiet_ldm
    from lib_handrefiner.tiny import TINY_UNET

    params = dict(SD15_UNET if arch == "sd15" else TINY_UNET)
    torch.manual_seed(0)
    with quiet_ldm():
        unet = UNetModel(**params)
    with torch.no_grad():  # a fresh UNet's output conv is zero; give the benchmark real arithmetic
        unet.out[-1].weight.normal_(0, 0.02)
    controlnet = controlnet_from_unet(unet.state_dict(), random_zero_convs=True, seed=1)
    return (unet.to(device, dtype).eval(), controlnet.to(device, dtype).eval(), params["context_dim"])


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench controlnet", description=__doc__)
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one CFG step)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: shared machines)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    ns = parser.parse_args(argv)

    from lib_handrefiner.control_injection import inject_control

    torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    dtype = torch.float16 if ns.fp16 else torch.float32
    unet, controlnet, context_dim = build(ns.arch, device, dtype)
    latent = ns.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ns.batch, unet.in_channels, latent, latent, generator=g).to(device, dtype)
    t = torch.full((ns.batch,), 500, device=device)
    context = torch.randn(ns.batch, 77, context_dim, generator=g).to(device, dtype)
    hint = torch.rand(1, 3, latent * 8, latent * 8, generator=g).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call() -> object:
        return unet(x, timesteps=t, context=context)

    with torch.no_grad():
        alone = median_ms(call, ns.repeats, ns.warmup, sync)
        with inject_control(unet, controlnet, hint, strength=1.0):
            controlled = median_ms(call, ns.repeats, ns.warmup, sync)
        with inject_control(unet, controlnet, hint, strength=0.0):
            skipped = median_ms(call, ns.repeats, ns.warmup, sync)
        encode = median_ms(lambda: controlnet.encode_hint(hint), ns.repeats, ns.warmup, sync)
    threads = f", {ns.threads} thread(s)" if device.type == "cpu" else ""
    print(f"controlnet: {ns.arch} UNet (in {unet.in_channels} ch) + ControlNet, {latent * 8}x{latent * 8} image "
          f"({latent}x{latent} latent), batch {ns.batch}, {device.type} {str(dtype).replace('torch.', '')}{threads}, "
          f"median of {ns.repeats}")
    print(f"  UNet alone:             {alone:9.2f} ms/call")
    print(f"  UNet + ControlNet:      {controlled:9.2f} ms/call  ({controlled / alone:.2f}x)")
    print(f"  UNet + ControlNet @ 0:  {skipped:9.2f} ms/call  ({skipped / alone:.2f}x, control skipped)")
    print(f"  hint encoding:          {encode:9.2f} ms, once per hint (cached across steps)")
    return 0
