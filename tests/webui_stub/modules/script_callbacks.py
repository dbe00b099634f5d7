from __future__ import annotations

from collections import defaultdict

callbacks = defaultdict(list)   # category -> [callback]


def clear_callbacks() -> None:
    callbacks.clear()


def on_app_started(callback, *, name=None):
    callbacks["app_started"].append(callback)


def on_ui_settings(callback, *, name=None):
    callbacks["ui_settings"].append(callback)


def on_before_ui(callback, *, name=None):
    callbacks["before_ui"].append(callback)


def on_infotext_pasted(callback, *, name=None):
    callbacks["infotext_pasted"].append(callback)


def infotext_pasted_callback(infotext: str, params: dict):
    for c in callbacks["infotext_pasted"]:
        c(infotext, params)


def on_script_unloaded(callback, *, name=None):
    callbacks["script_unloaded"].append(callback)


def app_started_callback(demo, app):
    for c in callbacks["app_started"]:
        c(demo, app)


def ui_settings_callback():
    for c in callbacks["ui_settings"]:
        c()


def before_ui_callback():
    for c in reversed(callbacks["before_ui"]):
        c()
