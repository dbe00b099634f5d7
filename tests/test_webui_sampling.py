"""The hand pass through the WebUI's own sampling (lib_handrefiner/webui/sampling.py) against the stand-in for the
WebUI 1.10.1 (tests/webui_stub: its processing, samplers, CFG denoiser and callbacks), with the tiny checkpoint in
the shape of the WebUI's `shared.sd_model`: the known-region blend at every denoiser call with any sampler, the
unmasked last step, the agreement of the WebUI's DDIM with the official loop, and the job's state afterwards."""
from __future__ import annotations

import pytest
import torch
from conftest import webui_stand_in

from lib_handrefiner.control_injection import inject_control
from lib_handrefiner.sampler import (
    DDIMSchedule,
    InpaintRequest,
    SamplingInterrupted,
    blend_mask,
    cfg_denoiser,
    ddim_inpaint,
)

SEED = 7
SIZE = 64


@pytest.fixture(scope="module")
def wui(tiny_sd):
    with webui_stand_in():
        import k_diffusion.sampling
        from latent_diffusion import TinyLatentDiffusion
        from modules import (
            devices,
            extra_networks,
            processing,
            rng,
            sd_samplers,
            sd_samplers_common,
            sd_samplers_timesteps,
            sd_schedulers,
            shared,
        )

        from lib_handrefiner.webui import WebUISDModel
        from lib_handrefiner.webui.sampling import WebUIModules

        shared.sd_model = TinyLatentDiffusion(tiny_sd)
        modules = WebUIModules(processing=processing, sd_samplers=sd_samplers, sd_samplers_common=sd_samplers_common,
                               sd_samplers_timesteps=sd_samplers_timesteps, sd_schedulers=sd_schedulers,
                               extra_networks=extra_networks, rng=rng, devices=devices,
                               k_diffusion_sampling=k_diffusion.sampling)
        yield modules, WebUISDModel(shared.sd_model, devices.device, devices.dtype)


@pytest.fixture()
def callbacks(wui):
    """Records what another extension's CFG callbacks see; they are removed afterwards."""
    from modules import script_callbacks

    seen = {"denoiser": [], "after": []}

    def on_denoiser(params):
        seen["denoiser"].append((params.x.clone(), params.sigma.clone(), params.sampling_step,
                                 params.total_sampling_steps))

    def on_after(params):
        seen["after"].append(params.x.clone())

    script_callbacks.on_cfg_denoiser(on_denoiser)
    script_callbacks.on_cfg_after_cfg(on_after)
    yield seen
    script_callbacks.remove_callbacks_for_function(on_denoiser)
    script_callbacks.remove_callbacks_for_function(on_after)


# Two float32 computations of the same image (a batch against single passes, ldm's loop against the WebUI's): their
# sums run in another order, and how depends on the CPU's vector kernels and the batch size. One machine measured
# up to 1.6e-5 where another stayed under 1e-5; 1e-4 on [-1, 1] is 0.013 of a grey level.
FLOAT_NOISE = 1e-4


def sd_model():
    from modules import shared

    return shared.sd_model


def request(steps=4, prompt="a hand", denoising_strength=1.0):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 16:48, 20:44] = 1
    return InpaintRequest(image=torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1, mask=mask,
                          hint=torch.rand(1, 3, SIZE, SIZE, generator=g), prompt=prompt,
                          negative_prompt="fake 3D rendered image", steps=steps, cfg_scale=5.0,
                          denoising_strength=denoising_strength)


def engine(wui, sampler, scheduler="Automatic", **kwargs):
    from lib_handrefiner.webui.sampling import WebUISampling

    return WebUISampling(wui[0], sampler, scheduler, **kwargs)


def prepared(wui, sampler, req, batch=1):
    """The pass's processing object as the engine sets it up (the same seeded draws), for the reference."""
    from lib_handrefiner.webui.sampling import _preserved_globals

    eng = engine(wui, sampler)
    with _preserved_globals(wui[0], SEED):
        p = eng._prepare(req, batch, SEED)
        p.setup_conds()
    return p


