"""The cases every settings surface is tested with (tests/test_settings.py), and `surfaces_digest`: what each codec
makes of them, as JSON, so that the same run under pydantic 1 and pydantic 2 can be compared.

Run as a script (`python tests/settings_cases.py`) it prints the digest; the pydantic-2 test runs it that way
with pydantic 2 first on sys.path."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

# (field, value in the model, the widget's value, the infotext's / command line's text)
CASES = [
    ("enabled", True, True, "True"),
    ("strength", 0.7, 0.7, "0.7"),
    ("mode", "adaptive", "adaptive", "adaptive"),
    ("adaptive_strengths", [0.3, 0.6], "0.3, 0.6", "0.3;0.6"),
    ("prompt", "a hand, five fingers", "a hand, five fingers", "a hand, five fingers"),
    ("mesh_model", "landmarks", "landmarks", "landmarks"),
    ("inpaint_checkpoint", "", "Current model", ""),
    ("inpaint_checkpoint", "sd-v1-5-inpainting", "sd-v1-5-inpainting", "sd-v1-5-inpainting"),
    ("steps", 12, 12.0, "12"),
    ("cfg_scale", 7.5, 7.5, "7.5"),
    ("seed", 1234, 1234.0, "1234"),
    ("crop", False, False, "False"),
    ("boxes", [(1.0, 2.0, 30.0, 40.0), (5.5, 6.0, 70.0, 80.0)], "1 2 30 40; 5.5 6 70 80", "1 2 30 40;5.5 6 70 80"),
    ("boxes_mode", "add", "add", "add"),
    ("save_mask", True, True, "True"),
    ("sampler", "Euler a", "Euler a", "Euler a"),
]

# Spellings every text surface (infotext, command line, widget text) reads the same way: (field, text, value).
SPELLINGS = [
    ("crop", "on", True), ("crop", "off", False), ("crop", "YES", True), ("crop", "0", False),
    ("adaptive_strengths", "0.4, 0.6", [0.4, 0.6]), ("adaptive_strengths", "0.4;0.6", [0.4, 0.6]),
    ("adaptive_strengths", "0.4 0.6", [0.4, 0.6]),
    ("boxes", "[[1, 2, 30, 40]]", [(1.0, 2.0, 30.0, 40.0)]), ("boxes", "1,2,30,40", [(1.0, 2.0, 30.0, 40.0)]),
    ("boxes", "1 2 30 40\n5 6 70 80", [(1.0, 2.0, 30.0, 40.0), (5.0, 6.0, 70.0, 80.0)]),
]

# Bad values: (field, value) each surface refuses, naming the field.
BAD = [("steps", 0), ("strength", 2.5), ("mode", "magic"), ("adaptive_strengths", [0.5, 3.0]),
       ("boxes", [(10.0, 10.0, 5.0, 20.0)]), ("sampler", "")]


def surfaces_digest() -> Dict[str, Any]:
    """Each case through each codec; errors as the fields they name."""
    from lib_handrefiner import settings as s

    def run(fn) -> Any:
        try:
            return _plain(fn())
        except ValueError as e:   # pydantic's ValidationError (1 and 2) is a ValueError too
            errors = getattr(e, "errors", None)
            return {"error": sorted({str(err["loc"][0]) for err in errors()}) if callable(errors) else str(e)}

    out: Dict[str, Any] = {"pydantic_major": int(s.PYDANTIC_V2) + 1, "fields": s.field_names(),
                           "specs": {n: [f.title, f.kind, list(f.choices), f.ge, f.le, _plain(f.default)]
                                     for n, f in s.FIELDS.items()}}
    rows: List[Any] = []
    for name, value, widget, text in CASES:
        args = s.HandRefinerArgs(**{name: value})
        positional = [None] * s.field_names().index(name) + [widget]
        rows.append({
            "case": [name, _plain(value)],
            "to_infotext": s.to_infotext(args),
            "from_infotext": run(lambda: getattr(s.from_infotext({"HandRefiner": "True", s.FIELDS[name].title: text}),
                                                 name)),
            "cli": run(lambda: getattr(s.HandRefinerArgs(**dict([s.parse_setting(f"{name}={text}")])), name)),
            "to_widget": _plain(s.to_widget(name, value)),
            "from_widget": run(lambda: getattr(s.from_script_args({name: widget}), name)),
            "positional": run(lambda: getattr(s.from_script_args(positional), name)),
            "as_dict": _plain(s.as_dict(args)[name]),
        })
    out["cases"] = rows
    out["spellings"] = [
        [name, text, run(lambda: getattr(s.from_infotext({"HandRefiner": "on", s.FIELDS[name].title: text}), name)),
         run(lambda: s.parse_setting(f"{name}={text}")[1])] for name, text, _ in SPELLINGS]
    out["bad"] = [[name, run(lambda: s.HandRefinerArgs(**{name: value}))] for name, value in BAD]
    out["unknown"] = run(lambda: s.from_script_args({"strenght": 0.4}))
    try:
        s.from_script_args({"strenght": 0.4})
    except ValueError as e:
        out["unknown_line"] = s.describe_error(e)
    out["too_many"] = run(lambda: s.from_script_args([None] * (len(s.FIELDS) + 1)))
    out["layout"] = s.layout()
    return out


def _plain(value: Any) -> Any:
    """JSON-comparable: tuples as lists, models as dicts."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(surfaces_digest(), sort_keys=True))
