from __future__ import annotations

import json

class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


_SEPARATORS = (",", "\n", ":")


def quote(text):
    """A value with a separator in it is written as a JSON string; others as they are."""
    return json.dumps(text, ensure_ascii=False) if any(c in str(text) for c in _SEPARATORS) else text


def unquote(text):
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _entries(line: str):
    """ "Key: value" entries of a parameters line, split at commas outside JSON-quoted values."""
    entry, quoted, escaped = "", False, False
    for c in line + ",":
        if c == "," and not quoted:
            if ":" in entry:
                key, value = entry.split(":", 1)
                yield key.strip(), value.strip()
            entry = ""
            continue
        entry += c
        if quoted and c == "\\" and not escaped:
            escaped = True
            continue
        if c == '"' and not escaped:
            quoted = not quoted
        escaped = False


def parse_generation_parameters(x: str) -> dict:
    """The "Key: value, …" parameters line of an infotext (its last line) as a dict of strings."""
    return {key: unquote(value) for key, value in _entries(x.strip().split("\n")[-1])}


def paste_values(fields, infotext: str) -> list:
    """What pasting `infotext` sets each (component, target) of `fields` to: the parameters are parsed, the
    on_infotext_pasted callbacks run, each target is read (a key or a function of the parameters) and converted to
    the type of the component's value; None where the component is left as it is."""
    from modules import script_callbacks

    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    values = []
    for component, target in fields:
        v = target(params) if callable(target) else params.get(target, None)
        if v is None:
            values.append(None)
            continue
        valtype = type(component.value)
        if valtype == bool and v == "False":
            values.append(False)
        elif valtype == int:
            values.append(float(v))
        else:
            values.append(valtype(v))
    return values