class Draws:
    """The pass's noise generator replayed: the WebUI's ImageRNG for one image of seed SEED."""

    def __init__(self, shape):
        self.generator = torch.Generator().manual_seed(SEED)
        self.shape = shape

    def __call__(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator)


# ---- the blend, at every call, on the sampler's own scale ----------------------------------------------------

def model_sigmas(modules):
    alphas = sd_model().alphas_cumprod
    return ((1 - alphas) / alphas) ** 0.5


def kdiffusion_levels(modules, steps, scheduler):
    """The σ of every denoiser call of a first-order k-diffusion img2img pass at denoising 1: all `steps`."""
    sigmas = model_sigmas(modules)
    if scheduler == "Karras":
        schedule = modules.k_diffusion_sampling.get_sigmas_karras(steps, float(sigmas[0]), float(sigmas[-1]))
    else:
        t = torch.linspace(len(sigmas) - 1, 0, steps)
        schedule = torch.cat([(torch.lerp(sigmas.log()[t.floor().long()], sigmas.log()[t.ceil().long()],
                                          t.frac())).exp(), torch.zeros(1)])
    return [float(s) for s in schedule[:-1]]


def heun_levels(modules, steps, scheduler):
    """Heun calls the denoiser at σ_i and again at σ_{i+1}, except on the last step."""
    levels = kdiffusion_levels(modules, steps, scheduler)
    return [v for i, s in enumerate(levels) for v in ([s, levels[i + 1]] if i + 1 < len(levels) else [s])]


