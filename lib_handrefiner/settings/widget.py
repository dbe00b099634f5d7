"""The widget codec: a field's value ↔ what its WebUI/editor widget holds (number lists and boxes as text,
the checkpoint's "Current model" entry, sliders' floats for integer fields)."""
from __future__ import annotations

from typing import Any

from lib_handrefiner.settings.boxes import format_boxes, parse_boxes
from lib_handrefiner.settings.fields import FIELDS
from lib_handrefiner.settings.text import parse_floats

CURRENT_MODEL = "Current model"   # the checkpoint dropdown's entry for "the WebUI's loaded model" (the field's "")
LIST_FIELDS = tuple(name for name, f in FIELDS.items() if f.kind in ("floats", "boxes"))   # widgets holding text


def from_widget(name: str, value: Any) -> Any:
    """A widget's (or an API client's positional) value → the field's value, for the model to validate."""
    kind = FIELDS[name].kind
    if kind == "floats":
        return parse_floats(value)
    if kind == "boxes":
        return parse_boxes(value)
    if name == "inpaint_checkpoint" and value in (CURRENT_MODEL, None, "None"):
        return ""
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)   # sliders and number boxes send floats
    return value


def to_widget(name: str, value: Any) -> Any:
    """A field's value → its widget's value (the inverse of from_widget)."""
    kind = FIELDS[name].kind
    if kind == "floats":
        return ", ".join(f"{v:g}" for v in value)
    if kind == "boxes":
        return format_boxes(value)
    if name == "inpaint_checkpoint" and not value:
        return CURRENT_MODEL
    return value
