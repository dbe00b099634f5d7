from __future__ import annotations

import json
import os

import gradio as gr

_SAVED_TYPES = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)


class UiLoadsave:
    """ui-config.json (`ui_settings`, read from `filename` when it exists): the first start records the widgets'
    values under "<tab>/<label>/value"; later starts put a recorded value back on its widget, unless the widget says
    do_not_save_to_config or a choice list no longer has it. The stand-in keeps `value` only."""

    def __init__(self, filename=None):
        self.filename = filename
        self.ui_settings = {}
        if filename and os.path.exists(filename):
            with open(filename, encoding="utf8") as file:
                self.ui_settings = json.load(file)

    def add_component(self, path, x):
        if type(x) not in _SAVED_TYPES or getattr(x, "do_not_save_to_config", False):
            return
        key = path + "/value"
        if self.ui_settings.get(key) is None:
            self.ui_settings[key] = x.value
            return
        recorded = self.ui_settings[key]
        if isinstance(x, (gr.Radio, gr.Dropdown)):
            choices = [c[0] if isinstance(c, tuple) else c for c in x.choices or []]
            if recorded not in choices:
                return
        x.value = str(recorded) if isinstance(x, gr.Textbox) else recorded

    def add_block(self, x, path=""):
        for child in getattr(x, "children", None) or ():
            self.add_block(child, path)
        if not hasattr(x, "children") and x.label is not None:
            self.add_component(f"{path}/{x.label}", x)
