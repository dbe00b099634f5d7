from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np
import torch
from PIL import Image, ImageOps

from modules import devices, extra_networks, images, prompt_parser, scripts, sd_samplers, sd_samplers_common, shared
from modules.shared import opts


@dataclass(repr=False)
class StableDiffusionProcessing:
    """The WebUI's fields (a subset, same names and defaults) and the methods a second sampling pass uses."""
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    outpath_samples: str = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: Dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    denoising_strength: float = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: Dict[str, Any] = None
    disable_extra_networks: bool = False

    comments: dict = field(default=None, init=False)
    sampler: Any = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)
    rng: Any = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)

    cached_uc = [None, None]
    cached_c = [None, None]

    def __post_init__(self):
        self.comments = {}
        self.styles = self.styles or []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = dict(self.extra_generation_params or {})
        self.override_settings = self.override_settings or {}
        self.scripts = None
        self.script_args = []
        self.batch_index = 0
        self.mask_for_overlay = None
        self.hr_scheduler = None
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self) -> bool:
        return self.outpath_samples is not None and not self.do_not_save_samples

    def fill_fields_from_opts(self):
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float('inf')
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise

    def setup_prompts(self):
        # The stand-in has no styles.
        self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)

    def inpainting_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        self.is_using_inpainting_conditioning = True
        if image_mask is not None:
            conditioning_mask = np.array(image_mask.convert("L")).astype(np.float32) / 255.0
            conditioning_mask = torch.from_numpy(conditioning_mask[None, None])
            if round_image_mask:
                conditioning_mask = torch.round(conditioning_mask)
        else:
            conditioning_mask = source_image.new_ones(1, 1, *source_image.shape[-2:])
        conditioning_mask = conditioning_mask.to(device=source_image.device, dtype=source_image.dtype)
        conditioning_image = torch.lerp(source_image, source_image * (1.0 - conditioning_mask),
                                        getattr(self, "inpainting_mask_weight", shared.opts.inpainting_mask_weight))
        conditioning_image = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(conditioning_image))
        conditioning_mask = torch.nn.functional.interpolate(conditioning_mask, size=latent_image.shape[-2:])
        conditioning_mask = conditioning_mask.expand(conditioning_image.shape[0], -1, -1, -1)
        image_conditioning = torch.cat([conditioning_mask, conditioning_image], dim=1)
        return image_conditioning.to(shared.device).type(self.sd_model.dtype)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        source_image = devices.cond_cast_float(source_image)
        if self.sampler.conditioning_key in {'hybrid', 'concat'}:
            return self.inpainting_image_conditioning(source_image, latent_image, image_mask=image_mask,
                                                      round_image_mask=round_image_mask)
        # Dummy zero conditioning if we're not using inpainting or depth model.
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        return (required_prompts, steps, hires_steps, use_old_scheduling, opts.CLIP_stop_at_last_layers,
                id(shared.sd_model), extra_network_data, self.width, self.height)

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        cached_params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps,
                                           shared.opts.use_old_scheduling)
        for cache in caches:
            if cache[0] is not None and cached_params == cache[0]:
                return cache[1]
        cache = caches[0]
        with devices.autocast():
            cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps, shared.opts.use_old_scheduling)
        cache[0] = cached_params
        return cache[1]

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height,
                                                        is_negative_prompt=True)
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negative_prompts, total_steps,
                                              [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts, total_steps,
                                             [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)


def create_binary_mask(image, round=True):
    if image.mode == 'RGBA' and image.getextrema()[-1] != (255, 255):
        if round:
            image = image.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0)
        else:
            image = image.split()[-1].convert("L")
    else:
        if round:
            image = image.convert('L').point(lambda x: 255 if x > 128 else 0)
        else:
            image = image.convert('L')
    return image


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    """One image at a time, in [-1, 1]; with check_for_nans a NaN result is decoded again with the VAE in bfloat16
    ("Automatically convert VAE to bfloat16") or else float32 ("Automatically revert VAE to 32-bit floats")."""
    samples = DecodedSamples()
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    for i in range(batch.shape[0]):
        sample = sd_samplers_common.decode_first_stage(model, batch[i:i + 1])[0]
        if check_for_nans:
            try:
                devices.test_for_nans(sample, "vae")
            except devices.NansException:
                if shared.opts.auto_vae_precision_bfloat16:
                    upcast = torch.bfloat16
                elif shared.opts.auto_vae_precision:
                    upcast = torch.float32
                else:
                    raise
                if devices.dtype_vae == upcast:
                    raise
                devices.dtype_vae = upcast
                model.first_stage_model.to(devices.dtype_vae)
                batch = batch.to(devices.dtype_vae)
                sample = sd_samplers_common.decode_first_stage(model, batch[i:i + 1])[0]
        if target_device is not None:
            sample = sample.to(target_device)
        samples.append(sample)
    return samples


