"""The command-line codec: `--set NAME=VALUE` (values in the infotext's text form)."""
from __future__ import annotations

from typing import Any, Tuple

from lib_handrefiner.settings.fields import FIELDS, field_names
from lib_handrefiner.settings.text import parse_text


def parse_setting(text: str) -> Tuple[str, Any]:
    """`NAME=VALUE` (NAME with - or _) → (field name, value). ValueError names the setting or the bad value."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in FIELDS:
        raise ValueError(f"{text!r} is not NAME=VALUE with NAME one of: {', '.join(field_names())}")
    try:
        return name, parse_text(FIELDS[name], raw)
    except ValueError as e:
        raise ValueError(f"{name}: cannot read {raw!r} ({e})") from None
