"""Where each setting shows up: the accordion's groups, the settings section's defaults and the XYZ grid's axes.

`GROUPS` places fields top to bottom; "enabled" is the accordion itself. A field of no group goes in "More" at the
end, so a new field needs no entry here. The script still returns the widgets in field order, so positional
`alwayson_scripts` args are the fields in order whatever the layout.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from lib_handrefiner.settings.fields import field_names

# What a user sets on every job is visible at once (strength, mode, the hands' prompts, ControlNet and checkpoint);
# the rest is in groups that start collapsed, their fields side by side (the script puts an accordion's fields in
# one wrapping row). In img2img the hand boxes come first, as EDITOR_GROUP (with the box editor).
BOXES_GROUP = "accordion:Hand boxes"
EDITOR_GROUP = "accordion:Edit hand boxes"
GROUPS: Dict[str, Tuple[str, ...]] = {
    "row:main": ("strength", "mode"),
    "row:prompts": ("prompt", "negative_prompt"),
    "row:models": ("controlnet", "inpaint_checkpoint"),
    "accordion:Sampling": ("sampler", "scheduler", "steps", "cfg_scale", "denoising_strength", "seed",
                           "extra_negative"),
    "accordion:Adaptive strength": ("adaptive_strengths", "adaptive_reference", "adaptive_factor",
                                    "adaptive_batch"),
    "accordion:Mesh and previews": ("mesh_model", "mesh_fallback", "save_depth", "save_mask"),
    "accordion:Mask, crop and detection": ("mask_padding", "mask_padding_ratio", "mask_dilation", "mask_feather",
                                           "crop", "crop_resolution", "crop_min_side", "hands_together", "max_hands",
                                           "detection_confidence", "presence_confidence", "min_hand_size"),
    BOXES_GROUP: ("boxes", "boxes_mode"),
}
OTHER_GROUP = "accordion:More"

# Fields whose defaults the WebUI's settings section holds (the others keep the model's defaults).
SETTING_FIELDS = ("strength", "mode", "extra_negative", "mesh_model", "mesh_fallback", "controlnet",
                  "inpaint_checkpoint", "steps", "cfg_scale", "denoising_strength", "mask_padding", "mask_feather",
                  "crop_resolution", "max_hands")
# Fields the XYZ grid offers as "[HandRefiner] …" axes.
XYZ_FIELDS = ("strength", "mode", "sampler", "scheduler")


def layout(img2img: bool = False) -> List[Tuple[str, List[str]]]:
    """(container, fields) top to bottom; container is "row:…", "column:…" or "accordion:<label>"; in img2img the
    hand boxes first, as EDITOR_GROUP."""
    fields = field_names()[1:]
    out = [(group, [n for n in names if n in fields]) for group, names in GROUPS.items()]
    grouped = {n for _, names in out for n in names}
    out.append((OTHER_GROUP, [n for n in fields if n not in grouped]))
    if img2img:
        boxes = [(EDITOR_GROUP, names) for group, names in out if group == BOXES_GROUP]
        out = boxes + [(group, names) for group, names in out if group != BOXES_GROUP]
    return [(group, names) for group, names in out if names]


def layout_fields(img2img: bool = False) -> List[str]:
    """The fields in the order the widgets are made (top to bottom)."""
    return [name for _, names in layout(img2img) for name in names]
