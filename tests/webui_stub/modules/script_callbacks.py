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


# ---- sampling callbacks (the CFG denoiser's and img2img's) ------------------------------------------------------

errors = []   # (category, exception): the WebUI reports a callback's exception and goes on


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise = noise
        self.x = x
        self.xi = xi


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def _run(category, params):
    for c in list(callbacks[category]):
        try:
            c(params)
        except Exception as e:
            errors.append((category, e))


def on_extra_noise(callback, *, name=None):
    callbacks["extra_noise"].append(callback)


def on_cfg_denoiser(callback, *, name=None):
    callbacks["cfg_denoiser"].append(callback)


def on_cfg_denoised(callback, *, name=None):
    callbacks["cfg_denoised"].append(callback)


def on_cfg_after_cfg(callback, *, name=None):
    callbacks["cfg_after_cfg"].append(callback)


def extra_noise_callback(params: ExtraNoiseParams):
    _run("extra_noise", params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _run("cfg_after_cfg", params)


def remove_callbacks_for_function(callback_func):
    for category in callbacks.values():
        category[:] = [c for c in category if c != callback_func]
