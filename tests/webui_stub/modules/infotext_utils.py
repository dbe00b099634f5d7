"""Infotexts: quoting a value for the "Key: value, …" line, and what the paste button does with one."""
from __future__ import annotations

import json
import re

# "Key: value" with the value either a JSON string (which may hold commas) or anything up to the next comma.
_ENTRY = re.compile(r'\s*([\w][\w \-/]*?):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')


def quote(text):
    """A value holding a comma, a colon or a newline is written as a JSON string; others as they are."""
    return json.dumps(text, ensure_ascii=False) if re.search(r"[,:\n]", str(text)) else text


def _unquote(value):
    if len(value) > 1 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def parse_generation_parameters(x, skip_fields=None):
    """The "Key: value, …" parameters (the infotext's last line) as a dict; the prompts are not needed here."""
    return {key: _unquote(value.strip()) for key, value in _ENTRY.findall(x.strip().split("\n")[-1])}


def paste_values(fields, infotext: str) -> list:
    """What pasting `infotext` puts in each (component, key or function of the parameters) of `fields`: the
    parameters line is parsed, the on_infotext_pasted callbacks may change it, each value is converted to the type
    of its component's value (int components get a float; "False" is False); None leaves a component as it is."""
    from modules import script_callbacks

    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    values = []
    for component, target in fields:
        value = target(params) if callable(target) else params.get(target)
        kind = type(component.value)
        if value is None:
            values.append(None)
        elif kind is bool:
            values.append(value != "False" and bool(value))
        else:
            values.append(float(value) if kind is int else kind(value))
    return values
