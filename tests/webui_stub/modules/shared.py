"""The WebUI's shared globals that HandRefiner reads: settings, job state, command line, model and folders."""
from __future__ import annotations

import argparse

from modules import devices, options, paths, shared_state

models_path = paths.models_path
extensions_dir = paths.extensions_dir
cmd_opts = argparse.Namespace(ckpt_dir=None, lowvram=False, medvram=False, api=True)
# The settings HandRefiner and the stand-in read, at the WebUI 1.10.1's defaults.
_DEFAULTS = dict(
    samples_format="png", enable_quantization=False, randn_source="GPU", eta_noise_seed_delta=0, eta_ddim=0.0,
    eta_ancestral=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=0.0, s_noise=1.0, s_min_uncond=0.0, img2img_fix_steps=False,
    initial_noise_multiplier=1.0, inpainting_mask_weight=1.0, img2img_background_color="#ffffff",
    persistent_cond_cache=True, live_preview_content="Prompt", use_old_scheduling=False, CLIP_stop_at_last_layers=1,
    hide_samplers=[], auto_vae_precision=True, auto_vae_precision_bfloat16=False, emphasis="Original")
opts = options.Options({key: options.OptionInfo(value, key) for key, value in _DEFAULTS.items()})
OptionInfo = options.OptionInfo
device = devices.device
state = shared_state.State()
sd_model = None


class _TotalProgress:
    """The console's bar over all of a job's steps (`_tqdm` is the bar while one is shown; none here)."""

    def __init__(self):
        self._tqdm = None
        self.updates = 0

    def update(self):
        self.updates += 1

    def updateTotal(self, new_total):
        if self._tqdm is not None:
            self._tqdm.total = new_total


total_tqdm = _TotalProgress()
