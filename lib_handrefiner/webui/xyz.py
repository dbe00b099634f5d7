"""The XYZ-grid script's "[HandRefiner] …" axes and the per-cell overrides they record on the job."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from lib_handrefiner.settings import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, FIELDS, XYZ_FIELDS, HandRefinerArgs, replace

XYZ_ATTRIBUTE = "handrefiner_xyz"             # p.<this>: {field: value} set by the XYZ-grid axes


def apply_xyz_overrides(args: HandRefinerArgs, p: Any) -> HandRefinerArgs:
    overrides = getattr(p, XYZ_ATTRIBUTE, None) or {}
    return replace(args, **overrides) if overrides else args


def xyz_setter(name: str) -> Callable[[Any, Any, Any], None]:
    """An XYZ-grid `apply(p, x, xs)`: records the override on p. The grid copies p shallowly per cell, so a new
    dict is made each time instead of changing one that other cells share."""

    def apply(p: Any, x: Any, xs: Any) -> None:
        setattr(p, XYZ_ATTRIBUTE, {**(getattr(p, XYZ_ATTRIBUTE, None) or {}), name: x})

    return apply


def xyz_confirm(name: str) -> Callable[[Any, Sequence[Any]], None]:
    """An XYZ-grid `confirm(p, xs)`: every value must be valid for the field, before the grid starts."""

    def confirm(p: Any, xs: Sequence[Any]) -> None:
        for x in xs:
            HandRefinerArgs(**{name: x})

    return confirm


def xyz_confirm_choice(name: str, choices: Callable[[], Sequence[str]]) -> Callable[[Any, Sequence[Any]], None]:
    """An XYZ-grid `confirm(p, xs)` for a field whose values are the WebUI's names (samplers, schedule types)."""
    title = FIELDS[name].title   # "HandRefiner sampler"

    def confirm(p: Any, xs: Sequence[Any]) -> None:
        known = list(choices())
        for x in xs:
            if x not in known:
                raise RuntimeError(f"{title}: unknown {x!r}; choose from {', '.join(known)}")

    return confirm


def register_xyz_axes(xyz_module: Any, samplers: Callable[[], Sequence[str]] = lambda: [BUILTIN_SAMPLER],
                      schedulers: Callable[[], Sequence[str]] = lambda: [AUTOMATIC_SCHEDULER]) -> bool:
    """Adds "[HandRefiner] …" axes to the XYZ-grid script's options (once); `samplers()` and `schedulers()` are
    the names the sampler and schedule-type axes offer (read when the grid's UI asks)."""
    from lib_handrefiner.ui import field_label

    options = xyz_module.axis_options
    if any(str(getattr(o, "label", "")).startswith("[HandRefiner]") for o in options):
        return False
    named = {"mode": lambda: ["fixed", "adaptive"], "sampler": samplers, "scheduler": schedulers}
    for name in XYZ_FIELDS:
        label = f"[HandRefiner] {field_label(name)}"
        choices = named.get(name)
        if choices is None:
            options.append(xyz_module.AxisOption(label, float, xyz_setter(name), confirm=xyz_confirm(name)))
            continue
        # mode's values are the field's own; the sampler's and schedule's are the WebUI's names
        confirm = xyz_confirm(name) if name == "mode" else xyz_confirm_choice(name, choices)
        options.append(xyz_module.AxisOption(label, str, xyz_setter(name), confirm=confirm, choices=choices))
    return True


def find_xyz_module(scripts_data: Sequence[Any]) -> Any:
    """The XYZ-grid script's module among the loaded scripts (the WebUI names script modules by file name)."""
    for data in scripts_data:
        if getattr(data.script_class, "__module__", "") == "xyz_grid.py" and hasattr(data.module, "AxisOption"):
            return data.module
    return None
