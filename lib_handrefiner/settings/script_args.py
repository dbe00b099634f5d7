"""The script-args codec: the always-on script's args (the WebUI's widgets, or an API client's
`alwayson_scripts` args) → the settings. The WebUI's script and the API's early validation both read them here."""
from __future__ import annotations

from typing import Any, Optional

from lib_handrefiner.settings.compat import as_dict
from lib_handrefiner.settings.fields import FIELDS, field_names
from lib_handrefiner.settings.model import HandRefinerArgs
from lib_handrefiner.settings.widget import from_widget


def from_script_args(values: Any, defaults: Optional[HandRefinerArgs] = None) -> HandRefinerArgs:
    """Positional values are the fields in order (None: the default) in the widgets' forms (widget.from_widget);
    a dict names fields (alone, or first in a list: the WebUI's API pads the rest with the widgets' defaults).
    Fields not given keep `defaults` (the model's defaults when None). ValidationError names a bad or unknown
    field; ValueError says when there are more values than fields."""
    if isinstance(values, HandRefinerArgs):
        return values
    if isinstance(values, dict):
        given = dict(values)
    else:
        values = list(values or [])
        if values and isinstance(values[0], HandRefinerArgs):
            return values[0]
        if values and isinstance(values[0], dict):
            given = dict(values[0])
        else:
            names = field_names()
            if len(values) > len(names):
                raise ValueError(f"HandRefiner takes at most {len(names)} args ({', '.join(names)}), "
                                 f"got {len(values)}")
            given = {name: value for name, value in zip(names, values) if value is not None}
    update = {name: from_widget(name, value) if name in FIELDS else value for name, value in given.items()}
    base = as_dict(defaults) if defaults is not None else {}
    return HandRefinerArgs(**{**base, **update})
