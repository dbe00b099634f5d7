"""What the command-line commands share: the negative-prompt and mesh options, the sampling device, one-line errors
for bad settings and unusable output folders."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional


def add_negative_argument(parser: argparse.ArgumentParser) -> None:
    from lib_handrefiner.settings import DEFAULT_NEGATIVE_PROMPT, EXTRA_NEGATIVE_DEFAULT

    parser.add_argument("--negative", default=None, metavar="N",
                        help=f"negative prompt for the hands (default: the official \"{DEFAULT_NEGATIVE_PROMPT}\"); "
                             f"the extra negative \"{EXTRA_NEGATIVE_DEFAULT}\" always goes before it")


def settings_error(error: Exception) -> str:
    """One line naming each bad setting (pydantic's own text spans several lines per field)."""
    from lib_handrefiner.settings import describe_error

    return describe_error(error)


def sampling_device():
    """(device, dtype) the commands that sample (refine, sweep) load their models with: CUDA in fp16 when there is
    one, else the CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def make_output_folder(folder: Path) -> Optional[str]:
    """Creates `folder` (and its parents); the error line to print when that is impossible, else None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the output folder {folder}: {e.strerror or e}"
    return None


def add_mesh_arguments(parser: argparse.ArgumentParser, what: str = "the hands' depth guide",
                       models_dir: bool = True) -> None:
    """--mesh, --mesh-fallback and (unless the command has its own) --models-dir, where Mesh Graphormer's files
    are."""
    from lib_handrefiner.mesh import MODELS_DIR_ENV
    from lib_handrefiner.settings import FIELDS

    field = FIELDS["mesh_model"]
    choices = "|".join(field.choices)
    parser.add_argument("--mesh", default=field.default, metavar=choices,
                        help=f"hand mesh model for {what} (default {field.default}): graphormer is Mesh Graphormer, "
                             "the paper's (its three files in --models-dir), landmarks needs no files, auto takes "
                             "graphormer when its files are there")
    parser.add_argument("--mesh-fallback", action="store_true",
                        help="when Mesh Graphormer's files are missing or unusable, use the landmark mesh (with a "
                             "warning) instead of failing")
    if not models_dir:
        return
    parser.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="folder with Mesh Graphormer's files (graphormer_hand_state_dict.bin, MANO_RIGHT.pkl, "
                             "mano_downsampling.npz), looked for in DIR/handrefiner/ then DIR (default: the "
                             f"{MODELS_DIR_ENV} environment variable)")


def load_mesh_model(ns: argparse.Namespace, args, device="cpu", dtype=None):
    """(model, warning) for --mesh/--mesh-fallback/--models-dir (the settings `args` hold the first two); the
    warning is printed. Raises MeshModelError (the command exits 1 with its message)."""
    import sys

    from lib_handrefiner.mesh import get_mesh_model, resolve_mesh_model

    model, warning = resolve_mesh_model(args.mesh_model, ns.models_dir, args.mesh_fallback,
                                        lambda name: get_mesh_model(name, ns.models_dir, device=device, dtype=dtype))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return model, warning
