"""A bad setting as one line, the same on every surface that shows text (the WebUI's result, the editor's error,
the command line): pydantic's own text spans several lines per field."""
from __future__ import annotations

import difflib
from typing import Any, Dict, Optional, Sequence

from pydantic import ValidationError

from lib_handrefiner.settings.fields import field_names

_EXTRA_FIELD = ("value_error.extra", "extra_forbidden")   # pydantic 1's and 2's "unknown field" error types


def describe_error(error: BaseException) -> str:
    """"steps: ensure this value is less than or equal to 150; mode: …", an unknown field named with the closest
    valid one; any other error as its text."""
    if isinstance(error, ValidationError):
        return "; ".join(_one(e) for e in error.errors())
    return str(error)


def unknown_setting_message(name: Any) -> str:
    return unknown_name_message(name, field_names(), "setting")


def unknown_name_message(name: Any, valid: Sequence[str], noun: str) -> str:
    """"unknown field 'strenght'; did you mean 'strength'?", or the valid names when none is close: the settings'
    text surfaces (noun "setting") and the API's request fields (noun "field") alike."""
    closest = closest_name(name, valid)
    hint = f"did you mean {closest!r}?" if closest is not None else f"the {noun}s are: {', '.join(valid)}"
    return f"unknown {noun} {name!r}; {hint}"


def closest_name(name: Any, valid: Sequence[str]) -> Optional[str]:
    """The valid name a misspelt one most likely means ("strenght" → "strength", any case), or None."""
    if not isinstance(name, str):
        return None
    lowered = {v.lower(): v for v in valid}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _one(error: Dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if error.get("type") in _EXTRA_FIELD and loc:
        return unknown_setting_message(loc[-1])
    return f"{'.'.join(loc)}: {error['msg']}" if loc else str(error["msg"])
