"""k-diffusion samplers (a subset of the WebUI's list) over k-diffusion's CompVisDenoiser."""
from __future__ import annotations

import inspect

import k_diffusion.external
import k_diffusion.sampling

from modules import devices, sd_samplers_common, sd_schedulers, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser

# (label, k-diffusion function, aliases, options): first order, ancestral, second order, multistep, adaptive.
_SAMPLERS = [("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
             ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
             ("Euler", "sample_euler", ["k_euler"], {}),
             ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
             ("DPM adaptive", "sample_dpm_adaptive", ["k_dpm_ad"], {"uses_ensd": True})]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, fn=fn: _KDiffusionSampler(fn, model), aliases, options)
    for label, fn, aliases, options in _SAMPLERS]


class _CFGDenoiserKDiffusion(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.model_wrap = k_diffusion.external.CompVisDenoiser(shared.sd_model,
                                                               quantize=shared.opts.enable_quantization)


class _KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.func = getattr(k_diffusion.sampling, funcname)
        self.model_wrap_cfg = _CFGDenoiserKDiffusion(self)

    def get_sigmas(self, p, steps):
        """σ levels of the schedule type chosen (Automatic: the sampler's own, else the model's), then 0."""
        name = p.scheduler or "Automatic"
        if name == "Automatic":
            name = self.config.options.get("scheduler")
        scheduler = sd_schedulers.schedulers_map.get(name)
        if scheduler is None or scheduler.function is None:
            return self.model_wrap_cfg.inner_model.get_sigmas(steps).cpu()
        p.extra_generation_params["Schedule type"] = scheduler.label
        model_sigmas = self.model_wrap_cfg.inner_model.sigmas
        extra = {"inner_model": self.model_wrap_cfg.inner_model} if scheduler.need_inner_model else {}
        return scheduler.function(n=steps, sigma_min=model_sigmas[0].item(), sigma_max=model_sigmas[-1].item(),
                                  device=devices.cpu, **extra).cpu()

    def img2img_start(self, p, x, noise, steps, t_enc):
        sigmas = self.get_sigmas(p, steps)[steps - t_enc - 1:]
        if "sigma_min" in inspect.signature(self.func).parameters:   # DPM adaptive: the range, not the steps
            return x + noise * sigmas[0], {"sigma_min": sigmas[-2], "sigma_max": sigmas[0]}
        return x + noise * sigmas[0], {"sigmas": sigmas}
