"""The script's arguments and the WebUI's settings section: the widgets' (and `alwayson_scripts`') values →
HandRefinerArgs through settings.script_args, the section's defaults and its entries."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from pydantic import ValidationError

from lib_handrefiner.settings import FIELDS, SETTING_FIELDS, HandRefinerArgs, from_script_args, from_widget, replace

log = logging.getLogger("handrefiner")

SETTINGS_SECTION = ("handrefiner", "HandRefiner")
KEEP_LOADED_SETTING = "handrefiner_keep_models_on_device"


def setting_key(name: str) -> str:
    return f"handrefiner_{name}"


def defaults_from_opts(opts: Any) -> HandRefinerArgs:
    """HandRefinerArgs' defaults overridden by the settings section; a bad stored value keeps the default."""
    args = HandRefinerArgs()
    for name in SETTING_FIELDS:
        value = getattr(opts, setting_key(name), None)
        if value is None:
            continue
        try:
            args = replace(args, **{name: from_widget(name, value)})
        except (ValidationError, TypeError, ValueError) as e:
            log.warning("HandRefiner: ignoring setting %s=%r (%s)", setting_key(name), value, e)
    return args


def with_available_controlnet(defaults: HandRefinerArgs, available: Sequence[str],
                              fallback: Callable[[], Optional[str]]) -> HandRefinerArgs:
    """The configured default ControlNet when it is on disk; otherwise `fallback()` (WebUIRefiner.default_controlnet:
    the file /handrefiner/refine and the standalone editor use, e.g. the HandRefiner ControlNet under another name)."""
    if defaults.controlnet in available:
        return defaults
    chosen = fallback()
    return replace(defaults, controlnet=chosen) if chosen else defaults


def args_from_script_args(values: Sequence[Any], defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """The script's args (the widgets' values, or `alwayson_scripts` args) as HandRefinerArgs: settings'
    from_script_args, the fields not given taken from `defaults` (the settings section's)."""
    return from_script_args(values, defaults)


def args_from_named_values(names: Sequence[str], values: Sequence[Any],
                           defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """HandRefinerArgs from some widgets' values, the widgets named by their fields (in any order)."""
    return from_script_args([dict(zip(names, values))], defaults)


def setting_spec(name: str) -> Tuple[Any, str, Dict[str, Any]]:
    """(default, label, gradio kwargs) of the settings entry holding field `name`'s default."""
    field = FIELDS[name]
    label = field.title.replace("HandRefiner ", "Default ")
    kwargs: Dict[str, Any] = {}
    if field.kind == "choice":
        kwargs["choices"] = list(field.choices)
    elif field.kind in ("int", "float"):
        kwargs = {"minimum": field.ge if field.ge is not None else 0,
                  "maximum": field.le if field.le is not None else 1, "step": 1 if field.kind == "int" else 0.01}
    return field.default, label, kwargs
