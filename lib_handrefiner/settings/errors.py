"""A bad setting as one line, the same on every surface that shows text (the WebUI's result, the editor's error,
the command line): pydantic's own text spans several lines per field."""
from __future__ import annotations

import difflib
from typing import Any, Dict

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
    closest = difflib.get_close_matches(str(name), field_names(), n=1)
    hint = f"did you mean {closest[0]!r}?" if closest else f"valid names: {', '.join(field_names())}"
    return f"unknown setting {name!r}; {hint}"


def _one(error: Dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if error.get("type") in _EXTRA_FIELD and loc:
        return unknown_setting_message(loc[-1])
    return f"{'.'.join(loc)}: {error['msg']}" if loc else str(error["msg"])
