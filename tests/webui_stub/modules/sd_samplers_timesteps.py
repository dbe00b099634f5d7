"""The WebUI's timestep samplers (DDIM only here): the model is called with the DDPM timestep t and the latent is
x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
from __future__ import annotations

import math

import k_diffusion.sampling
import torch

from modules import devices, sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser


@torch.no_grad()
def _ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """DDIM from timesteps[-1] down, each step to the ᾱ of the timestep below it (timesteps[0] is never run); one
    noise draw per step, scaled by η's σ (0 by default)."""
    alphas = model.inner_model.inner_model.alphas_cumprod
    ts = [int(t) for t in timesteps]
    for i, index in enumerate(range(len(ts) - 1, 0, -1)):
        a_t, a_prev = float(alphas[ts[index]]), float(alphas[ts[index - 1]])
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        eps = model(x, x.new_full((x.shape[0],), float(ts[index])), **(extra_args or {}))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * eps
             + sigma * k_diffusion.sampling.torch.randn_like(x))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


samplers_data_timesteps = [
    sd_samplers_common.SamplerData("DDIM", lambda model: CompVisSampler(_ddim, model), ["ddim"], {})]


class _TimestepModel(torch.nn.Module):
    """The model called with the timestep itself (alphas reachable as .inner_model.alphas_cumprod)."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, x, t, **cond):
        return self.inner_model.apply_model(x, t, **cond)


class _CFGDenoiserTimesteps(CFGDenoiser):
    mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        alpha = shared.sd_model.alphas_cumprod[sigma.long()].reshape(-1, 1, 1, 1)
        return (x_in - (1 - alpha).sqrt() * x_out) / alpha.sqrt()

    def __init__(self, sampler):
        super().__init__(sampler)
        self.model_wrap = _TimestepModel(shared.sd_model)


class CompVisSampler(sd_samplers_common.Sampler):
    eta_option, eta_infotext, eta_default = "eta_ddim", "Eta DDIM", 0.0

    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.model_wrap_cfg = _CFGDenoiserTimesteps(self)

    def img2img_start(self, p, x, noise, steps, t_enc):
        timesteps = (torch.arange(0, 1000, 1000 // steps, device=devices.device) + 1).clamp(0, 999)
        alpha = shared.sd_model.alphas_cumprod[timesteps[t_enc]]
        return x * alpha.sqrt() + noise * (1 - alpha).sqrt(), {"timesteps": timesteps[:t_enc]}
