"""What the stand-in's samplers share: the registry record, img2img step counts, the seeded noise k-diffusion
draws, and a base class that runs an img2img pass with progress, Interrupt/Skip and the sampler's own options."""
from __future__ import annotations

import inspect
from collections import namedtuple

import k_diffusion.sampling
import torch

from modules import shared


class SamplerData(namedtuple("SamplerData", "name constructor aliases options")):
    def total_steps(self, steps):
        """Denoiser calls per step count: second-order samplers call it twice a step."""
        return steps * (2 if self.options.get("second_order") else 1)


class InterruptedException(BaseException):
    """Raised inside a pass to end it; the sampler then returns its last latent."""


def setup_img2img_steps(p, steps=None):
    """(length of the schedule, index it starts at) for img2img at p.denoising_strength. By default the schedule has
    p.steps levels and the pass runs the last strength·steps of them; with "img2img does exactly the steps asked"
    the schedule is lengthened so that the pass runs p.steps − 1 … of it."""
    strength = min(p.denoising_strength, 0.999)
    if steps is None and not shared.opts.img2img_fix_steps:
        return p.steps, int(strength * p.steps)
    asked = steps or p.steps
    return (int(asked / strength) if p.denoising_strength > 0 else 0), asked - 1


def decode_first_stage(model, x):
    from modules import devices
    with torch.no_grad():
        return model.decode_first_stage(x.to(devices.dtype_vae))


def images_tensor_to_samples(image, approximation=None, model=None):
    """[0, 1] images → latents: one draw of the VAE posterior per image."""
    from modules import devices
    model = shared.sd_model if model is None else model
    pixels = image.to(shared.device, devices.dtype_vae) * 2 - 1
    latents = [model.get_first_stage_encoding(model.encode_first_stage(one[None])) for one in pixels]
    return torch.cat(latents)


def store_latent(decoded):
    """The live preview's latent (the stand-in makes no preview image)."""
    shared.state.current_latent = decoded


class _SeededTorch:
    """What k_diffusion.sampling sees as `torch` during a pass: torch, except that randn_like is the pass's next
    seeded draw (ImageRNG), so a pass is the same for the same seed on any device."""

    def __init__(self, rng):
        self._rng = rng

    def randn_like(self, x):
        return self._rng.next()

    def __getattr__(self, name):
        return torch.__dict__[name] if name in torch.__dict__ else getattr(torch, name)


# Options a sampling function takes from p when its signature has them.
_OWN_OPTIONS = {"sample_euler": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
                "sample_heun": ("s_churn", "s_tmin", "s_tmax", "s_noise")}


class Sampler:
    """A sampling function over the CFG denoiser `model_wrap_cfg`. Subclasses give `img2img_start`: the noised
    start latent and the schedule argument of the function."""
    eta_option, eta_infotext, eta_default = "eta_ancestral", "Eta", 1.0

    def __init__(self, funcname):
        self.funcname = self.func = funcname
        self.config = self.p = self.model_wrap_cfg = self.last_latent = self.stop_at = self.sampler_extra_args = None
        self.conditioning_key = getattr(shared.sd_model.model, "conditioning_key", "crossattn")

    def callback_state(self, d):
        if self.stop_at is not None and d["i"] > self.stop_at:
            raise InterruptedException
        shared.state.sampling_step = d["i"]
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            return func()
        except (InterruptedException, RecursionError):
            return self.last_latent

    def initialize(self, p) -> dict:
        """Points the denoiser at p and k-diffusion at p's noise; the function's keyword options from p."""
        self.p = p
        cfg = self.model_wrap_cfg
        cfg.p, cfg.mask, cfg.nmask, cfg.step = p, getattr(p, "mask", None), getattr(p, "nmask", None), 0
        k_diffusion.sampling.torch = _SeededTorch(p.rng)
        takes = inspect.signature(self.func).parameters
        kwargs = {name: getattr(p, name) for name in _OWN_OPTIONS.get(self.funcname, ()) if name in takes}
        if "eta" in takes:
            eta = p.eta if p.eta is not None else getattr(shared.opts, self.eta_option)
            if eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext] = eta
            kwargs["eta"] = eta
        return kwargs

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = setup_img2img_steps(p, steps)
        start, schedule = self.img2img_start(p, x, noise, steps, t_enc)
        kwargs = {**self.initialize(p), **schedule}
        self.model_wrap_cfg.init_latent = self.last_latent = x
        self.sampler_extra_args = dict(cond=conditioning, image_cond=image_conditioning,
                                       uncond=unconditional_conditioning, cond_scale=p.cfg_scale,
                                       s_min_uncond=p.s_min_uncond)
        return self.launch_sampling(t_enc + 1, lambda: self.func(
            self.model_wrap_cfg, start, extra_args=self.sampler_extra_args, disable=False,
            callback=self.callback_state, **kwargs))

    def img2img_start(self, p, x, noise, steps, t_enc):
        raise NotImplementedError
