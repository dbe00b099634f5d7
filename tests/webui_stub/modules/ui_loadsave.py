from __future__ import annotations

import gradio as gr


class UiLoadsave:
    """ui-config.json: the first start records each widget's value; later starts set the recorded value back onto
    the widget (after the scripts' ui() built it) unless the widget has `do_not_save_to_config`. Only `value`
    here; `ui_settings` is the file's content."""

    def __init__(self, ui_settings=None):
        self.ui_settings = dict(ui_settings or {})

    def add_component(self, path, x):
        if getattr(x, "do_not_save_to_config", False):
            return
        if type(x) not in (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown):
            return
        key = f"{path}/value"
        saved_value = self.ui_settings.get(key, None)
        if saved_value is None:
            self.ui_settings[key] = x.value
        elif type(x) in (gr.Radio, gr.Dropdown) and saved_value not in [
                c[0] if isinstance(c, tuple) else c for c in (x.choices or [])]:
            pass
        else:
            x.value = str(saved_value) if type(x) == gr.Textbox else saved_value

    def add_block(self, x, path=""):
        if hasattr(x, "children"):
            for c in x.children:
                self.add_block(c, path)
        elif x.label is not None:
            self.add_component(f"{path}/{x.label}", x)
