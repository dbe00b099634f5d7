"""What each widget of the accordion shows (its layout is settings.groups): its value and, for models, samplers
and schedules, its choices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from ..settings import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, CURRENT_MODEL, HandRefinerArgs, layout_fields, to_widget


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
