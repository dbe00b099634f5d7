"""The accordion's layout (which widgets sit together, top to bottom) and what each widget shows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..args import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, HandRefinerArgs
from .arguments import to_widget
from .env import CURRENT_MODEL

# Where each setting sits in the accordion, top to bottom; "enabled" is the accordion. Fields in no group go in
# "More" at the end. The script still returns the widgets in HandRefinerArgs' field order, so positional
# `alwayson_scripts` args are the fields in order whatever the layout.
GROUPS: Dict[str, Tuple[str, ...]] = {
    "row:main": ("strength", "mode"),
    "accordion:Adaptive strength": ("adaptive_strengths", "adaptive_reference", "adaptive_factor"),
    "column:prompts": ("prompt", "negative_prompt", "extra_negative"),
    "row:models": ("mesh_model", "mesh_fallback", "controlnet", "inpaint_checkpoint"),
    "row:sampler": ("sampler", "scheduler"),
    "row:sampling": ("steps", "cfg_scale", "denoising_strength", "seed"),
    "accordion:Mask, crop and detection": ("mask_padding", "mask_padding_ratio", "mask_dilation", "mask_feather",
                                           "crop", "crop_resolution", "crop_min_side", "hands_together", "max_hands",
                                           "detection_confidence", "presence_confidence", "min_hand_size",
                                           "boxes", "boxes_mode"),
    "row:previews": ("save_depth", "save_mask"),
}
OTHER_GROUP = "accordion:More"


def layout() -> List[Tuple[str, List[str]]]:
    """(container, fields) top to bottom; container is "row:…", "column:…" or "accordion:<label>"."""
    fields = HandRefinerArgs.field_names()[1:]
    out = [(group, [n for n in names if n in fields]) for group, names in GROUPS.items()]
    grouped = {n for _, names in out for n in names}
    out.append((OTHER_GROUP, [n for n in fields if n not in grouped]))
    return [(group, names) for group, names in out if names]


def layout_fields() -> List[str]:
    """The fields in the order the widgets are made (top to bottom)."""
    return [name for _, names in layout() for name in names]


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