class DecodedSamples(list):
    already_decoded = True


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img with a mask as the WebUI does it, for the options the stand-in has: "Just resize", no mask blur,
    "Inpaint: whole picture", masked content "original" or "latent nothing"."""
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Any = None

    image_mask: Any = field(default=None, init=False)
    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.initial_noise_multiplier = opts.initial_noise_multiplier if self.initial_noise_multiplier is None \
            else self.initial_noise_multiplier

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        image_mask = self.image_mask
        if image_mask is not None:
            assert not self.mask_blur and not self.inpaint_full_res and not self.inpainting_mask_invert, \
                "not in the stand-in"
            image_mask = create_binary_mask(image_mask, round=self.mask_round)
            image_mask = images.resize_image(self.resize_mode, image_mask, self.width, self.height)
            np_mask = np.clip((np.array(image_mask).astype(np.float32)) * 2, 0, 255).astype(np.uint8)
            self.mask_for_overlay = Image.fromarray(np_mask)
            self.overlay_images = []
        latent_mask = self.latent_mask if self.latent_mask is not None else image_mask

        imgs = []
        for img in self.init_images:
            image = images.flatten(img, opts.img2img_background_color)
            image = images.resize_image(self.resize_mode, image, self.width, self.height)
            if image_mask is not None:
                image_masked = Image.new('RGBa', (image.width, image.height))
                image_masked.paste(image.convert("RGBA").convert("RGBa"),
                                   mask=ImageOps.invert(self.mask_for_overlay.convert('L')))
                self.overlay_images.append(image_masked.convert('RGBA'))
                assert self.inpainting_fill in (1, 3), "masked content 'fill' and 'latent noise' are not in the stand-in"
            image = np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0)
            imgs.append(image)

        if len(imgs) == 1:
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
            if self.overlay_images is not None:
                self.overlay_images = self.overlay_images * self.batch_size
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")

        image = torch.from_numpy(batch_images).to(shared.device, dtype=devices.dtype_vae)
        self.init_latent = sd_samplers_common.images_tensor_to_samples(image, None, self.sd_model)
        devices.torch_gc()

        if image_mask is not None:
            latmask = latent_mask.convert('RGB').resize((self.init_latent.shape[3], self.init_latent.shape[2]))
            latmask = np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0) / 255
            latmask = latmask[0]
            if self.mask_round:
                latmask = np.around(latmask)
            latmask = np.tile(latmask[None], (self.init_latent.shape[1], 1, 1))
            self.mask = torch.asarray(1.0 - latmask).to(shared.device).type(devices.dtype)
            self.nmask = torch.asarray(latmask).to(shared.device).type(devices.dtype)
            if self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
                self.extra_generation_params["Masked content"] = 'latent nothing'

        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, image_mask,
                                                                  self.mask_round)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            samples = samples * self.nmask + self.init_latent * self.mask
        del x
        devices.torch_gc()
        return samples


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None,
                 all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None,
                 comments=""):
        self.images = images_list
        self.seed = seed
        self.info = info
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.infotexts = infotexts or [info] * len(images_list)
        self.comments = "".join(f"{comment}\n" for comment in p.comments)


def uncrop(image, dest_size, paste_loc):
    x, y, w, h = paste_loc
    base_image = Image.new("RGBA", dest_size)
    base_image.paste(image.resize((w, h), Image.LANCZOS), (x, y))  # the WebUI: images.resize_image(1, …)
    return base_image


def apply_overlay(image, paste_loc, overlay):
    if overlay is None:
        return image, image.copy()
    if paste_loc is not None:
        image = uncrop(image, (overlay.width, overlay.height), paste_loc)
    original_denoised_image = image.copy()
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB"), original_denoised_image


def finish_image(p: StableDiffusionProcessing, image, i: int = 0, overlay_inpaint: bool = True):
    """What process_images_inner (WebUI 1.10.1) does with the i-th decoded image of a batch, in its order:
    scripts' postprocess_image; postprocess_maskoverlay; the original pasted back over the unmasked area
    (img2img with a mask, unless opts.overlay_inpaint is off); scripts' postprocess_image_after_composite; then the
    image is saved and its infotext made from p.extra_generation_params. Returns the final image."""
    p.batch_index = i
    if p.scripts is not None:
        pp = scripts.PostprocessImageArgs(image)
        p.scripts.postprocess_image(p, pp)
        image = pp.image
    mask_for_overlay = getattr(p, "mask_for_overlay", None)
    overlay_image = None
    if overlay_inpaint and p.overlay_images is not None and i < len(p.overlay_images):
        overlay_image = p.overlay_images[i]
    if p.scripts is not None:
        ppmo = scripts.PostProcessMaskOverlayArgs(i, mask_for_overlay, overlay_image)
        p.scripts.postprocess_maskoverlay(p, ppmo)
        overlay_image = ppmo.overlay_image
    image, _ = apply_overlay(image, p.paste_to, overlay_image)
    if p.scripts is not None:
        pp = scripts.PostprocessImageArgs(image)
        p.scripts.postprocess_image_after_composite(p, pp)
        image = pp.image
    if p.save_samples():
        images.save_image(image, p.outpath_samples, "", p.seeds[i] if p.seeds else p.seed, p.prompt, "png", p=p)
    image.info["parameters"] = ", ".join(f"{k}: {v}" for k, v in p.extra_generation_params.items())
    return image
