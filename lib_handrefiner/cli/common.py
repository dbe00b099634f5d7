"""What the command-line commands share: the negative-prompt option, one-line errors for bad settings and unusable
output folders."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from pydantic import ValidationError


def add_negative_argument(parser: argparse.ArgumentParser) -> None:
    from lib_handrefiner.args import DEFAULT_NEGATIVE_PROMPT, EXTRA_NEGATIVE_DEFAULT

    parser.add_argument("--negative", default=None, metavar="N",
                        help=f"negative prompt for the hands (default: the official \"{DEFAULT_NEGATIVE_PROMPT}\"); "
                             f"the extra negative \"{EXTRA_NEGATIVE_DEFAULT}\" always goes before it")


def settings_error(error: Exception) -> str:
    """One line naming each bad setting (pydantic's own text spans several lines per field)."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)


def make_output_folder(folder: Path) -> Optional[str]:
    """Creates `folder` (and its parents); the error line to print when that is impossible, else None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the output folder {folder}: {e.strerror or e}"
    return None
