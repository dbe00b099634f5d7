from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr

from modules import paths

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


@dataclass
class OnComponent:
    component: gr.blocks.Block


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def elem_id(self, item_id):
        # script_[<tab>_]<title as lowercase identifier>_<item>; the tab only when shown on both tabs
        title = re.sub(r"[^a-z_0-9]", "", self.title().lower().replace(" ", "_"))
        tab = ("img2img_" if self.is_img2img else "txt2img_") if self.show(True) == self.show(False) else ""
        return f"script_{tab}{title}_{item_id}"


current_basedir = paths.script_path


def basedir():
    return current_basedir


ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


errors = []   # (hook, script, exception): the WebUI reports a script's exception and goes on


class ScriptRunner:
    """`p.scripts`: runs each always-on script's per-image hooks with its slice of `p.script_args`."""

    def __init__(self, alwayson_scripts=()):
        self.alwayson_scripts = list(alwayson_scripts)

    def _run(self, hook, p, *hook_args):
        for script in self.alwayson_scripts:
            try:
                getattr(script, hook)(p, *hook_args, *p.script_args[script.args_from:script.args_to])
            except Exception as e:
                errors.append((hook, script, e))

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._run("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs):
        self._run("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs):
        self._run("postprocess_image_after_composite", p, pp)
