"""Setting values as text, read and written the same way by the infotext and the command line (and list text by
the widgets): booleans, number lists, boxes."""
from __future__ import annotations

import re
from typing import Any

from lib_handrefiner.settings.boxes import format_boxes, parse_boxes
from lib_handrefiner.settings.compat import FieldSpec

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); anything else is an error, never silently False."""
    word = text.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"{text!r} is not true or false")
    return word in TRUE_WORDS


def parse_floats(value: Any) -> Any:
    """A list of numbers from text ("0.4, 0.5", "0.4;0.5", "0.4 0.5"); anything not text as it is."""
    if not isinstance(value, str):
        return value
    numbers = []
    for item in (s for s in re.split(r"[,;\s]+", value.strip()) if s):
        try:
            numbers.append(float(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a number (a list of numbers is written 0.4, 0.5)") from None
    return numbers


def parse_text(field: FieldSpec, raw: Any) -> Any:
    """A field's value from its text form; numbers and names stay text for the model to validate. Not text: as
    it is."""
    if not isinstance(raw, str):
        return raw
    if field.kind == "bool":
        return parse_bool(raw)
    if field.kind == "floats":
        return parse_floats(raw)
    if field.kind == "boxes":
        return parse_boxes(raw)
    return raw


def format_text(value: Any) -> Any:
    """A field's value in its text form (the infotext's): True/False, 0.55, "0.4;0.5", "x0 y0 x1 y1;…"."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (list, tuple)):
            return format_boxes(value, separator=";")
        return ";".join(format_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return value
