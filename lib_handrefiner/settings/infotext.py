"""The infotext codec: the settings as "HandRefiner …" generation parameters (each field's title is its key) and
back."""
from __future__ import annotations

from typing import Any, Dict, Optional

from lib_handrefiner.settings.fields import FIELDS
from lib_handrefiner.settings.model import HandRefinerArgs
from lib_handrefiner.settings.text import format_text, parse_text

MESHES_INFOTEXT_KEY = "HandRefiner meshes"  # a result entry: the mesh model of each refined hand, in order
# A result entry, not a setting: the box of each refined hand, "x0 y0 x1 y1;…" in the image's pixels (txt2img's
# "Send the image to img2img and edit its hand boxes" puts them in img2img's box editor).
HAND_BOXES_INFOTEXT_KEY = "HandRefiner hand boxes"
ALWAYS_WRITTEN = ("enabled", "strength", "mode")


def to_infotext(args: HandRefinerArgs) -> Dict[str, Any]:
    """The fields that differ from their defaults (an empty box list never), plus enabled/strength/mode always."""
    out = {}
    for name, field in FIELDS.items():
        value = getattr(args, name)
        if name not in ALWAYS_WRITTEN and (value == field.default or (field.kind == "boxes" and not value)):
            continue
        out[field.title] = format_text(value)
    return out


def from_infotext(params: Dict[str, Any]) -> Optional[HandRefinerArgs]:
    """The settings from parsed generation parameters (other keys ignored); None when HandRefiner was off.
    ValueError / ValidationError name a value that cannot be read."""
    by_title = {field.title: field for field in FIELDS.values()}
    values = {}
    for key, raw in params.items():
        field = by_title.get(key)
        if field is not None:
            try:
                values[field.name] = parse_text(field, raw)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
    if not values.get("enabled"):
        return None
    return HandRefinerArgs(**values)
