"""Scripts: the base class an extension's script derives from, the per-image hook arguments, the registry of
loaded script classes, and `ScriptRunner` (p.scripts) with the per-image hooks process_images calls."""
from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr

from modules import paths

AlwaysVisible = object()   # what show() returns for a script that is always on (an accordion, not a dropdown entry)
current_basedir = paths.script_path
scripts_data = []          # ScriptClassData of every loaded script
ScriptClassData = namedtuple("ScriptClassData", "script_class path basedir module")
errors = []                # (hook, script, exception): the stand-in's record of what the WebUI reports and goes past


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index, self.mask_for_overlay, self.overlay_image = index, mask_for_overlay, overlay_image


@dataclass
class OnComponent:
    component: gr.blocks.Block


class Script:
    args_from = args_to = None
    is_txt2img = is_img2img = False
    tabname = None   # "txt2img" or "img2img", set by the WebUI before ui()
    infotext_fields = paste_field_names = None
    on_after_component_elem_id = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def on_after_component(self, callback, *, elem_id):
        """callback(OnComponent) once the UI has made the component with that elem_id."""
        self.on_after_component_elem_id = (self.on_after_component_elem_id or []) + [(elem_id, callback)]

    def elem_id(self, item_id):
        """script_[txt2img_|img2img_]<title, lower case, spaces as _, other non-word characters dropped>_<item>; the
        tab only for scripts shown the same way on both tabs."""
        tab = ("img2img_" if self.is_img2img else "txt2img_") if self.show(True) == self.show(False) else ""
        title = re.sub(r"[^a-z0-9_]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tab}{title}_{item_id}"


class ScriptRunner:
    def __init__(self, alwayson_scripts=()):
        self.alwayson_scripts = list(alwayson_scripts)

    def _each(self, hook, p, *hook_args):
        for script in self.alwayson_scripts:
            try:
                getattr(script, hook)(p, *hook_args, *p.script_args[script.args_from:script.args_to])
            except Exception as e:
                errors.append((hook, script, e))

    def postprocess_image(self, p, pp):
        self._each("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo):
        self._each("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp):
        self._each("postprocess_image_after_composite", p, pp)
