"""What the command-line commands share: one-line errors for bad settings and unusable output folders."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import ValidationError


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
