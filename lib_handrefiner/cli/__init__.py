"""Command line: `python -m lib_handrefiner COMMAND …`.

Each command lives in its own module, which exposes `add_arguments(parser)` and `run(namespace) -> int`;
modules are imported only when their command runs, so `detect` does not pay for torch. lib_handrefiner/__main__.py
calls `main`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "detect": ("lib_handrefiner.cli.detect", "Find hands; write depth, mask, overlay and JSON (no weights needed)."),
    "refine": ("lib_handrefiner.cli.refine", "Refine the hands of images with SD 1.5 inpainting + the ControlNet."),
    "controlnet": ("lib_handrefiner.cli.controlnet", "Create or inspect ControlNet files."),
    "evaluate": ("lib_handrefiner.cli.evaluate", "FID, KID, detection confidence and MPJPE of refined images."),
    "sweep": ("lib_handrefiner.cli.sweep", "Render the control-strength phase-transition grid of one image."),
    "serve": ("lib_handrefiner.cli.serve", "Serve the REST API and the hand-box editor without the WebUI."),
    "prepare-data": ("lib_handrefiner.cli.prepare_data",
                     "Turn a hand dataset (RHD, Synthesis AI static gestures, photos) into a training folder."),
    "train": ("lib_handrefiner.cli.train", "Fine-tune the hand ControlNet on a prepared dataset (one or many GPUs)."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    command_parser = argparse.ArgumentParser(prog=f"python -m lib_handrefiner {argv[0]}",
                                             description=COMMANDS[argv[0]][1])
    module.add_arguments(command_parser)
    return module.run(command_parser.parse_args(argv[1:]))

