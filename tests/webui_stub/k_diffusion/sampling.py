"""Stand-in for k_diffusion.sampling: the samplers the stand-in WebUI lists and the schedules it uses, with
k-diffusion's signatures, written for the tests. Random noise comes from `torch.randn_like` looked up through
this module's `torch` global, which the WebUI replaces (sd_samplers_common.TorchHijack) with the job's seeds."""
from __future__ import annotations

import math

import torch


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7., device='cpu'):
    """Karras et al. (2022): n noise levels evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return append_zero((top + ramp * (bottom - top)) ** rho).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device='cpu'):
    """n noise levels evenly spaced in log sigma, then 0."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def to_d(x, sigma, denoised):
    """The ODE derivative dx/dsigma of x = x0 + sigma * eps, with x0 estimated by the denoiser."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add noise of std sigma_up."""
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def default_noise_sampler(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic step: raise the noise level to sigma_hat by adding fresh noise (s_churn 0: none)."""
    churn = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
    sigma_hat = sigmas[i] * (churn + 1)
    if churn > 0:
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float('inf'), s_noise=1.):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigma_hat, 'denoised': denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                s_tmax=float('inf'), s_noise=1.):
    """Heun's second-order method: two denoiser calls per step except the last."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigma_hat, 'denoised': denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            x = x + (d + to_d(x_2, sigmas[i + 1], denoised_2)) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M): a multistep exponential integrator in log sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])

    def t_of(sigma):
        return sigma.log().neg()

    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - t_of(sigmas[i - 1])) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            target = denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * target
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81,
                        eta=0., s_noise=1., noise_sampler=None, return_info=False):
    """An adaptive step size solver in t = −log σ with k-diffusion's signature (its own method, simpler: orders 1
    and 2 only, an integral controller). Each attempt takes a first-order step and a second-order one (which also
    evaluates the midpoint); the step is kept when they agree within rtol/atol, and resized either way."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    t, t_end = -math.log(float(sigma_max)), -math.log(float(sigma_min))
    h, x_prev = h_init, x
    info = {'steps': 0, 'nfe': 0, 'n_accept': 0, 'n_reject': 0}
    while t < t_end - 1e-5:
        t_next = min(t_end, t + h)
        sigma, sigma_next, sigma_mid = math.exp(-t), math.exp(-t_next), math.exp(-(t + t_next) / 2)
        denoised = model(x, sigma * s_in, **extra_args)
        x_low = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * denoised
        x_mid = (sigma_mid / sigma) * x + (1 - sigma_mid / sigma) * denoised
        denoised_mid = model(x_mid, sigma_mid * s_in, **extra_args)
        x_high = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * denoised_mid
        scale = torch.maximum(torch.tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / scale)) / x.numel() ** 0.5
        factor = 1 + math.atan((1 / (error + 1e-8)) ** (icoeff / 2) - 1)
        info['nfe'] += 2
        info['steps'] += 1
        if factor >= accept_safety:
            if callback is not None:
                callback({'x': x, 'i': info['steps'] - 1, 'sigma': sigma, 'sigma_hat': sigma, 'denoised': denoised})
            x_prev, x, t = x_low, x_high, t_next
            info['n_accept'] += 1
        else:
            info['n_reject'] += 1
        h *= factor
    return (x, info) if return_info else x
