"""`python -m lib_handrefiner.bench webui [--repeats N]`: what the WebUI integration adds around the pipeline.

Median milliseconds, tiny models, the shipped malformed hand at 2 steps / 64 px crop: `pipeline.refine_image` on
the plain SD model (perception included), the same through `webui.WebUIRefiner.process_image` on the WebUI-shaped
model (the adapter,
progress, model moves, memory release; the difference is the glue's cost), the script-args parsing done per image,
and install.py's check when everything is installed. Needs the repository's tests/webui_stub (the stand-in for the
WebUI's objects).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import List

from lib_handrefiner.bench._timing import median_ms

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tests" / "webui_stub"




def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench webui", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args(argv)
    if not STUB.is_dir():
        print(f"needs {STUB} (the WebUI stand-in of the repository's tests)", file=sys.stderr)
        return 2

    import contextlib

    import torch
    from PIL import Image

    from lib_handrefiner import webui
    from lib_handrefiner.controlnet import load_controlnet
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.pipeline import refine_image
    from lib_handrefiner.sd_model import load_sd_checkpoint
    from lib_handrefiner.settings import HandRefinerArgs, field_names
    from lib_handrefiner.tiny import ensure_tiny_models

    sys.path.insert(0, str(STUB))
    from latent_diffusion import TinyLatentDiffusion
    from modules import extra_networks, prompt_parser, shared
    from modules.shared_state import State

    torch.set_num_threads(1)
    models = Path(tempfile.mkdtemp(prefix="handrefiner-bench-")) / "models"
    tiny = ensure_tiny_models(models / "tiny")
    (models / "ControlNet").mkdir()
    (models / "ControlNet" / f"{HandRefinerArgs().controlnet}.safetensors").symlink_to(tiny.controlnet)
    sd = load_sd_checkpoint(tiny.checkpoint)
    controlnet = load_controlnet(tiny.controlnet)
    ldm = TinyLatentDiffusion(sd)
    state = State()
    env = webui.WebUIEnv(sd_model=lambda: ldm, device="cpu", dtype=torch.float32,
                         autocast=contextlib.nullcontext, torch_gc=lambda: None, folders=webui.model_folders(models),
                         state=state, opts=shared.opts, prompt_parser=prompt_parser, extra_networks=extra_networks)
    refiner = webui.WebUIRefiner(lambda: env)
    image = load_image(ROOT / "examples" / "malformed_1.jpg")
    pil = Image.fromarray(image)
    args = HandRefinerArgs(enabled=True, steps=2, crop_resolution=64, cfg_scale=5.0)
    job = webui.ImageJob(pil, "a man making a hand gesture", "blurry", 1234)
    values = [webui.to_widget(n, getattr(args, n)) for n in field_names()]

    spec = importlib.util.spec_from_file_location("handrefiner_install", ROOT / "install.py")
    installer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = installer
    spec.loader.exec_module(installer)

    class AllInstalled:
        @staticmethod
        def is_installed(name: str) -> bool:
            return installer.installed_version(name) is not None

    direct = median_ms(lambda: refine_image(image, sd, controlnet, args, job.prompt, job.negative_prompt,
                                             seed=1234), ns.repeats)
    rows = [
        ("perception (MediaPipe + mesh + depth), 512x512", median_ms(lambda: refiner.perceive(image, args),
                                                                      ns.repeats)),
        ("refine_image, plain SD model (incl. perception)", direct),
        ("process_image through the WebUI adapter (incl. perception)",
         median_ms(lambda: refiner.process_image(job, args), ns.repeats)),
        ("script args -> HandRefinerArgs (per image)",
         median_ms(lambda: webui.args_from_script_args(values), ns.repeats * 20)),
        ("install.py check, everything installed", median_ms(lambda: installer.install(AllInstalled),
                                                              ns.repeats * 20)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  median ms")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.2f}")
    return 0
