"""The hand pass sampled by the WebUI's own sampling: any sampler and schedule type the WebUI lists.

`WebUISampling` is a `pipeline.SampleFn`: `refine_image` hands it each crop (image, mask, depth hint, prompts) and
gets the inpainted crops back, so crops, masks, compositing and the adaptive search stay the pipeline's. Each call
is one img2img inpainting pass of the WebUI on the crop (`StableDiffusionProcessingImg2Img`, masked content
"original"): the WebUI's prompt parsing and extra networks, its `image_conditioning` (mask channel and masked
latent) for a 9-channel model, its sampler and schedule, seeds and noise source, its VAE decode with the NaN fallback,
its
progress, live preview and Interrupt/Skip, and other extensions' CFG callbacks. Three things are added, all on
objects of this pass only (the job's `p`, its sampler and the WebUI's modules are left as they were):

- the HandRefiner ControlNet on the UNet (`control_injection.inject_control`), on both CFG branches;
- the paper's known-region blend (eq. 1–2): before every call of the pass's CFG denoiser, the known region of the
  sampler's own latent (changed in place, so the step starts from it) is the original re-noised, with fresh
  noise, to the level of that call; "known" is outside HandRefiner's blend mask (sampler.blend_mask), as in
  the built-in loop;
- the WebUI's own mask blend switched off (its latent mask is taken out of the pass), so the last step is not
  masked and the hand harmonises with its surroundings, as in the official sampler.

Noise levels. k-diffusion samplers (Euler, DPM++, …) call the denoiser with σ and work on x = x0 + σ·ε; the WebUI's
timesteps samplers (DDIM, PLMS, UniPC) call it with the DDPM timestep t and work on x = √ᾱ_t·x0 + √(1−ᾱ_t)·ε. The
two are the same point on two scales (x_k = x_t / √ᾱ_t with σ = √((1−ᾱ_t)/ᾱ_t)), so the known region is re-noised
on the scale of the sampler at hand: x0 + σ·ε, or √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ᾱ at int(t), as the WebUI reads
timesteps.

Adaptive step size (DPM adaptive). Its solver sizes each step by comparing a 2nd- and a 3rd-order solution built
from several denoiser calls; with fresh noise in the known region at every call the two differ there by noise,
the error estimate never falls and the solver shrinks its step again and again (96 denoiser passes where the
WebUI's own pass makes 18; 110 s against 6 s for DPM++ 2M at crop 256). For such a sampler the known region is
re-noised with one noise for the whole pass (x0 + σ·ε with ε fixed: a smooth path the error estimate can follow),
so it costs what the WebUI's own pass does.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from lib_handrefiner.sampler import InpaintRequest, SamplingInterrupted, blend_mask
from lib_handrefiner.settings import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER

Scales = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]   # noise level -> (x0 scale, ε scale)


@dataclass
class WebUIModules:
    """The WebUI modules this engine drives, handed in by the glue (the stand-in's in tests)."""
    processing: Any
    sd_samplers: Any
    sd_samplers_common: Any
    sd_samplers_timesteps: Any
    sd_schedulers: Any
    extra_networks: Any
    rng: Any
    devices: Any
    k_diffusion_sampling: Any


# ---- names ---------------------------------------------------------------------------------------------------

def sampler_choices(modules: WebUIModules) -> List[str]:
    """The sampler dropdown: the built-in first, then the samplers the WebUI shows."""
    return [BUILTIN_SAMPLER] + [n for n in modules.sd_samplers.visible_sampler_names() if n != BUILTIN_SAMPLER]


def all_sampler_names(modules: WebUIModules) -> List[str]:
    """Every sampler the WebUI has, hidden ones too (its API takes those as well)."""
    return [x.name for x in modules.sd_samplers.all_samplers]


def scheduler_choices(modules: WebUIModules) -> List[str]:
    return [s.label for s in modules.sd_schedulers.schedulers]


def check_sampler(name: str, modules: WebUIModules) -> str:
    """`name` when it is one of the WebUI's samplers (by its name, as the WebUI shows it); ValueError otherwise."""
    if name not in modules.sd_samplers.all_samplers_map:
        raise ValueError(f"sampler {name!r} is not one of the WebUI's samplers; choose one of: "
                         f"{', '.join(sampler_choices(modules))}")
    return name


def check_scheduler(name: str, modules: WebUIModules) -> str:
    """`name` when it is one of the WebUI's schedule types (by its label, as the WebUI shows it)."""
    if name not in scheduler_choices(modules):
        raise ValueError(f"schedule type {name!r} is not one of the WebUI's; choose one of: "
                         f"{', '.join(scheduler_choices(modules))}")
    return name


# ---- the blend -----------------------------------------------------------------------------------------------

def sigma_scales(sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-diffusion: x = x0 + σ·ε."""
    sigma = sigma.reshape(-1, 1, 1, 1)
    return torch.ones_like(sigma), sigma


def timestep_scales(alphas_cumprod: torch.Tensor) -> Scales:
    """Timesteps samplers: x = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, ᾱ at the integer part of t (as the WebUI's DDIM reads it)."""

    def scales(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        alpha = alphas_cumprod.to(t.device)[t.to(torch.long)].reshape(-1, 1, 1, 1).to(torch.float32)
        return alpha.sqrt(), (1.0 - alpha).sqrt()

    return scales


@contextlib.contextmanager
def known_region_blend(denoiser: torch.nn.Module, known: torch.Tensor, hand: torch.Tensor, scales: Scales,
                       draw_noise: Callable[[], torch.Tensor], before_call: Optional[Callable[[], None]] = None
                       ) -> Iterator[None]:
    """Inside the context, every call `denoiser(x, sigma, …)` first sets x (in place: it is the sampler's own
    latent) to hand·x + (1−hand)·(a·known + b·ε), (a, b) = scales(sigma), ε = draw_noise() fresh per call (paper
    eq. 1–2). The wrapper is the denoiser instance's `forward`; on exit the instance is as before. `before_call`
    runs first (it may raise to stop the pass)."""
    inner = denoiser.forward
    had_own = "forward" in denoiser.__dict__
    previous = denoiser.__dict__.get("forward")

    def forward(x: torch.Tensor, sigma: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if before_call is not None:
            before_call()
        a, b = scales(sigma)
        noised = a.to(x) * known.to(x) + b.to(x) * draw_noise().to(x)
        keep = hand.to(x)
        x.copy_(keep * x + (1.0 - keep) * noised)
        return inner(x, sigma, *args, **kwargs)

    denoiser.forward = forward
    try:
        yield
    finally:
        if had_own:
            denoiser.forward = previous
        else:
            del denoiser.forward


# ---- the engine ----------------------------------------------------------------------------------------------

class WebUISampling:
    """pipeline.SampleFn over the WebUI's sampling. `job` is the job's processing object (its extra networks are
    set back after a pass whose prompt named others); `on_pass(steps)` is told each pass's step count before it
    runs (the console's total progress)."""

    def __init__(self, modules: WebUIModules, sampler_name: str, scheduler: str = AUTOMATIC_SCHEDULER,
                 job: Any = None, on_pass: Optional[Callable[[int], None]] = None) -> None:
        self.modules = modules
        self.sampler_name = check_sampler(sampler_name, modules)
        self.scheduler = check_scheduler(scheduler, modules)
        self.job = job
        self.on_pass = on_pass
        self.passes = 0          # WebUI passes run (tests, benchmarks)

    def __call__(self, sd: Any, controlnet: Any, request: InpaintRequest, strengths: Sequence[float], seed: int,
                 callback: Optional[Callable[[int, int], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
        """The WebUI reports the steps itself (state.sampling_step, the console bar); `callback` is not used."""
        strengths = [float(s) for s in strengths]
        m = self.modules
        with _preserved_globals(m, int(seed)):
            p = self._prepare(request, len(strengths), int(seed))
            with _job_networks(m, p, self.job):
                p.setup_conds()
                if len(strengths) > 1 and any(len(parts) > 1 for parts in p.c.batch):
                    # With AND an image has several cond rows: one strength per pass keeps each row's strength.
                    return torch.cat([self(sd, controlnet, request, [s], seed, callback, should_stop)
                                      for s in strengths])
                samples = self._sample(p, sd, controlnet, request, strengths, should_stop)
            if should_stop is not None and should_stop():
                raise SamplingInterrupted
            images = m.processing.decode_latent_batch(p.sd_model, samples, target_device=m.devices.cpu,
                                                      check_for_nans=True)
            return torch.stack(list(images)).float().clamp(-1, 1)

    def _prepare(self, request: InpaintRequest, batch: int, seed: int) -> Any:
        """What process_images does for one batch before its conds: prompts, seeds, init (the sampler, the init
        latent, image_conditioning), the noise generator, the prompts' extra networks parsed."""
        m = self.modules
        height, width = request.image.shape[-2:]
        p = m.processing.StableDiffusionProcessingImg2Img(
            init_images=[_to_pil(request.image)], mask=_mask_to_pil(request.mask), mask_blur=0, inpainting_fill=1,
            inpaint_full_res=False, resize_mode=0, denoising_strength=request.denoising_strength,
            prompt=request.prompt, negative_prompt=request.negative_prompt, seed=seed, subseed=seed,
            subseed_strength=0, sampler_name=self.sampler_name, scheduler=self.scheduler, batch_size=batch,
            n_iter=1, steps=request.steps, cfg_scale=request.cfg_scale, width=int(width), height=int(height),
            do_not_save_samples=True, do_not_save_grid=True)
        p.cached_c, p.cached_uc = [None, None], [None, None]   # the job's cached conds stay the job's
        p.scripts = None
        p.fill_fields_from_opts()
        p.setup_prompts()
        p.all_seeds, p.all_subseeds = [seed] * batch, [seed] * batch
        # The crop is encoded for one image and shared by the batch: every image of a batch of strengths then has
        # the same VAE posterior sample as a pass of its own (init would draw one per image).
        p.batch_size = 1
        with m.devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        p.batch_size = batch
        p.init_latent = p.init_latent.repeat(batch, 1, 1, 1)
        p.image_conditioning = p.image_conditioning.repeat(batch, 1, 1, 1)
        p.iteration = 0
        p.prompts, p.negative_prompts = list(p.all_prompts), list(p.all_negative_prompts)
        p.seeds, p.subseeds = list(p.all_seeds), list(p.all_subseeds)
        p.rng = m.rng.ImageRNG(p.init_latent.shape[1:], p.seeds, subseeds=p.subseeds, subseed_strength=0,
                               seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w)
        p.parse_extra_network_prompts()
        return p

    def _sample(self, p: Any, sd: Any, controlnet: Any, request: InpaintRequest, strengths: List[float],
                should_stop: Optional[Callable[[], bool]]) -> torch.Tensor:
        from lib_handrefiner.control_injection import inject_control

        m = self.modules
        # HandRefiner's blend mask, as the built-in loop's: a latent cell with any hand pixel is regenerated (the
        # WebUI's rounded one pastes partly-hand cells back from the original, so bits of the old hand survive
        # inside the composite). The WebUI's own blend, per step and after the last, is switched off.
        known, hand = p.init_latent, blend_mask(request.mask).to(p.init_latent)
        p.mask = p.nmask = None
        timesteps = isinstance(p.sampler, m.sd_samplers_timesteps.CompVisSampler)
        scales = timestep_scales(p.sd_model.alphas_cumprod) if timesteps else sigma_scales
        interrupted = m.sd_samplers_common.InterruptedException

        handles: List[Any] = []   # the control context's handle, once entered
        denoiser_calls = 0

        def before_call() -> None:
            nonlocal denoiser_calls
            denoiser_calls += 1
            if should_stop is not None and should_stop():
                for handle in handles:
                    handle.stopped = True   # a pass stopped before its first UNet call is not a control failure
                raise interrupted   # the WebUI's sampler ends the pass and returns its last latent

        draw_noise = once(p.rng.next) if adaptive_step_size(p.sampler) else p.rng.next
        strength: Any = strengths[0] if len(strengths) == 1 else torch.tensor(strengths)
        if self.on_pass is not None:
            self.on_pass(m.sd_samplers_common.setup_img2img_steps(p)[1] + 1)
        control = contextlib.nullcontext()
        if controlnet is not None:
            if isinstance(strength, torch.Tensor):
                strength = strength.to(sd.device, sd.dtype)
            control = inject_control(sd.unet, controlnet, request.hint.to(sd.device, sd.dtype), strength)
        with known_region_blend(p.sampler.model_wrap_cfg, known, hand, scales, draw_noise, before_call), \
                control as handle, \
                (m.devices.without_autocast() if m.devices.unet_needs_upcast else m.devices.autocast()):
            if handle is not None:
                handles.append(handle)
            self.passes += 1
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                               subseed_strength=p.subseed_strength, prompts=p.prompts)
            if handle is not None and denoiser_calls == 0:
                # The sampler asked for no denoising step at all (the WebUI's DDIM with a single timestep, e.g. 2
                # steps at denoising 1): nothing was sampled, so no UNet call missed the control. A sampler that
                # did call the denoiser while the hooked UNet never ran stays an error (another UNet sampled).
                handle.stopped = True
            return samples


def once(draw: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`draw` called at the first call only; its result returned at every call (one noise for a pass)."""
    drawn: List[torch.Tensor] = []

    def first() -> torch.Tensor:
        if not drawn:
            drawn.append(draw())
        return drawn[0]

    return first


def adaptive_step_size(sampler: Any) -> bool:
    """Whether the WebUI sampler sizes its steps from an error estimate (k-diffusion's DPM adaptive: its function
    takes `rtol`)."""
    func = getattr(sampler, "func", None)
    try:
        return callable(func) and "rtol" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _preserved_globals(m: WebUIModules, seed: int) -> Iterator[None]:
    """The pass's global side effects undone: torch's global generator (seeded for the pass, so that the VAE's
    posterior samples are the seed's) and k-diffusion's `torch`, which the WebUI's sampler points at the pass's
    noise generator."""
    device = torch.device(m.devices.device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    kdiffusion_torch = m.k_diffusion_sampling.torch
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            m.k_diffusion_sampling.torch = kdiffusion_torch


@contextlib.contextmanager
def _job_networks(m: WebUIModules, p: Any, job: Any) -> Iterator[None]:
    """The pass's extra networks (LoRA …) active while it samples: nothing to do when its prompt names the job's
    (they are active); otherwise its own, then the job's again (or none, outside a job)."""
    job_data = getattr(job, "extra_network_data", None) if job is not None else None
    if p.disable_extra_networks or (job is not None and _same_networks(p.extra_network_data, job_data)):
        yield
        return
    m.extra_networks.activate(p, p.extra_network_data)
    try:
        yield
    finally:
        if job is not None and job_data is not None:
            m.extra_networks.activate(job, job_data)
        else:
            m.extra_networks.deactivate(p, p.extra_network_data)


def _same_networks(a: Any, b: Any) -> bool:
    def named(data: Any) -> dict:
        return {k: v for k, v in (data or {}).items() if v}

    return named(a) == named(b)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(1,3,H,W) in [-1,1] → RGB."""
    array = ((image[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _mask_to_pil(mask: torch.Tensor) -> Image.Image:
    """(1,1,H,W) in {0,1} → L, 255 = regenerate."""
    return Image.fromarray(np.where(mask[0, 0].cpu().numpy() > 0.5, 255, 0).astype(np.uint8))
