from __future__ import annotations

import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    """The "Key: value, …" parameters line of an infotext (the last line) as a dict of strings."""
    res = {}
    lastline = x.strip().split("\n")[-1]
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v) if v[:1] == '"' and v[-1:] == '"' else v
    return res


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
