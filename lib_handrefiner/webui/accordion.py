"""What each widget of the accordion shows (its layout is settings.groups): its value and, for models, samplers
and schedules, its choices."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from lib_handrefiner.settings import (
    AUTOMATIC_SCHEDULER,
    BUILTIN_SAMPLER,
    CURRENT_MODEL,
    HandRefinerArgs,
    layout_fields,
    to_widget,
)


@dataclass(frozen=True)
class WidgetSpec:
    name: str
    value: Any
    choices: Optional[List[str]] = None   # for dropdowns whose choices are model files


def widget_specs(defaults: HandRefinerArgs, controlnets: Sequence[str], checkpoints: Sequence[str],
                 samplers: Sequence[str] = (BUILTIN_SAMPLER,), schedulers: Sequence[str] = (AUTOMATIC_SCHEDULER,)
                 ) -> List[WidgetSpec]:
    """What each widget after the accordion shows, in layout order."""
    specs = []
    for name in layout_fields():
        value = to_widget(name, getattr(defaults, name))
        choices = None
        if name == "controlnet":
            choices = sorted(set(controlnets) | {defaults.controlnet})
        elif name == "inpaint_checkpoint":
            choices = [CURRENT_MODEL] + sorted(set(checkpoints) | ({defaults.inpaint_checkpoint} - {""}))
        elif name == "sampler":
            choices = list(samplers) + [n for n in [defaults.sampler] if n not in samplers]
        elif name == "scheduler":
            choices = list(schedulers) + [n for n in [defaults.scheduler] if n not in schedulers]
        specs.append(WidgetSpec(name, value, choices))
    return specs


def hover_text(name: str) -> str:
    """A field's help as the accordion shows it: on hover, in plain text (no markdown backticks)."""
    return " ".join(HandRefinerArgs.__fields__[name].field_info.description.replace("`", "").split())


def reused_seed(generation_info: str, index: int, parse_infotext: Callable[[str], Dict[str, Any]]) -> int:
    """The recycle button beside the hand seed: the hand seed of the gallery's image `index` (its "HandRefiner
    seed", else its "Seed", which a hand seed of -1 uses), from the WebUI's generation info JSON; -1 when there
    is none."""
    try:
        infotexts = json.loads(generation_info or "{}").get("infotexts") or []
        params = parse_infotext(infotexts[max(int(index), 0) if int(index) < len(infotexts) else 0])
    except (ValueError, TypeError, AttributeError, IndexError):
        return -1
    title = HandRefinerArgs.__fields__["seed"].field_info.title
    for key in (title, "Seed"):
        try:
            return int(params[key])
        except (KeyError, TypeError, ValueError):
            continue
    return -1
