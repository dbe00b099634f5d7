from __future__ import annotations

import gradio as gr


class InputAccordion(gr.Checkbox):
    """A checkbox shown as an accordion: the accordion is open exactly when the (hidden) checkbox is ticked, so the
    value is the enable switch of a script's section."""

    _count = 0

    def __init__(self, value, **kwargs):
        InputAccordion._count += 1
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{InputAccordion._count}"
        super().__init__(value, **dict(kwargs, elem_id=self.accordion_id + "-checkbox", visible=False))
        self.accordion = gr.Accordion(**dict(kwargs, elem_id=self.accordion_id, open=value,
                                             label=kwargs.get("label", "Accordion"), elem_classes=["input-accordion"]))

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        self.accordion.__exit__(*exc)

    def get_block_name(self):
        return "checkbox"


class _FormComponent:
    def get_expected_parent(self):
        return gr.components.Form


class ToolButton(_FormComponent, gr.Button):
    """A small button holding one symbol, that fits in a form row (the WebUI's seed dice and recycle)."""

    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self):
        return "button"