def ddim_levels(modules, steps, scheduler):
    """The WebUI's DDIM at denoising 1 (t_enc = steps − 1): timesteps[t_enc − 1] down to timesteps[1]."""
    timesteps = [t + 1 for t in range(0, 1000, 1000 // steps)]
    return [float(t) for t in reversed(timesteps[1:steps - 1])]


def every_call(n_calls):
    return set(range(n_calls))


def every_step_of_heun(n_calls):
    """Heun's steps are pairs of calls but the last: k-diffusion's Euler and Heun draw their (churn) noise at the
    start of every step, whether the churn is on or not."""
    return set(range(0, n_calls, 2))


def after_every_call(n_calls):
    """Ancestral and DDIM draw after each step: before every call but the first."""
    return set(range(1, n_calls))


def no_call(n_calls):
    return set()


@pytest.mark.parametrize("sampler, scheduler, levels, sampler_draws_before", [
    ("Euler", "Automatic", kdiffusion_levels, every_call),         # k-diffusion, first order, deterministic
    ("Heun", "Automatic", heun_levels, every_step_of_heun),        # second order: two denoiser calls per step
    ("DPM++ 2M", "Karras", kdiffusion_levels, no_call),            # multistep, on the Karras schedule
    ("Euler a", "Automatic", kdiffusion_levels, after_every_call),  # ancestral: noise after each step
    ("DDIM", "Automatic", ddim_levels, after_every_call),          # timesteps: (η = 0) noise each step
])
def test_known_region_is_the_original_renoised_at_every_call(wui, callbacks, tiny_controlnet, sampler, scheduler,
                                                             levels, sampler_draws_before):
    """Before every denoiser call, at the noise levels of the sampler's own schedule, the known region of the
    latent the model sees is a·x0 + b·ε: (a, b) = (1, σ) for k-diffusion, (√ᾱ_t, √(1−ᾱ_t)) for timesteps samplers,
    x0 the pass's init latent and ε the next draw of the pass's seeded generator (after the sampler's own)."""
    modules, sd = wui
    steps = 4
    req = request(steps=steps)
    p = prepared(wui, sampler, req)
    known, hand = p.init_latent, blend_mask(req.mask)
    engine(wui, sampler, scheduler)(sd, tiny_controlnet, req, [1.0], SEED)

    calls = callbacks["denoiser"]
    seen = [float(level[0]) for _, level, _, _ in calls]
    assert seen == pytest.approx(levels(modules, steps, scheduler), rel=1e-4)
    draws = Draws(known.shape[1:])
    draws()   # the initial noise
    alphas = sd_model().alphas_cumprod
    outside = (1 - hand).bool().expand_as(known)
    assert outside.any() and not outside.all()
    sampler_draws = sampler_draws_before(len(calls))
    for i, (x_in, level, _, _) in enumerate(calls):
        if i in sampler_draws:
            draws()
        noise = draws()
        if sampler == "DDIM":
            a = alphas[level[0].long()]
            expected = a.sqrt() * known + (1 - a).sqrt() * noise
        else:
            expected = known + level[0] * noise
        torch.testing.assert_close(x_in[:1][outside], expected[outside], rtol=1e-5, atol=1e-5)


def test_an_adaptive_step_sampler_costs_what_a_fixed_step_one_does(wui, callbacks, tiny_controlnet):
    """DPM adaptive sizes its steps from an error estimate. With fresh noise in the known region at every call the
    estimate is noise and the solver keeps shrinking its step; with one noise for the pass (known region at every
    call = x0 + σ·ε, ε the pass's first draw after the initial noise) it makes far fewer calls than with fresh
    noise."""
    from lib_handrefiner.webui import sampling

    modules, sd = wui
    req = request(steps=20)
    counts = {}
    for sampler in ("Euler", "Heun", "DPM adaptive"):
        callbacks["denoiser"].clear()
        engine(wui, sampler)(sd, tiny_controlnet, req, [1.0], SEED)
        counts[sampler] = len(callbacks["denoiser"])
    calls = list(callbacks["denoiser"])
    assert counts["Euler"] == 20 and counts["Heun"] == 39
    print("denoiser calls", counts)

    p = prepared(wui, "DPM adaptive", req)
    known, hand = p.init_latent, blend_mask(req.mask)
    outside = (1 - hand).bool().expand_as(known)
    draws = Draws(known.shape[1:])
    draws()   # the initial noise
    noise = draws()
    for x_in, level, _, _ in calls:
        torch.testing.assert_close(x_in[:1][outside], (known + level[0] * noise)[outside], rtol=1e-5, atol=1e-5)

    real_once = sampling.once
    sampling.once = lambda draw: draw   # fresh noise at every call, as for the other samplers
    try:
        callbacks["denoiser"].clear()
        engine(wui, "DPM adaptive")(sd, tiny_controlnet, req, [1.0], SEED)
    finally:
        sampling.once = real_once
    print("with fresh noise at every call", len(callbacks["denoiser"]))
    # (on the tiny random model the solver needs more calls than on SD; the real WebUI's numbers are in the README)
    assert len(callbacks["denoiser"]) > counts["DPM adaptive"], (len(callbacks["denoiser"]), counts)


def test_last_step_is_not_masked(wui, callbacks, tiny_controlnet):
    """The pass returns the sampler's last output as it is (Euler's last step lands on its denoised latent): the
    WebUI's own blend with the original after the last step is off, so the known region is the model's too."""
    modules, sd = wui
    req = request(steps=3)
    p = prepared(wui, "Euler", req)
    out = engine(wui, "Euler")(sd, tiny_controlnet, req, [0.8], SEED)
    last = callbacks["after"][-1]
    expected = modules.processing.decode_latent_batch(sd_model(), last, check_for_nans=True)[0]
    torch.testing.assert_close(out[0], expected.clamp(-1, 1), rtol=0, atol=1e-6)
    known_region = (1 - blend_mask(req.mask)).bool().expand_as(p.init_latent)
    # the WebUI's own blend would make this exactly 0 (the original pasted back)
    assert (last - p.init_latent)[known_region].abs().max() > 0.05


def test_webui_ddim_is_the_official_loop_on_the_webui_ddim_timesteps(wui, tiny_controlnet):
    """With "DDIM" the pass is exactly HandRefiner's own DDIM loop (sampler.ddim_inpaint: blend before every step,
    last step unmasked, CFG with the ControlNet on both branches) given what the WebUI's DDIM does differently:
    its timesteps (img2img at denoising 1 starts from timesteps[t_enc] and evaluates timesteps[t_enc − 1] … [1]),
    its start x = √ᾱ·x0 + √(1−ᾱ)·ε, one (η = 0) noise draw per step, and the WebUI's encodings."""
    modules, sd = wui
    req = request(steps=5)
    p = prepared(wui, "DDIM", req)
    out = engine(wui, "DDIM")(sd, tiny_controlnet, req, [0.6], SEED)

    alphas = sd_model().alphas_cumprod.double()
    steps, t_enc = modules.sd_samplers_common.setup_img2img_steps(p)
    timesteps = torch.tensor([t + 1 for t in range(0, 1000, 1000 // steps)])
    run, to = timesteps[1:t_enc].flip(0), timesteps[:t_enc - 1].flip(0)
    schedule = DDIMSchedule(timesteps=run, alphas=alphas[run], alphas_next=alphas[to])
    generator = torch.Generator().manual_seed(SEED)
    shape = p.init_latent.shape
    start = alphas[timesteps[t_enc]].float()
    x_T = start.sqrt() * p.init_latent + (1 - start).sqrt() * torch.randn(shape, generator=generator)
    cond = p.c.batch[0][0].schedules[0].cond[None]
    uncond = p.uc[0][0].cond[None]
    denoise = cfg_denoiser(sd, cond, uncond, req.cfg_scale, p.image_conditioning)
    with torch.no_grad(), inject_control(sd.unet, tiny_controlnet, req.hint, 0.6):
        z = ddim_inpaint(denoise, x_T, p.init_latent, blend_mask(req.mask), schedule, generator,
                         callback=lambda i, n: torch.randn(shape, generator=generator))   # the WebUI's η-noise draw
    torch.testing.assert_close(out, sd.decode_latent(z).float(), rtol=0, atol=FLOAT_NOISE)


def test_strengths_in_one_batch_equal_one_pass_each(wui, tiny_controlnet):
    """Adaptive mode's batch: every image of the pass has the same seed, so the same noise; the ControlNet's
    strength is per image on both CFG branches. With AND in the prompt (several cond rows per image) the engine
    runs one pass per strength, with the same result."""
    _, sd = wui
    req = request(steps=2)
    one = engine(wui, "Euler a")
    together = one(sd, tiny_controlnet, req, [0.4, 1.0], SEED)
    assert one.passes == 1
    apart = torch.cat([one(sd, tiny_controlnet, req, [s], SEED) for s in (0.4, 1.0)])
    torch.testing.assert_close(together, apart, rtol=0, atol=FLOAT_NOISE)
    assert (together[0] - together[1]).abs().max() > 1e-3    # the strengths differ

    composed = request(steps=2, prompt="a hand AND an open palm:0.5")
    eng = engine(wui, "Euler a")
    split = eng(sd, tiny_controlnet, composed, [0.4, 1.0], SEED)
    assert eng.passes == 2
    torch.testing.assert_close(split[1:], eng(sd, tiny_controlnet, composed, [1.0], SEED), rtol=0, atol=FLOAT_NOISE)


@pytest.mark.parametrize("setting, upcast", [("auto_vae_precision", torch.float32),
                                             ("auto_vae_precision_bfloat16", torch.bfloat16)])
def test_a_half_precision_vae_that_makes_nans_is_upcast_by_the_webuis_decode(wui, tiny_sd, tiny_controlnet,
                                                                            setting, upcast):
    """The pass decodes through the WebUI's decode_latent_batch with its NaN check: a float16 VAE decoding to NaNs
    (a black hand) is converted as the WebUI's settings say and decodes again; devices.dtype_vae follows."""
    import copy

    from latent_diffusion import TinyLatentDiffusion
    from modules import devices, shared

    from lib_handrefiner.webui import WebUISDModel

    model, saved = shared.sd_model, dict(shared.opts.data)
    shared.sd_model = half = TinyLatentDiffusion(copy.deepcopy(tiny_sd))
    half.first_stage_model.half()
    devices.dtype_vae = torch.float16
    shared.opts.auto_vae_precision_bfloat16 = setting == "auto_vae_precision_bfloat16"
    try:
        sd = WebUISDModel(half, devices.device, devices.dtype)
        out = engine(wui, "Euler")(sd, tiny_controlnet, request(steps=2), [0.5], SEED)
        dtype_vae = devices.dtype_vae
    finally:
        shared.sd_model, devices.dtype_vae = model, torch.float32
        shared.opts.data.clear()
        shared.opts.data.update(saved)
    assert dtype_vae == upcast and next(half.first_stage_model.parameters()).dtype == upcast
    assert out.shape == (1, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_a_second_order_sampler_and_a_lower_denoising_strength(wui, tiny_controlnet):
    """denoising_strength < 1: the WebUI's img2img starts part-way (t_enc of the steps) from the crop itself."""
    modules, sd = wui
    req = request(steps=4, denoising_strength=0.5)
    out = engine(wui, "Heun", "Karras")(sd, tiny_controlnet, req, [0.55], SEED)
    assert out.shape == (1, 3, SIZE, SIZE) and torch.isfinite(out).all()
    p = prepared(wui, "Heun", req)
    assert modules.sd_samplers_common.setup_img2img_steps(p) == (4, 2)


# ---- the job's state after the pass ----------------------------------------------------------------------------

class Recorder:
    """An extra network (like LoRA) that records its activations."""

    def __init__(self):
        from modules import extra_networks

        self.name, self.active, self.log = "rec", None, []
        self.base = extra_networks

    def activate(self, p, params_list):
        self.active = [params.items for params in params_list]
        self.log.append(self.active)

    def deactivate(self, p):
        self.log.append("deactivate")


def job_processing(wui):
    """A txt2img job in the middle of its batch: its sampler set up (k-diffusion's `torch` points at its noise),
    its extra networks active, its conds cached."""
    from modules import extra_networks, processing, rng, sd_samplers, shared

    job = processing.StableDiffusionProcessing(prompt="<rec:job> a man", negative_prompt="blurry", seed=3,
                                               sampler_name="Euler a", steps=3)
    job.prompts, job.negative_prompts, job.seeds, job.subseeds = ["<rec:job> a man"], ["blurry"], [3], [3]
    job.rng = rng.ImageRNG((4, 8, 8), job.seeds)
    job.sampler = sd_samplers.create_sampler(job.sampler_name, shared.sd_model)
    job.sampler.initialize(job)
    job.parse_extra_network_prompts()
    extra_networks.activate(job, job.extra_network_data)
    return job


def snapshot(wui, job, sd):
    from modules import processing, script_callbacks, shared

    def hooks(module):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())

    return dict(
        sampler=job.sampler, denoiser_forward="forward" in job.sampler.model_wrap_cfg.__dict__,
        denoiser_p=job.sampler.model_wrap_cfg.p, kdiffusion_torch=wui[0].k_diffusion_sampling.torch,
        callbacks={k: list(v) for k, v in script_callbacks.callback_map.items()}, unet_hooks=hooks(sd.unet),
        unet_forward=sd.unet.__dict__.get("forward"), rng=torch.get_rng_state(),
        cached=(processing.StableDiffusionProcessing.cached_c, list(processing.StableDiffusionProcessing.cached_c)),
        params=dict(job.extra_generation_params), job_count=shared.state.job_count, job_no=shared.state.job_no)


def same(before, after):
    assert set(before) == set(after)
    for key in before:
        if key == "rng":
            assert torch.equal(before[key], after[key]), key
        elif key in ("sampler", "denoiser_p", "kdiffusion_torch", "unet_forward"):
            assert before[key] is after[key], key
        else:
            assert before[key] == after[key], key


@pytest.fixture()
def recorder(wui):
    from modules import extra_networks

    rec = Recorder()
    extra_networks.register_extra_network(rec)
    yield rec
    extra_networks.extra_network_registry.pop(rec.name)


def test_the_jobs_state_is_as_before_after_the_pass(wui, tiny_controlnet, recorder, callbacks):
    modules, sd = wui
    job = job_processing(wui)
    before = snapshot(wui, job, sd)
    out = engine(wui, "DPM++ 2M", "Karras", job=job)(sd, tiny_controlnet, request(steps=2, prompt="<rec:hand> a hand"),
                                                      [0.5], SEED)
    assert torch.isfinite(out).all()
    same(before, snapshot(wui, job, sd))
    # the hand prompt's own network during the pass, the job's again afterwards
    assert recorder.log == [[["job"]], [["hand"]], [["job"]]]
    # other extensions' CFG callbacks ran during the pass, with the pass's step counts
    assert [c[3] for c in callbacks["denoiser"]] == [2, 2]


def test_the_jobs_networks_stay_untouched_when_the_hand_prompt_is_the_jobs(wui, tiny_controlnet, recorder):
    _, sd = wui
    job = job_processing(wui)
    engine(wui, "Euler", job=job)(sd, tiny_controlnet, request(steps=2, prompt="<rec:job> a man"), [0.5], SEED)
    assert recorder.log == [[["job"]]]


def test_the_jobs_state_is_as_before_after_a_failure_in_the_pass(wui, tiny_controlnet, recorder):
    _, sd = wui
    job = job_processing(wui)
    calls = []

    def fail_on_second_call(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access")

    handle = sd.unet.register_forward_hook(fail_on_second_call)
    try:
        before = snapshot(wui, job, sd)
        with pytest.raises(RuntimeError, match="illegal memory access"):
            engine(wui, "Euler a", job=job)(sd, tiny_controlnet, request(steps=3, prompt="<rec:hand> a hand"),
                                            [0.5], SEED)
        after = snapshot(wui, job, sd)
    finally:
        handle.remove()
    same(before, after)
    assert recorder.log[-1] == [["job"]]


@pytest.mark.parametrize("button", ["interrupt", "skip", "stop generating"])
def test_interrupt_skip_and_stop_generating_end_the_pass_between_calls(wui, tiny_controlnet, callbacks, button):
    """The WebUI's CFG denoiser stops at Interrupt and Skip; HandRefiner's should_stop (with "Stop generating")
    is asked before every call too. The pass then raises SamplingInterrupted: the pipeline keeps the image."""
    from modules import script_callbacks, shared

    _, sd = wui
    job = job_processing(wui)
    before = snapshot(wui, job, sd)

    def press(params):
        if len(callbacks["denoiser"]) == 2:
            if button == "interrupt":
                shared.state.interrupt()
            elif button == "skip":
                shared.state.skip()
            else:
                shared.state.stopping_generation = True

    script_callbacks.on_cfg_denoiser(press)
    try:
        with pytest.raises(SamplingInterrupted):
            engine(wui, "Euler", job=job)(sd, tiny_controlnet, request(steps=4), [0.5], SEED,
                                          should_stop=lambda: bool(shared.state.interrupted or shared.state.skipped
                                                                   or shared.state.stopping_generation))
    finally:
        script_callbacks.remove_callbacks_for_function(press)
        after = snapshot(wui, job, sd)
        shared.state.interrupted = shared.state.skipped = shared.state.stopping_generation = False
    assert len(callbacks["denoiser"]) == 2    # the third call never came
    same(before, after)


def test_unknown_sampler_or_schedule_names_the_choices(wui):
    with pytest.raises(ValueError, match="choose one of: DDIM \\(HandRefiner\\), DPM\\+\\+ 2M, Euler a"):
        engine(wui, "Euler b")
    with pytest.raises(ValueError, match="'karras' is not one of the WebUI's; choose one of: Automatic, Uniform"):
        engine(wui, "Euler", "karras")


def test_bench_engines_takes_the_whole_ddim_difference_apart():
    """`bench engines` (the README's numbers): turning the official loop into the WebUI's DDIM one difference at a
    time ends exactly on the WebUI's pass."""
    import subprocess
    import sys

    from conftest import ROOT

    run = subprocess.run([sys.executable, "-m", "lib_handrefiner.bench", "engines", "--steps", "4", "--crop", "64",
                          "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.strip().rsplit(maxsplit=2)[0]: [float(v) for v in line.split()[-2:]]
            for line in run.stdout.splitlines() if line.startswith("  + ") or line.startswith("  = ")}
    assert len(rows) == 4
    assert rows["= the WebUI's DDIM pass"][0] == 0.0 and rows["= the WebUI's DDIM pass"][1] > 0
    assert "DPM++ 2M + Karras" in run.stdout and "seed to seed" in run.stdout
