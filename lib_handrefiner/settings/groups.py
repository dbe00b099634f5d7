"""Where each setting shows up: the accordion's groups, the settings section's defaults and the XYZ grid's axes.

`GROUPS` places fields top to bottom; "enabled" is the accordion itself. A field of no group goes in "More" at the
end, so a new field needs no entry here. The script still returns the widgets in field order, so positional
`alwayson_scripts` args are the fields in order whatever the layout.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .fields import field_names

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

# Fields whose defaults the WebUI's settings section holds (the others keep the model's defaults).
SETTING_FIELDS = ("strength", "mode", "extra_negative", "mesh_model", "mesh_fallback", "controlnet",
                  "inpaint_checkpoint", "steps", "cfg_scale", "denoising_strength", "mask_padding", "mask_feather",
                  "crop_resolution", "max_hands")
# Fields the XYZ grid offers as "[HandRefiner] …" axes.
XYZ_FIELDS = ("strength", "mode", "sampler", "scheduler")


def layout() -> List[Tuple[str, List[str]]]:
    """(container, fields) top to bottom; container is "row:…", "column:…" or "accordion:<label>"."""
    fields = field_names()[1:]
    out = [(group, [n for n in names if n in fields]) for group, names in GROUPS.items()]
    grouped = {n for _, names in out for n in names}
    out.append((OTHER_GROUP, [n for n in fields if n not in grouped]))
    return [(group, names) for group, names in out if names]


def layout_fields() -> List[str]:
    """The fields in the order the widgets are made (top to bottom)."""
    return [name for _, names in layout() for name in names]
