"""Stand-in for k_diffusion.external.CompVisDenoiser: an ldm (eps-predicting) model as a denoiser of
x = x0 + sigma * eps, with sigma = sqrt((1 - alpha_bar) / alpha_bar) per DDPM timestep."""
from __future__ import annotations

import torch
from torch import nn

from . import sampling


class CompVisDenoiser(nn.Module):
    def __init__(self, model, quantize=False, device='cpu'):
        super().__init__()
        self.inner_model = model
        alphas_cumprod = model.alphas_cumprod
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer('sigmas', sigmas)
        self.register_buffer('log_sigmas', sigmas.log())
        self.quantize = quantize
        self.sigma_data = 1.

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        """n levels evenly spaced in timestep from the last to the first, then 0."""
        if n is None:
            return sampling.append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return sampling.append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        """The (fractional) timestep whose sigma is `sigma`, interpolating log sigma; the nearest with quantize."""
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(self.log_sigmas) - 2)
        w = ((self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[low + 1])).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t):
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, input, sigma, **kwargs):
        c_out = sampling.append_dims(-sigma, input.ndim)
        c_in = sampling.append_dims(1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5, input.ndim)
        return input + self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out
