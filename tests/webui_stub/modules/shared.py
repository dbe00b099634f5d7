from __future__ import annotations

import argparse

from modules import options, paths, shared_state, shared_total_tqdm

models_path = paths.models_path
script_path = paths.script_path
data_path = paths.data_path
extensions_dir = paths.extensions_dir

cmd_opts = argparse.Namespace(ckpt_dir=None, lowvram=False, medvram=False, api=True)
opts = options.Options({
    "samples_format": options.OptionInfo("png", "File format for images"),
    "auto_vae_precision_bfloat16": options.OptionInfo(False, "Automatically convert VAE to bfloat16"),
    "auto_vae_precision": options.OptionInfo(True, "Automatically revert VAE to 32-bit floats"),
})
state = shared_state.State()
sd_model = None
total_tqdm = shared_total_tqdm.TotalTQDM()

OptionInfo = options.OptionInfo
