"""The script's arguments: the widgets' (and `alwayson_scripts`') values ↔ HandRefinerArgs, the settings section's
defaults, and a validation error as one line."""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from pydantic import ValidationError

from ..args import HandRefinerArgs
from .env import CURRENT_MODEL

log = logging.getLogger("handrefiner")

SETTINGS_SECTION = ("handrefiner", "HandRefiner")

# Fields whose defaults the settings section holds (the others keep HandRefinerArgs' defaults).
SETTING_FIELDS = ("strength", "mode", "extra_negative", "mesh_model", "mesh_fallback", "controlnet",
                  "inpaint_checkpoint", "steps", "cfg_scale", "denoising_strength", "mask_padding", "mask_feather",
                  "crop_resolution", "max_hands")
KEEP_LOADED_SETTING = "handrefiner_keep_models_on_device"

LIST_FIELDS = ("adaptive_strengths", "boxes")   # shown as text: "0.4, 0.5" and "x0 y0 x1 y1; …"


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
            args = HandRefinerArgs(**{**args.dict(), name: _from_widget(name, value)})
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
    return defaults.copy(update={"controlnet": chosen}) if chosen else defaults


def parse_strengths(value: Any) -> Any:
    if isinstance(value, str):
        return [float(s) for s in re.split(r"[,;\s]+", value.strip()) if s]
    return value


def parse_boxes(value: Any) -> Any:
    """Boxes from text: JSON [[x0, y0, x1, y1], …] (the editor's format) or "x0 y0 x1 y1; …" (the infotext's)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        return [tuple(float(v) for v in box) for box in json.loads(text)]
    return [tuple(float(v) for v in re.split(r"[,\s]+", part.strip()) if v)
            for part in re.split(r"[;\n]", text) if part.strip()]


def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    return "; ".join(" ".join(f"{v:g}" for v in box) for box in boxes)


def _from_widget(name: str, value: Any) -> Any:
    """A widget's (or an API client's positional) value → the field's value."""
    if name == "adaptive_strengths":
        return parse_strengths(value)
    if name == "boxes":
        return parse_boxes(value)
    if name == "inpaint_checkpoint" and value in (CURRENT_MODEL, None, "None"):
        return ""
    kind = HandRefinerArgs.__fields__[name].type_
    if isinstance(value, float) and isinstance(kind, type) and issubclass(kind, int) and not issubclass(kind, bool) \
            and value.is_integer():
        return int(value)  # sliders and numbers send floats
    return value


def to_widget(name: str, value: Any) -> Any:
    """A field's value → its widget's value (the inverse of _from_widget)."""
    if name == "adaptive_strengths":
        return ", ".join(f"{v:g}" for v in value)
    if name == "boxes":
        return format_boxes(value)
    if name == "inpaint_checkpoint" and not value:
        return CURRENT_MODEL
    return value


def args_from_script_args(values: Sequence[Any], defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """The script's args (the widgets' values, or `alwayson_scripts` args) as HandRefinerArgs.

    Positional values are the fields in order (None: the default); a dict (alone or first, as the WebUI's API pads
    the rest with the widgets' defaults) names fields. Raises ValidationError / ValueError naming the field."""
    values = list(values)
    if values and isinstance(values[0], dict):
        given = dict(values[0])
    else:
        names = HandRefinerArgs.field_names()
        if len(values) > len(names):
            raise ValueError(f"HandRefiner takes at most {len(names)} args ({', '.join(names)}), got {len(values)}")
        given = {name: value for name, value in zip(names, values) if value is not None}
    unknown = sorted(set(given) - set(HandRefinerArgs.__fields__))
    if unknown:
        raise ValueError(f"unknown HandRefiner args {unknown}; valid names: {', '.join(HandRefinerArgs.field_names())}")
    update = {name: _from_widget(name, value) for name, value in given.items()}
    return HandRefinerArgs(**{**defaults.dict(), **update})


def args_from_named_values(names: Sequence[str], values: Sequence[Any],
                           defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """HandRefinerArgs from some widgets' values, the widgets named by their fields (in any order)."""
    return args_from_script_args([dict(zip(names, values))], defaults)


def setting_spec(name: str) -> Tuple[Any, str, Dict[str, Any]]:
    """(default, label, gradio kwargs) of the settings entry holding field `name`'s default."""
    info = HandRefinerArgs.__fields__[name]
    label = info.field_info.title.replace("HandRefiner ", "Default ")
    kind = info.type_
    kwargs: Dict[str, Any] = {}
    if name in ("mode", "mesh_model"):
        kwargs["choices"] = list(info.outer_type_.__args__)
    elif isinstance(kind, type) and issubclass(kind, (int, float)) and not issubclass(kind, bool):
        kwargs = {"minimum": getattr(kind, "ge", 0), "maximum": getattr(kind, "le", 1),
                  "step": 1 if issubclass(kind, int) else 0.01}
    return info.default, label, kwargs


def describe_error(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)
