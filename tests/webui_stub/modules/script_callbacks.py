"""Callback registries, by category, and the calls that run them. A failing callback is recorded in `errors` and the
others still run (the WebUI reports it and goes on)."""
from __future__ import annotations

_CATEGORIES = ("app_started", "ui_settings", "before_ui", "infotext_pasted", "cfg_denoiser", "cfg_denoised",
               "cfg_after_cfg")
callback_map = {f"callbacks_{category}": [] for category in _CATEGORIES}
errors = []   # (category, exception)


def _register(category):
    def on(callback, *, name=None):
        callback_map[f"callbacks_{category}"].append(callback)
    on.__name__ = f"on_{category}"
    return on


def _call(category, *args, order=1):
    for callback in list(callback_map[f"callbacks_{category}"])[::order]:
        try:
            callback(*args)
        except Exception as e:
            errors.append((category, e))


on_app_started = _register("app_started")
on_ui_settings = _register("ui_settings")
on_before_ui = _register("before_ui")
on_infotext_pasted = _register("infotext_pasted")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_after_cfg = _register("cfg_after_cfg")


def remove_callbacks_for_function(callback_func):
    for registered in callback_map.values():
        registered[:] = [c for c in registered if c != callback_func]


def app_started_callback(demo, app):
    _call("app_started", demo, app)


def ui_settings_callback():
    _call("ui_settings")


def before_ui_callback():
    _call("before_ui", order=-1)


def infotext_pasted_callback(infotext: str, params: dict):
    _call("infotext_pasted", infotext, params)


class _Params:
    """What a callback may read and change (positional, as the WebUI constructs them; missing ones are None)."""
    _fields: tuple = ()

    def __init__(self, *values):
        for name, value in zip(self._fields, values + (None,) * len(self._fields)):
            setattr(self, name, value)


class CFGDenoiserParams(_Params):
    _fields = ("x", "image_cond", "sigma", "sampling_step", "total_sampling_steps", "text_cond", "text_uncond",
               "denoiser")


class CFGDenoisedParams(_Params):
    _fields = ("x", "sampling_step", "total_sampling_steps", "inner_model")


class AfterCFGCallbackParams(_Params):
    _fields = ("x", "sampling_step", "total_sampling_steps")


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _call("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _call("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _call("cfg_after_cfg", params)
