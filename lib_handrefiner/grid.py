"""Labelled image grids: the strength sweep's (cli/sweep) and training's validation images (train/validation)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LABEL_HEIGHT = 22


@dataclass
class GridTile:
    label: str                 # "input", "depth", "hint" or the strength
    strength: Optional[float]
    mpjpe_px: Optional[float]  # None: no MPJPE shown; inf when no hand was found
    crop: np.ndarray           # RGB uint8


def mpjpe_text(value: Optional[float]) -> str:
    if value is None:
        return ""
    return "no hand found" if not math.isfinite(value) else f"MPJPE {value:.1f} px"


def grid_image(tiles: Sequence[GridTile], tile: int, columns: int) -> np.ndarray:
    """Tiles resized to `tile` px in rows of `columns`, each with a label strip above it."""
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_h = tile + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * tile, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for i, t in enumerate(tiles):
        x, y = (i % columns) * tile, (i // columns) * cell_h
        canvas.paste(Image.fromarray(t.crop).resize((tile, tile), Image.LANCZOS), (x, y + LABEL_HEIGHT))
        label = f"{t.label if t.strength is None else 'strength ' + t.label}  {mpjpe_text(t.mpjpe_px)}"
        draw.text((x + 4, y + 3), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()
