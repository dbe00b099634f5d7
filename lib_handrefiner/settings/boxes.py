"""Hand boxes as text, read in one place: the editor's JSON [[x0, y0, x1, y1], …] or the infotext's and command
line's "x0 y0 x1 y1; …" (commas or spaces between numbers, ";" or new lines between boxes)."""
from __future__ import annotations

import json
import re
from typing import Any, Sequence, Tuple

Box = Tuple[float, ...]


def parse_boxes(value: Any) -> Any:
    """Boxes from text as [(x0, y0, x1, y1), …] of floats; anything not text is returned as it is (the model
    validates it). ValueError names a box that is not numbers."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"boxes must be JSON like [[x0, y0, x1, y1], ...]: {e}") from None
        if not isinstance(raw, list):
            raise ValueError("boxes must be a JSON list of [x0, y0, x1, y1]")
    else:
        raw = [[v for v in re.split(r"[,\s]+", part.strip()) if v] for part in re.split(r"[;\n]", text)
               if part.strip()]
    return [_box(item) for item in raw]


def format_boxes(boxes: Sequence[Sequence[float]], separator: str = "; ") -> str:
    return separator.join(" ".join(f"{v:g}" for v in box) for box in boxes)


def _box(item: Any) -> Box:
    try:
        if isinstance(item, (str, bytes)) or not isinstance(item, (list, tuple)):
            raise TypeError
        return tuple(float(v) for v in item)
    except (TypeError, ValueError):
        raise ValueError(f"box {item!r} must be 4 numbers x0, y0, x1, y1") from None
