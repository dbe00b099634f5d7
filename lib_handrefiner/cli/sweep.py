"""`python -m lib_handrefiner sweep IMAGE --strengths 0.1,…,1.0 --checkpoint CKPT --controlnet CN`: the control
strength phase transition (paper fig. 5) for one hand.

The hand is refined once per strength with the same seed (so the same noise), and the crop around it is shown
with its MPJPE: the refined hand re-detected, fitted with the mesh model and compared with the joints of the mesh
that guided it (px of the input image; "no hand" when MediaPipe finds none). Low strengths keep the texture but
not the structure, high ones the reverse. Writes one labelled grid image (`--out`, default <stem>.sweep.png) and
a JSON of the numbers beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from lib_handrefiner import strict_json
from lib_handrefiner.cli.common import add_mesh_arguments, add_negative_argument, load_mesh_model, sampling_device
from lib_handrefiner.grid import GridTile, grid_image, mpjpe_text
from lib_handrefiner.safe_write import OutputError, OutputFolder, png
from lib_handrefiner.settings import HandRefinerArgs

DEFAULTS = HandRefinerArgs()
DEFAULT_STRENGTHS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="image with a hand")
    parser.add_argument("--strengths", default=DEFAULT_STRENGTHS, metavar="LIST",
                        help=f"comma-separated control strengths (default {DEFAULT_STRENGTHS})")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="single-file SD 1.x inpainting checkpoint")
    parser.add_argument("--controlnet", required=True, metavar="CN", help="HandRefiner depth ControlNet")
    parser.add_argument("--hand", type=int, default=0, metavar="I",
                        help="which refinable hand, in detection order (default 0)")
    parser.add_argument("--prompt", default="", metavar="P", help="prompt for the hand")
    add_negative_argument(parser)
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, metavar="K",
                        help=f"DDIM steps (default {DEFAULTS.steps})")
    parser.add_argument("--cfg", type=float, default=DEFAULTS.cfg_scale, metavar="W",
                        help=f"guidance scale (default {DEFAULTS.cfg_scale:g})")
    parser.add_argument("--crop-resolution", type=int, default=DEFAULTS.crop_resolution, metavar="PX",
                        help=f"working resolution of the hand crop (default {DEFAULTS.crop_resolution})")
    parser.add_argument("--seed", type=int, default=-1, metavar="X", help="seed (default: a random one, printed)")
    parser.add_argument("--tile", type=int, default=256, metavar="PX", help="tile side in the grid (default 256)")
    parser.add_argument("--columns", type=int, default=6, metavar="N", help="tiles per row (default 6)")
    parser.add_argument("--out", metavar="FILE", help="grid image (default <stem>.sweep.png here)")
    add_mesh_arguments(parser, "the depth guide and the MPJPE")


def parse_strengths(text: str) -> List[float]:
    from lib_handrefiner.settings import parse_floats

    try:
        values = parse_floats(text)
    except ValueError:
        raise ValueError(f"--strengths must be comma-separated numbers like 0.1,0.5,1.0, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 2.0 for v in values):
        raise ValueError(f"--strengths needs at least one value, each in [0, 2], got {text!r}")
    return values


def run(ns: argparse.Namespace) -> int:
    from lib_handrefiner.cli.common import settings_error
    from lib_handrefiner.controlnet import ControlNetLoadError, load_controlnet
    from lib_handrefiner.imageio import ImageError, load_image
    from lib_handrefiner.mesh import MeshModelError
    from lib_handrefiner.pipeline import choose_seed
    from lib_handrefiner.sd_model import CheckpointError, load_sd_checkpoint

    for option, value, least in (("--tile", ns.tile, 1), ("--columns", ns.columns, 1), ("--hand", ns.hand, 0)):
        if value < least:
            print(f"error: {option} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    out = Path(ns.out) if ns.out else Path(f"{Path(ns.image).stem}.sweep.png")
    if Path(ns.image).resolve() in (out.resolve(), out.with_suffix(".json").resolve()):
        print(f"error: --out {out} would overwrite the input image; choose another name", file=sys.stderr)
        return 2
    try:  # before the sampling, so a bad --out does not throw the sweep away
        folder = OutputFolder(out.parent)
        problem = folder.problem([out.name, out.with_suffix(".json").name])
    except OutputError as e:
        problem = str(e)
    if problem:
        print(f"error: --out {out}: {problem}", file=sys.stderr)
        return 2
    try:
        strengths = parse_strengths(ns.strengths)
        args = HandRefinerArgs(enabled=True, steps=ns.steps, cfg_scale=ns.cfg, crop_resolution=ns.crop_resolution,
                               mesh_model=ns.mesh, mesh_fallback=ns.mesh_fallback)
        rgb = load_image(ns.image)
        device, dtype = sampling_device()
        sd = load_sd_checkpoint(ns.checkpoint, device=device, dtype=dtype)
        controlnet = load_controlnet(ns.controlnet, device=device, dtype=dtype, fused_attention=True)
    except (ValueError, ImageError, CheckpointError, ControlNetLoadError, FileNotFoundError) as error:
        print(f"error: {settings_error(error)}", file=sys.stderr)
        return 2
    try:
        mesh_model, _ = load_mesh_model(ns, args, device, dtype)
    except MeshModelError as error:  # the mesh model's files: missing or wrong, each named
        print(f"error: {error}", file=sys.stderr)
        return 1
    seed = choose_seed(ns.seed, args)
    try:
        tiles = sweep(rgb, sd, controlnet, args, strengths, seed, hand_index=ns.hand, prompt=ns.prompt,
                      negative_prompt=ns.negative, mesh_model=mesh_model)
    except LookupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    numbers = [{"strength": t.strength, "mpjpe_px": t.mpjpe_px} for t in tiles if t.strength is not None]
    report = strict_json.dumps({"image": str(ns.image), "seed": seed, "hand": ns.hand,
                                "input_mpjpe_px": tiles[0].mpjpe_px, "strengths": numbers}, indent=2)  # no hand: null
    try:
        folder.write_set([(out.with_suffix(".json").name, report),
                          (out.name, png(grid_image(tiles, ns.tile, ns.columns)))])
    except OSError as e:
        print(f"error: cannot write --out {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    for t in tiles:
        if t.strength is not None:
            print(f"strength {t.strength:g}: {mpjpe_text(t.mpjpe_px)}")
    print(f"seed {seed}; wrote {out}")
    return 0


def sweep(rgb: np.ndarray, sd, controlnet, args: HandRefinerArgs, strengths: Sequence[float], seed: int,
          hand_index: int = 0, prompt: str = "", negative_prompt: Optional[str] = None, mesh_model=None
          ) -> List[GridTile]:
    """The input crop, its depth hint, then one refined crop per strength, all from the same seed; each image
    crop with its MPJPE against the guiding mesh."""
    from lib_handrefiner.adaptive import refit_error
    from lib_handrefiner.detection import crop_hand
    from lib_handrefiner.mesh import resolve_mesh_model
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import cut, hand_crop_region, refine_image

    mesh_warning = ""
    if mesh_model is None:
        mesh_model, mesh_warning = resolve_mesh_model(args.mesh_model, fallback=args.mesh_fallback)
    perception = perceive(rgb, args, mesh_model=mesh_model, mesh_warning=mesh_warning)
    refinable = [h for h in perception.hands if h.refinable]
    if not 0 <= hand_index < len(refinable):
        raise LookupError(f"the image has {len(refinable)} refinable hand(s); --hand {hand_index} does not exist"
                          + ("" if refinable else " (no hand found: try another image or a larger one)"))
    chosen = refinable[hand_index]
    # Only the chosen hand is refined, so every tile differs from the input in that hand alone.
    single = dataclasses.replace(perception, hands=[chosen])
    region = hand_crop_region(chosen.box, perception.width, perception.height, args.crop_resolution,
                              min_side=args.crop_min_side)
    target = chosen.mesh.joints[:, :2] - np.array([region.x0, region.y0])
    hand = crop_hand(chosen.hand, 1.0, (region.x0, region.y0))
    original = cut(rgb, region, "edge")
    # The input's own error is the detector's noise floor: what an unchanged hand scores.
    tiles = [GridTile("input", None, refit_error(original, hand, target, mesh_model, args), original),
             GridTile("depth", None, None, np.repeat(cut(perception.depth, region, "constant")[..., None], 3, 2))]
    for strength in strengths:
        result = refine_image(rgb, sd, controlnet, args.copy(update={"strength": strength, "mode": "fixed"}),
                              prompt=prompt, negative_prompt=negative_prompt, seed=seed, perception=single,
                              mesh_model=mesh_model)
        crop = cut(result.image, region, "edge")
        tiles.append(GridTile(f"{strength:g}", strength, refit_error(crop, hand, target, mesh_model, args), crop))
    return tiles
