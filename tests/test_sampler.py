"""The sampler against independent references: ldm's DDIMSampler and a direct implementation of paper eq. 1–2."""
from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lib_handrefiner.sampler import (
    InpaintRequest,
    SamplingInterrupted,
    blend_mask,
    cfg_denoiser,
    ddim_inpaint,
    ddim_schedule,
    ddim_step_count,
    latent_mask,
    sample_inpaint,
    with_extra_negative,
)
from lib_handrefiner.settings import HandRefinerArgs

LATENT = (1, 4, 8, 8)


def _inputs(sd, seed=0):
    g = torch.Generator().manual_seed(seed)
    known = torch.randn(LATENT, generator=g)
    x_T = torch.randn(LATENT, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1.0
    c_concat = torch.cat([mask, torch.randn(LATENT, generator=g)], dim=1)
    cond, uncond = sd.encode_text(["a photo of a hand"]), sd.encode_text(["fake 3D rendered image"])
    return known, x_T, mask, c_concat, cond, uncond


def test_schedule_is_ldms_uniform_ddim_for_every_step_count():
    """ldm's make_ddim_timesteps / make_ddim_sampling_parameters (the official sampler's) are the oracle. We used
    to take exactly K steps: at K=30 ldm takes 31 from t=991, we took 30 from t=958."""
    from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps

    ac = torch.linspace(0.9991, 0.0047, 1000, dtype=torch.float64)
    for steps in range(1, 101):
        with contextlib.redirect_stdout(io.StringIO()):
            ts = make_ddim_timesteps("uniform", steps, 1000)
        s = ddim_schedule(ac, steps)
        assert len(s) == len(ts) == ddim_step_count(steps), steps
        if ts[-1] == 1000:  # ldm's last t has no ᾱ there (IndexError); we take t = 999
            assert steps in (3, 9, 27, 36, 37)
            ts[-1] = 999
        assert s.timesteps.tolist() == ts[::-1].tolist(), steps
        with contextlib.redirect_stdout(io.StringIO()):
            _, alphas, alphas_prev = make_ddim_sampling_parameters(ac.numpy(), ts, 0.0)
        np.testing.assert_array_equal(s.alphas.numpy(), alphas[::-1])
        np.testing.assert_array_equal(s.alphas_next.numpy(), alphas_prev[::-1])
    thirty = ddim_schedule(ac, 30)
    assert len(thirty) == 31 and thirty.timesteps[0] == 991 and thirty.timesteps[-1] == 1
    assert float(thirty.alphas_next[-1]) == float(ac[0])  # the last step lands on ᾱ_0, as ldm's alphas_prev[0]
    assert len(ddim_schedule(ac, 50)) == 50 and HandRefinerArgs().steps == 50  # the official default
    # img2img: denoising strength 0.5 runs the last half of the steps
    half = ddim_schedule(ac, 10, 0.5)
    assert half.timesteps.tolist() == ddim_schedule(ac, 10).timesteps[-5:].tolist() and ddim_step_count(30, 0.5) == 16
    with pytest.raises(ValueError, match="steps"):
        ddim_schedule(ac, 0)


def test_ddim_update_matches_ldm_ddim_sampler(tiny_sd):
    """With an all-hand mask the blend is a no-op, so the result must equal ldm's DDIMSampler (CFG included)."""
    from ldm.models.diffusion.ddim import DDIMSampler

    sd = tiny_sd
    known, x_T, _, c_concat, cond, uncond = _inputs(sd)
    ac = sd.alphas_cumprod.float()
    # The attributes DDIMSampler reads from a LatentDiffusion, over the same UNet (no pytorch_lightning needed).
    fake = SimpleNamespace(
        num_timesteps=1000, alphas_cumprod=ac, alphas_cumprod_prev=torch.cat([ac[:1], ac[:-1]]),
        betas=1 - ac / torch.cat([torch.ones(1), ac[:-1]]), device="cpu", parameterization="eps",
        apply_model=lambda x, t, c: sd.apply_unet(x, t, c, c_concat.expand(x.shape[0], -1, -1, -1)))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ref, _ = DDIMSampler(fake).sample(S=5, batch_size=1, shape=LATENT[1:], conditioning=cond, x_T=x_T,
                                          eta=0.0, unconditional_guidance_scale=7.5,
                                          unconditional_conditioning=uncond, verbose=False)
    ours = ddim_inpaint(cfg_denoiser(sd, cond, uncond, 7.5, c_concat), x_T, known, torch.ones(1, 1, 8, 8),
                        ddim_schedule(sd.alphas_cumprod, 5), torch.Generator().manual_seed(0))
    assert ref.abs().mean() > 0.1  # a non-degenerate model: the comparison means something
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def _official_masked_ddim(denoise, x_T, z0, m, alphas_cumprod, steps, seed):
    """HandRefiner's ddim_hacked loop written out: before every step, x = m·x + (1−m)·q_sample(z0, t) at that
    step's own t (so also before the first), then the DDIM step; the last step's output is not masked."""
    ac = alphas_cumprod.double()
    ts = [t + 1 for t in range(0, 1000, 1000 // steps)]  # ldm's make_ddim_timesteps("uniform", steps, 1000)
    g = torch.Generator().manual_seed(seed)
    x = x_T
    for k, t in enumerate(reversed(ts)):
        a = float(ac[t])
        a_next = float(ac[ts[len(ts) - k - 2]]) if k < len(ts) - 1 else float(ac[0])
        n = torch.randn(z0.shape, generator=g)
        x = m * x + (1 - m) * (a ** 0.5 * z0 + (1 - a) ** 0.5 * n)
        eps = denoise(x, torch.tensor([t]))
        pred_x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = a_next ** 0.5 * pred_x0 + (1 - a_next) ** 0.5 * eps
    return x


def test_blend_and_unmasked_last_step_match_the_official_sampler(tiny_sd):
    sd = tiny_sd
    known, x_T, mask, c_concat, cond, uncond = _inputs(sd)
    denoise = cfg_denoiser(sd, cond, uncond, 5.0, c_concat)
    seen = []

    def recording(x, t):
        seen.append(x.clone())
        return denoise(x, t)

    schedule = ddim_schedule(sd.alphas_cumprod, 4)
    ours = ddim_inpaint(recording, x_T, known, mask, schedule, torch.Generator().manual_seed(3))
    direct = _official_masked_ddim(denoise, x_T, known, mask, sd.alphas_cumprod, 4, seed=3)
    torch.testing.assert_close(ours, direct, atol=1e-5, rtol=1e-4)
    # Outside the hand, the input of every step, the first included, is the original re-noised to its level.
    g = torch.Generator().manual_seed(3)
    outside = mask.expand_as(known) == 0
    for step in range(2):
        a = float(schedule.alphas[step])
        renoised = a ** 0.5 * known + (1 - a) ** 0.5 * torch.randn(known.shape, generator=g)
        torch.testing.assert_close(seen[step][outside], renoised[outside], atol=1e-6, rtol=1e-5)
    inside = ~outside
    torch.testing.assert_close(seen[0][inside], x_T[inside])  # the hand starts from x_T
    # The last step is not masked: outside the hand the result is the model's, not the original latent.
    assert (ours - known)[outside].abs().mean() > 1e-3


class _ModelAtPrecision:
    """tiny_sd as a model at `dtype` shows itself to the sampler (text, latents and ε come back in `dtype`), with
    the networks themselves in float32 (the CPU cannot run ldm's networks in half precision). Keeps the latent it
    was asked to decode."""

    def __init__(self, sd, dtype):
        self.sd, self.unet, self.in_channels, self.alphas_cumprod = sd, sd.unet, sd.in_channels, sd.alphas_cumprod
        self.device, self.dtype = sd.device, dtype
        self.decoded = None

    def encode_text(self, prompts):
        return self.sd.encode_text(prompts).to(self.dtype)

    def encode_image(self, x):
        return self.sd.encode_image(x.float()).to(self.dtype)

    def decode_latent(self, z):
        self.decoded = z
        return self.sd.decode_latent(z.float())

    def apply_unet(self, x, t, context, c_concat=None):
        concat = None if c_concat is None else c_concat.float()
        return self.sd.apply_unet(x.float(), t, context.float(), concat).to(self.dtype)


def test_half_precision_models_keep_the_sampler_state_in_float32(tiny_sd, tiny_controlnet):
    """At half precision only the networks round; the latent carried from step to step stays float32 (as in
    ldm's and the WebUI's samplers). Rounded to float16 every step, it drifts ~6x further from float32
    (measured: max 0.065 / mean 0.0018, against 0.010 / 0.0003)."""
    req = _request(steps=30)
    full, half = _ModelAtPrecision(tiny_sd, torch.float32), _ModelAtPrecision(tiny_sd, torch.float16)
    sample_inpaint(full, tiny_controlnet, req, [0.55], seed=5)
    sample_inpaint(half, tiny_controlnet, req, [0.55], seed=5)
    assert half.decoded.dtype == torch.float32
    assert full.decoded.abs().mean() > 0.5  # a latent of the usual size: the tolerance below means something
    drift = (half.decoded - full.decoded).abs()
    assert drift.max() < 0.03 and drift.mean() < 0.001


def test_the_unet_sees_the_official_nearest_mask_and_the_blend_the_max_pooled_one(tiny_sd, monkeypatch):
    """The official code (inference and training) resizes the mask to latent size with nearest interpolation; the
    UNet's mask channel must be that (we max-pooled it: up to one cell larger on every edge). The known-region
    blend alone keeps every cell that holds a hand pixel."""
    from lib_handrefiner import sampler

    req = _request(size=64, steps=1)
    req.mask.zero_()
    req.mask[..., 3:21, 5:28] = 1  # edges off the 8-pixel grid
    official = torch.nn.functional.interpolate(req.mask, size=(8, 8))  # handrefiner.py: interpolate(mask, (64, 64))
    pooled = torch.zeros(1, 1, 8, 8)
    pooled[..., 0:3, 0:4] = 1  # every cell touched by rows 3..20, columns 5..27
    assert torch.equal(blend_mask(req.mask), pooled) and not torch.equal(official, pooled)
    assert torch.equal(latent_mask(req.mask), official)
    seen = {}
    real_apply, real_inpaint = tiny_sd.apply_unet, sampler.ddim_inpaint

    def apply_unet(x, t, context, c_concat=None):
        seen["mask_channel"] = c_concat[:, :1]
        return real_apply(x, t, context, c_concat)

    def ddim_inpaint(denoise, x_T, known, mask, *args):
        seen["blend"] = mask
        return real_inpaint(denoise, x_T, known, mask, *args)

    monkeypatch.setattr(tiny_sd, "apply_unet", apply_unet)
    monkeypatch.setattr(sampler, "ddim_inpaint", ddim_inpaint)
    sample_inpaint(tiny_sd, None, req, [1.0], seed=1)
    assert torch.equal(seen["mask_channel"], official.expand_as(seen["mask_channel"]))
    assert torch.equal(seen["blend"], pooled)


def test_extra_negative_joins_user_negative():
    assert with_extra_negative("blurry", "fake 3D rendered image") == "fake 3D rendered image, blurry"
    assert with_extra_negative("  ", "fake 3D rendered image") == "fake 3D rendered image"


def test_extra_negative_survives_the_77_token_truncation(tiny_sd):
    """A long user negative must not push the paper's extra negative out of CLIP's 77 tokens (the standalone
    text encoder truncates; the official negative prompt also starts with it)."""
    long_negative = ", ".join(["lowres", "bad anatomy", "bad hands", "missing fingers", "extra digit"] * 12)
    tokens = tiny_sd.tokenizer([with_extra_negative(long_negative, "fake 3D rendered image")], truncation=True,
                               max_length=77, padding="max_length").input_ids[0]
    extra = tiny_sd.tokenizer("fake 3D rendered image", add_special_tokens=False).input_ids
    assert len(tiny_sd.tokenizer(long_negative).input_ids) > 77
    assert tokens[1:1 + len(extra)] == extra


def _request(size=64, steps=3, **kw):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    hint = torch.rand(1, 3, size, size, generator=g)
    return InpaintRequest(image=image, mask=mask, hint=hint, prompt="a hand", negative_prompt="fake 3D rendered image",
                          steps=steps, cfg_scale=7.0, **kw)


def test_sample_inpaint_is_seeded_and_batches_strengths(tiny_sd, tiny_controlnet):
    req = _request()
    a = sample_inpaint(tiny_sd, tiny_controlnet, req, [0.55], seed=7)
    b = sample_inpaint(tiny_sd, tiny_controlnet, req, [0.55], seed=7)
    c = sample_inpaint(tiny_sd, tiny_controlnet, req, [0.55], seed=8)
    assert a.shape == (1, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    # One batch of strengths equals separate runs: same noise, per-sample control scale.
    batch = sample_inpaint(tiny_sd, tiny_controlnet, req, [0.0, 0.55, 1.5], seed=7)
    torch.testing.assert_close(batch[1:2], a, atol=1e-4, rtol=1e-4)
    assert (batch[0] - batch[2]).abs().mean() > 1e-4  # control strength changes the result
    plain = sample_inpaint(tiny_sd, None, req, [1.0], seed=7)
    torch.testing.assert_close(batch[0:1], plain, atol=1e-4, rtol=1e-4)  # strength 0 = no ControlNet


def test_sample_inpaint_regular_unet_and_img2img(tiny_sd_regular, tiny_controlnet):
    req = _request(denoising_strength=0.5)
    out = sample_inpaint(tiny_sd_regular, tiny_controlnet, req, [0.55], seed=1)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    steps = []
    sample_inpaint(tiny_sd_regular, None, _request(steps=4, denoising_strength=0.5), [1.0], seed=1,
                   callback=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)]


def test_sample_inpaint_stops_and_rejects_odd_sizes(tiny_sd):
    with pytest.raises(SamplingInterrupted):
        sample_inpaint(tiny_sd, None, _request(), [1.0], seed=1, should_stop=lambda: True)
    with pytest.raises(ValueError, match="multiple of 16"):  # tiny UNet: 8 (VAE) × 2 (one downsampling)
        sample_inpaint(tiny_sd, None, _request(size=56), [1.0], seed=1)


def test_weighted_prompt_parts_sum_their_guidance_as_the_webuis_and(tiny_sd):
    """cond (2,T,C) with weights (0.7, 0.3): ε_u + w Σ weight_i (ε_i − ε_u), each ε from its own UNet call."""
    from lib_handrefiner.sampler import PromptConditioning, guidance_branches

    sd = tiny_sd
    cond = torch.cat([sd.encode_text(["a photo of a hand"]), sd.encode_text(["a glove"])])
    uncond = sd.encode_text(["blurry"])
    g = torch.Generator().manual_seed(0)
    x, c_concat = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 5, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    eps = cfg_denoiser(sd, cond, uncond, 6.0, c_concat, weights=(0.7, 0.3))(x, t)

    def single(context):
        return sd.apply_unet(x, t, context.expand(2, -1, -1), c_concat.expand(2, -1, -1, -1))

    e_u, e_1, e_2 = single(uncond), single(cond[:1]), single(cond[1:])
    torch.testing.assert_close(eps, e_u + 6.0 * (0.7 * (e_1 - e_u) + 0.3 * (e_2 - e_u)), atol=1e-4, rtol=1e-4)
    assert guidance_branches(PromptConditioning(cond, uncond, (0.7, 0.3)), 1.0) == 3
    assert guidance_branches(PromptConditioning(cond[:1], uncond), 1.0) == 1
    assert guidance_branches(PromptConditioning(cond[:1], uncond), 7.0) == 2
