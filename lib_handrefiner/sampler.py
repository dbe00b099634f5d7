"""HandRefiner's sampler: DDIM with the known region re-noised and blended back at every step (paper eq. 1–2),
classifier-free guidance with the extra negative prompt (eq. 3), and the ControlNet on both guidance branches.

The core (`ddim_inpaint`) is a pure function over a denoiser callable `eps = denoise(x, t)`, so it reads like the
paper and can be checked against a direct implementation. `sample_inpaint` wires an `SDModel` and a ControlNet
into it; it samples several control strengths as one batch from the same noise (adaptive mode).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lib_handrefiner.sd_model import SDModel

LATENT_SCALE = 8  # the SD 1.x VAE downsamples by 8
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,4,h,w), t (B,) long) -> eps


class SamplingInterrupted(Exception):
    """should_stop() returned True between two steps."""


@dataclass(frozen=True)
class DDIMSchedule:
    timesteps: torch.Tensor    # (K,) long, descending: the t the UNet sees at each step
    alphas: torch.Tensor       # (K,) float64: ᾱ at each step's t
    alphas_next: torch.Tensor  # (K,) float64: ᾱ the step moves to (ldm calls it "prev")

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_timesteps(steps: int, total: int = 1000) -> torch.Tensor:
    """ldm's `make_ddim_timesteps("uniform", steps, total)`, ascending: t = 1, 1 + c, 1 + 2c, … ≤ total with
    c = total // steps, which the official sampler (cldm/ddim_hacked.py) runs. Where c does not divide total this
    is one step more than asked (30 → 31 steps from t = 991). Where it reaches t = total (for 1000: steps 3, 9,
    27, 36, 37 and 101–111), a t that ldm cannot evaluate (ᾱ has no entry there: IndexError), the last valid
    t = total − 1 is used."""
    if not 1 <= steps <= total // 2:
        raise ValueError(f"steps must lie in [1, {total // 2}], got {steps}")
    return (torch.arange(0, total, total // steps) + 1).clamp(max=total - 1)


def ddim_step_count(steps: int, denoising_strength: float = 1.0, total: int = 1000) -> int:
    """How many UNet steps `ddim_schedule` runs (as ldm counts them); a denoising strength below 1 keeps the last
    round(n × strength) of the n steps (img2img)."""
    n = len(ddim_timesteps(steps, total))
    return max(1, min(n, round(n * denoising_strength)))


def ddim_schedule(alphas_cumprod: torch.Tensor, steps: int, denoising_strength: float = 1.0) -> DDIMSchedule:
    """The official DDIM schedule: ldm's uniform timesteps (`ddim_timesteps`), ᾱ at each, and the ᾱ each step
    moves to, ᾱ_0 after the last (ldm's make_ddim_sampling_parameters: alphas_prev = [ᾱ_0] + ᾱ[t[:-1]])."""
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    ascending = ddim_timesteps(steps, len(ac))
    alphas = ac[ascending]
    alphas_next = torch.cat([ac[:1], ac[ascending[:-1]]])
    keep = ddim_step_count(steps, denoising_strength, len(ac))
    return DDIMSchedule(timesteps=ascending.flip(0)[-keep:], alphas=alphas.flip(0)[-keep:],
                        alphas_next=alphas_next.flip(0)[-keep:])


def noise_to_level(x0: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """A sample of q(x_t | x_0) = N(√ᾱ x_0, (1 − ᾱ) I)."""
    return alpha ** 0.5 * x0 + (1.0 - alpha) ** 0.5 * noise


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha: float, alpha_next: float, eta: float = 0.0,
              noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (Song et al. eq. 12): returns (x_next, predicted x_0)."""
    x0 = (x - (1.0 - alpha) ** 0.5 * eps) / alpha ** 0.5
    sigma = eta * ((1.0 - alpha_next) / (1.0 - alpha) * (1.0 - alpha / alpha_next)) ** 0.5
    x_next = alpha_next ** 0.5 * x0 + (1.0 - alpha_next - sigma ** 2) ** 0.5 * eps
    if sigma > 0:
        x_next = x_next + sigma * noise
    return x_next, x0


def blend_known(x: torch.Tensor, known_noised: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper eq. 2: the hand (mask 1) from the sample, everything else from the re-noised original."""
    return mask * x + (1.0 - mask) * known_noised


def ddim_inpaint(denoise: DenoiseFn, x_T: torch.Tensor, known_latent: torch.Tensor, mask: torch.Tensor,
                 schedule: DDIMSchedule, generator: torch.Generator, eta: float = 0.0,
                 callback: Optional[Callable[[int, int], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """DDIM from x_T over `schedule`; before every step, the first included, the known region is replaced by the
    original latent noised to that step's level (eq. 1) and blended in (eq. 2), as the official sampler
    (ddim_hacked) does. The last step's output is left unmasked so that the hand and its surroundings harmonise.

    Noise comes from `generator` (on the CPU, so results match across devices) in the shape of `known_latent`,
    so every sample of a batch sees the same noise."""
    x = x_T
    for i in range(len(schedule)):
        if should_stop is not None and should_stop():
            raise SamplingInterrupted
        t = schedule.timesteps[i].to(x.device).expand(x.shape[0])
        alpha, alpha_next = float(schedule.alphas[i]), float(schedule.alphas_next[i])
        known = noise_to_level(known_latent, _randn_like(known_latent, generator), alpha)
        x = blend_known(x, known, mask)
        eps = denoise(x, t)
        step_noise = _randn_like(known_latent, generator) if eta > 0 else None
        x, _ = ddim_step(x, eps, alpha, alpha_next, eta, step_noise)
        if callback is not None:
            callback(i + 1, len(schedule))
    return x


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


@dataclass(frozen=True)
class PromptConditioning:
    """The text conditioning of one sampling pass: the prompt's parts (one; several where the WebUI's AND joins
    prompts, each with its weight) and the negative prompt, all of one token length."""
    cond: torch.Tensor                     # (N, T, C)
    uncond: torch.Tensor                   # (1, T, C)
    weights: Tuple[float, ...] = (1.0,)    # one per part

    @property
    def single(self) -> bool:
        return self.weights == (1.0,)


def encode_prompts(sd: SDModel, prompt: str, negative_prompt: str) -> PromptConditioning:
    """The model's own prompt handling when it has one (`sd.encode_prompts(prompt, negative)`: the WebUI's, see
    webui.prompts), else each prompt through `sd.encode_text`."""
    encode = getattr(sd, "encode_prompts", None)
    if encode is not None:
        return encode(prompt, negative_prompt)
    return PromptConditioning(sd.encode_text([prompt]), sd.encode_text([negative_prompt]))


def guidance_branches(conditioning: PromptConditioning, cfg_scale: float) -> int:
    """UNet batches per sample: the negative and each prompt part; a lone prompt at CFG 1 needs only itself."""
    return 1 if cfg_scale == 1.0 and conditioning.single else 1 + len(conditioning.weights)


def cfg_denoiser(sd: SDModel, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float,
                 c_concat: Optional[torch.Tensor] = None, weights: Sequence[float] = (1.0,)) -> DenoiseFn:
    """Paper eq. 3: ε = ε(x, ∅') + w (ε(x, c) − ε(x, ∅')), where ∅' is the negative prompt with the extra
    "fake 3D rendered image". The branches run as one batch [uncond × B, cond × B]; the ControlNet hooks see
    that batch, so control applies to both. A prompt of several weighted parts (cond (N,T,C), the WebUI's AND)
    sums their guidance, ε(x, ∅') + w Σ_i weight_i (ε(x, c_i) − ε(x, ∅')), as the WebUI's CFG does. The UNet
    gets x in the model's dtype; ε comes back in x's dtype."""
    conditioning = PromptConditioning(cond, uncond, tuple(weights))
    branches = guidance_branches(conditioning, cfg_scale)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x_in = x.to(sd.dtype)
        concat = None if c_concat is None else c_concat.expand(b, -1, -1, -1)
        if branches == 1:
            return sd.apply_unet(x_in, t, cond.expand(b, -1, -1), concat).to(x.dtype)
        contexts = [uncond.expand(b, -1, -1)] + [part[None].expand(b, -1, -1) for part in cond]
        concat = None if concat is None else torch.cat([concat] * branches)
        eps = sd.apply_unet(torch.cat([x_in] * branches), torch.cat([t] * branches), torch.cat(contexts),
                            concat).to(x.dtype)
        eps_uncond, *eps_conds = eps.chunk(branches)
        return eps_uncond + cfg_scale * sum(w * (e - eps_uncond) for w, e in zip(weights, eps_conds))

    return denoise


def with_extra_negative(negative: str, extra: str) -> str:
    """The extra negative first, as in the official negative prompt: a long user negative would otherwise push
    it past CLIP's 77 tokens, where the standalone text encoder truncates."""
    return ", ".join(p for p in (extra.strip(), negative.strip()) if p)


def size_multiple(unet: torch.nn.Module) -> int:
    """Pixel sizes the UNet takes: 8 (the VAE) × 2 per downsampling level, so skips and upsamples line up
    (64 for SD 1.5)."""
    # By class name: the WebUI's UNet comes from its own copy of the ldm modules.
    levels = sum(type(layer).__name__ == "Downsample" for block in unet.input_blocks for layer in block)
    return LATENT_SCALE * 2 ** levels


def latent_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) in {0,1} → (B,1,H/8,W/8) by nearest interpolation: each latent cell takes the pixel at its
    top-left corner. The official inference (handrefiner.py) and training (ldm's LatentInpaintDiffusion.get_input)
    resize the inpainting mask exactly so; the UNet's mask channel must be this (it is what the inpainting UNet
    and the HandRefiner ControlNet were trained with), and so must the mask of any training code."""
    return F.interpolate(mask, size=(mask.shape[-2] // LATENT_SCALE, mask.shape[-1] // LATENT_SCALE), mode="nearest")


def blend_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) in {0,1} → (B,1,H/8,W/8): a latent cell is regenerated if any of its pixels is hand (max-pool).
    Only for the known-region blend (eq. 2), where the official code uses the nearest mask: there, a cell whose
    top-left pixel lies outside the hand but which covers hand pixels is pasted back from the original at every
    step, so the old (malformed) hand survives in those pixels, inside the pixel mask that the final composite
    takes from the sample. Regenerating every such cell costs at most one latent cell (8 px) at the box edge,
    which the pixel composite then discards."""
    return F.max_pool2d(mask, LATENT_SCALE)


@dataclass
class InpaintRequest:
    image: torch.Tensor        # (1,3,H,W) in [-1,1], H and W multiples of size_multiple(unet)
    mask: torch.Tensor         # (1,1,H,W) in {0,1}, 1 = hand (regenerated)
    hint: torch.Tensor         # (1,3,H,W) in [0,1]: the depth map
    prompt: str
    negative_prompt: str       # already including the extra negative
    steps: int = 50
    cfg_scale: float = 9.0
    denoising_strength: float = 1.0
    eta: float = 0.0


def sample_inpaint(sd: SDModel, controlnet, request: InpaintRequest, strengths: Sequence[float], seed: int,
                   callback: Optional[Callable[[int, int], None]] = None,
                   should_stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """Refined images (len(strengths),3,H,W) in [-1,1], one per control strength, all from the same noise."""
    multiple = size_multiple(sd.unet)
    if request.image.shape[-1] % multiple or request.image.shape[-2] % multiple:
        raise ValueError(f"image size {tuple(request.image.shape[-2:])} must be a multiple of {multiple} for this "
                         "UNet; pad or resize it")
    device, dtype = sd.device, sd.dtype
    image = request.image.to(device, dtype)
    mask = (request.mask > 0.5).to(device, dtype)
    # The latent carried from step to step stays float32 whatever the model's precision, as in ldm's and the
    # WebUI's samplers: rounded to float16 at every step it drifts (and ᾱ ≈ 0.005 at the first step divides it).
    known = sd.encode_image(image).float()
    c_concat = None
    if sd.in_channels == 9:  # inpainting UNet: it also sees where the hole is and what surrounds it
        c_concat = torch.cat([latent_mask(mask).to(dtype), sd.encode_image(image * (1.0 - mask)).to(dtype)], dim=1)
    conditioning = encode_prompts(sd, request.prompt, request.negative_prompt)
    cond, uncond = (c.to(device, dtype) for c in (conditioning.cond, conditioning.uncond))
    schedule = ddim_schedule(sd.alphas_cumprod, request.steps, request.denoising_strength)
    generator = torch.Generator().manual_seed(int(seed))
    noise = _randn_like(known, generator)
    x_T = noise if request.denoising_strength >= 1.0 else noise_to_level(known, noise, float(schedule.alphas[0]))
    x_T = x_T.expand(len(strengths), -1, -1, -1)
    denoise = cfg_denoiser(sd, cond, uncond, request.cfg_scale, c_concat, conditioning.weights)
    branches = guidance_branches(conditioning, request.cfg_scale)
    strength = torch.tensor(list(strengths) * branches, device=device, dtype=dtype)
    control = nullcontext()
    if controlnet is not None:
        from lib_handrefiner.control_injection import inject_control

        control = inject_control(sd.unet, controlnet, request.hint.to(device, dtype), strength)
    with torch.no_grad(), control:
        z = ddim_inpaint(denoise, x_T, known, blend_mask(mask.float()), schedule, generator, request.eta, callback,
                         should_stop)
        return sd.decode_latent(z).float()
