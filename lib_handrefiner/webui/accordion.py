"""The accordion's layout (which widgets sit together, top to bottom) and what each widget shows."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..args import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, HandRefinerArgs
from .arguments import to_widget
from .env import CURRENT_MODEL

# Where each setting sits in the accordion, top to bottom; "enabled" is the accordion. What a user sets on every
# job is visible at once (strength, mode, the hands' prompts, ControlNet and checkpoint); the rest is in groups that
# start collapsed, their fields side by side (an accordion's fields sit in one wrapping row). Fields in no group go
# in "More" at the end. The script still returns the widgets in HandRefinerArgs' field order, so positional
# `alwayson_scripts` args are the fields in order whatever the layout.
BOXES_GROUP = "accordion:Hand boxes"
GROUPS: Dict[str, Tuple[str, ...]] = {
    "row:main": ("strength", "mode"),
    "row:prompts": ("prompt", "negative_prompt"),
    "row:models": ("controlnet", "inpaint_checkpoint"),
    "accordion:Sampling": ("sampler", "scheduler", "steps", "cfg_scale", "denoising_strength", "seed",
                           "extra_negative"),
    "accordion:Adaptive strength": ("adaptive_strengths", "adaptive_reference", "adaptive_factor"),
    "accordion:Mesh and previews": ("mesh_model", "mesh_fallback", "save_depth", "save_mask"),
    "accordion:Mask, crop and detection": ("mask_padding", "mask_padding_ratio", "mask_dilation", "mask_feather",
                                           "crop", "crop_resolution", "crop_min_side", "hands_together", "max_hands",
                                           "detection_confidence", "presence_confidence", "min_hand_size"),
    BOXES_GROUP: ("boxes", "boxes_mode"),
}
OTHER_GROUP = "accordion:More"
# img2img: the hand boxes with their editor, first, where a user looks for them.
EDITOR_GROUP = "accordion:Edit hand boxes"


def layout(img2img: bool = False) -> List[Tuple[str, List[str]]]:
    """(container, fields) top to bottom; container is "row:…", "column:…" or "accordion:<label>". In img2img the
    hand boxes come first, as EDITOR_GROUP (the box editor's group)."""
    fields = HandRefinerArgs.field_names()[1:]
    out = [(group, [n for n in names if n in fields]) for group, names in GROUPS.items()]
    grouped = {n for _, names in out for n in names}
    out.append((OTHER_GROUP, [n for n in fields if n not in grouped]))
    if img2img:
        boxes = [(EDITOR_GROUP, names) for group, names in out if group == BOXES_GROUP]
        out = boxes + [(group, names) for group, names in out if group != BOXES_GROUP]
    return [(group, names) for group, names in out if names]


def hover_text(name: str) -> str:
    """A field's help as the accordion shows it: on hover, in plain text (no markdown backticks)."""
    return " ".join(HandRefinerArgs.__fields__[name].field_info.description.replace("`", "").split())


def layout_fields(img2img: bool = False) -> List[str]:
    """The fields in the order the widgets are made (top to bottom)."""
    return [name for _, names in layout(img2img) for name in names]


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
    for name in layout_fields():   # (the same fields in either tab)
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
