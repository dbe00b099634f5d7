"""Classifier-free guidance around the model, the way every WebUI sampler calls it."""
from __future__ import annotations

import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)


class CFGDenoiser(torch.nn.Module):
    """One call: the model on [a row per (image, AND part)…, the negative row of each image], other extensions'
    three CFG callbacks, uncond + Σ weight·scale·(cond − uncond) per image, and img2img's mask blend with the
    original latent (timestep samplers blend the input, k-diffusion the result). Not in the stand-in: pix2pix,
    the SDXL refiner switch, NGMS and padded conds."""
    mask_before_denoising = False

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.model_wrap = None
        self.p = None
        self.mask = self.nmask = self.init_latent = None
        self.step = 0
        self.steps = None

    @property
    def inner_model(self):
        """The model in the sampler's parameterisation (subclasses set model_wrap)."""
        return self.model_wrap

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def _blend(self, x):
        return x * self.nmask + self.init_latent * self.mask

    def _run_model(self, x, sigma, text, text_uncond, image_cond):
        def call(rows, texts):
            return self.inner_model(x[rows], sigma[rows], cond={"c_crossattn": [texts], "c_concat": [image_cond[rows]]})

        n = text.shape[0]
        if text.shape[1] == text_uncond.shape[1]:   # same token count: one batch
            return call(slice(None), torch.cat([text, text_uncond]))
        return torch.cat([call(slice(0, n), text), call(slice(n, None), text_uncond)])

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        state = shared.state
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        conds_list, text = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        text_uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        if self.mask is not None and self.mask_before_denoising:
            x = self._blend(x)

        rows = [image for image, parts in enumerate(conds_list) for _ in parts] + list(range(len(conds_list)))
        params = CFGDenoiserParams(x[rows], image_cond[rows], sigma[rows], state.sampling_step, state.sampling_steps,
                                   text, text_uncond, self)
        cfg_denoiser_callback(params)
        x_in, sigma_in = params.x, params.sigma
        x_out = self._run_model(x_in, sigma_in, params.text_cond, params.text_uncond, params.image_cond)
        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        uncond_out = x_out[-len(conds_list):]
        denoised = uncond_out.clone()
        for image, parts in enumerate(conds_list):
            for row, weight in parts:
                denoised[image] += (x_out[row] - uncond_out[image]) * (weight * cond_scale)
        if self.mask is not None and not self.mask_before_denoising:
            denoised = self._blend(denoised)

        first = [parts[0][0] for parts in conds_list]
        self.sampler.last_latent = self.get_pred_x0(x_in[first], x_out[first], sigma)
        preview = self.sampler.last_latent if shared.opts.live_preview_content == "Prompt" else \
            self.get_pred_x0(x_in[first], denoised, sigma)
        sd_samplers_common.store_latent(preview)

        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        self.step += 1
        return after.x
