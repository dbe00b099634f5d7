from __future__ import annotations

import argparse

from modules import devices, options, paths, shared_state, shared_total_tqdm

models_path = paths.models_path
script_path = paths.script_path
data_path = paths.data_path
extensions_dir = paths.extensions_dir

cmd_opts = argparse.Namespace(ckpt_dir=None, lowvram=False, medvram=False, api=True)
# The options HandRefiner and the stand-in's processing and samplers read, with the WebUI 1.10.1 defaults.
_OPTION_DEFAULTS = dict(
    samples_format="png", enable_quantization=False, randn_source="GPU", eta_noise_seed_delta=0, eta_ddim=0.0,
    eta_ancestral=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=0.0, s_noise=1.0, s_min_uncond=0.0, img2img_fix_steps=False,
    img2img_extra_noise=0.0, initial_noise_multiplier=1.0, inpainting_mask_weight=1.0, img2img_color_correction=False,
    img2img_background_color="#ffffff", sd_vae_encode_method="Full", sd_vae_decode_method="Full",
    batch_cond_uncond=True, persistent_cond_cache=True, live_preview_content="Prompt", use_old_scheduling=False,
    CLIP_stop_at_last_layers=1, hide_samplers=[], auto_vae_precision=True, auto_vae_precision_bfloat16=False,
    overlay_inpaint=True, emphasis="Original")
opts = options.Options({key: options.OptionInfo(value, key) for key, value in _OPTION_DEFAULTS.items()})
device = devices.device
state = shared_state.State()
sd_model = None
total_tqdm = shared_total_tqdm.TotalTQDM()

OptionInfo = options.OptionInfo
