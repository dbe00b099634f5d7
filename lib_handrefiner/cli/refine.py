"""`python -m lib_handrefiner refine IMAGE... --checkpoint CKPT --controlnet CN`: refine the hands of images.

Writes `<stem>.refined.png` (the generation parameters in its PNG text under `parameters`, with a line starting
`HandRefiner:`) and `<stem>.refine.json` (hands, boxes, crops, strengths tried and kept, seed, timings; strict
JSON) for each image. An image without
refinable hands is written unchanged and its JSON says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib_handrefiner import strict_json
from lib_handrefiner.cli.common import (
    add_mesh_arguments,
    add_negative_argument,
    load_mesh_model,
    make_output_folder,
    sampling_device,
    settings_error,
)
from lib_handrefiner.safe_write import OutputFolder, png
from lib_handrefiner.settings import HandRefinerArgs, parse_setting

DEFAULTS = HandRefinerArgs()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="images to refine")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="single-file SD 1.x inpainting checkpoint (.safetensors or .ckpt; a .yaml of the same "
                             "name beside it is used as its config)")
    parser.add_argument("--controlnet", required=True, metavar="CN",
                        help="HandRefiner depth ControlNet (e.g. control_sd15_inpaint_depth_hand_fp16.safetensors)")
    parser.add_argument("--prompt", default="", metavar="P", help="prompt for the hands")
    add_negative_argument(parser)
    strength = parser.add_mutually_exclusive_group()
    strength.add_argument("--strength", type=float, default=DEFAULTS.strength, metavar="S",
                          help=f"control strength (default {DEFAULTS.strength})")
    strength.add_argument("--adaptive", action="store_true",
                          help="search the strength per hand: the first whose pose error passes")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, metavar="K",
                        help=f"DDIM steps (default {DEFAULTS.steps})")
    parser.add_argument("--cfg", type=float, default=DEFAULTS.cfg_scale, metavar="W",
                        help=f"classifier-free guidance scale (default {DEFAULTS.cfg_scale:g})")
    parser.add_argument("--seed", type=int, default=-1, metavar="X", help="seed (default: a random one per image)")
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: out)")
    parser.add_argument("--save-depth", action="store_true", help="also write <stem>.depth.png")
    parser.add_argument("--save-mask", action="store_true", help="also write <stem>.mask.png")
    add_mesh_arguments(parser)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other HandRefiner setting by its API/infotext field name, e.g. crop_resolution=768, "
                             "mask_feather=12, hands_together=true, adaptive_strengths=0.4;0.6 (repeatable)")


def settings(ns: argparse.Namespace) -> HandRefinerArgs:
    overrides = dict(parse_setting(text) for text in ns.set)
    return HandRefinerArgs(**{**dict(strength=ns.strength, mode="adaptive" if ns.adaptive else "fixed",
                                     steps=ns.steps, cfg_scale=ns.cfg, seed=ns.seed, save_depth=ns.save_depth,
                                     save_mask=ns.save_mask, mesh_model=ns.mesh, mesh_fallback=ns.mesh_fallback),
                              **overrides, "enabled": True})


def parameters_text(prompt: str, negative: str, infotext: str) -> str:
    """The WebUI's `parameters` layout: prompt, "Negative prompt: …", then the key: value line."""
    lines = [prompt] if prompt else []
    if negative:
        lines.append(f"Negative prompt: {negative}")
    return "\n".join(lines + [infotext])


def png_with_parameters(rgb, parameters: str):
    """PNG content with the WebUI's `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    return png(rgb, pnginfo=info)


def report(image_path: Path, output: Path, result, args: HandRefinerArgs) -> dict:
    p = result.perception
    return {
        "image": str(image_path), "output": str(output), "width": p.width, "height": p.height,
        "refined": bool(result.hands), "message": result.message, "seed": result.seed,
        "mode": args.mode, "strength": args.strength if args.mode == "fixed" else None,
        "negative_prompt": result.negative_prompt,
        "detected": [{"box": [int(v) for v in h.box], "refinable": bool(h.refinable),
                      "handedness": h.hand.handedness if h.hand else None,
                      "score": float(h.hand.score) if h.hand else None,
                      "found_by": h.found_by or None} for h in p.hands],
        "hands": [h.report() for h in result.hands],
        "infotext": result.infotext,
        "timings_ms": {k: round(v, 1) for k, v in {**p.timings_ms, **result.timings_ms}.items()},
    }


def output_paths(image: Path, out_dir: Path, ns: argparse.Namespace) -> list:
    kinds = ["refined.png", "refine.json"] + ["depth.png"] * ns.save_depth + ["mask.png"] * ns.save_mask
    return [out_dir / f"{image.stem}.{kind}" for kind in kinds]


def run(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lib_handrefiner.cli.detect import OutputGuard, box_outside
    from lib_handrefiner.controlnet import ControlNetLoadError, load_controlnet
    from lib_handrefiner.imageio import ImageError, load_image
    from lib_handrefiner.mesh import MeshModelError
    from lib_handrefiner.pipeline import refine_image
    from lib_handrefiner.sd_model import CheckpointError, load_sd_checkpoint

    try:
        args = settings(ns)
    except ValueError as e:
        print(f"error: {settings_error(e)}", file=sys.stderr)
        return 2
    out_dir = Path(ns.out)
    problem = make_output_folder(out_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device, dtype = sampling_device()
    try:
        sd = load_sd_checkpoint(ns.checkpoint, device=device, dtype=dtype)
        controlnet = load_controlnet(ns.controlnet, device=device, dtype=dtype, fused_attention=True)
    except (CheckpointError, ControlNetLoadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        mesh_model, mesh_warning = load_mesh_model(ns, args, device, dtype)
    except MeshModelError as e:  # the mesh model's files: missing or wrong, each named
        print(f"error: {e}", file=sys.stderr)
        return 1
    failures = 0
    folder = OutputFolder(out_dir, create=False)
    guard = OutputGuard([Path(name) for name in ns.images])
    for name in ns.images:
        path = Path(name)
        outputs = output_paths(path, out_dir, ns)
        unwritable = folder.problem([o.name for o in outputs])  # before sampling, which it would waste
        clash = guard.clash(path, outputs) or (unwritable and f"{path}: {unwritable}")
        if clash:
            print(f"error: {clash}", file=sys.stderr)
            failures += 1
            continue
        try:
            rgb = load_image(path)
        except ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        outside = box_outside(path, args.boxes, rgb.shape[1], rgb.shape[0])
        if outside:
            print(f"error: {outside}", file=sys.stderr)
            failures += 1
            continue
        with tqdm(desc=path.name, unit="step", leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = refine_image(rgb, sd, controlnet, args, prompt=ns.prompt, negative_prompt=ns.negative,
                                  progress=progress, mesh_model=mesh_model, mesh_warning=mesh_warning)
        output = out_dir / f"{path.stem}.refined.png"
        # The JSON first and the refined image last: a refined image that is there has all its companions.
        files = [(f"{path.stem}.refine.json", strict_json.dumps(report(path, output, result, args), indent=2))]
        if ns.save_depth:
            files.append((f"{path.stem}.depth.png", png(result.perception.depth)))
        if ns.save_mask:
            files.append((f"{path.stem}.mask.png", png(result.perception.mask)))
        files.append((output.name, png_with_parameters(result.image, parameters_text(
            ns.prompt, result.negative_prompt, result.infotext))))
        try:
            folder.write_set(files)
        except OSError as e:
            print(f"error: {path}: cannot write its results to {out_dir}: {e.strerror or e}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path.name}: {result.message} -> {output}")
    return 1 if failures else 0
