"""Processing objects as far as HandRefiner reads and drives them: the job's fields, and img2img inpainting
("Just resize", no mask blur, whole picture, masked content original or latent nothing) for its second pass."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules import devices, extra_networks, images, prompt_parser, scripts, sd_samplers, sd_samplers_common, shared

# The keyword arguments (all optional) and their defaults, as the WebUI's dataclass has them.
_JOB_FIELDS = dict(
    prompt="", negative_prompt="", styles=None, seed=-1, subseed=-1, subseed_strength=0, seed_resize_from_h=-1,
    seed_resize_from_w=-1, sampler_name=None, scheduler=None, batch_size=1, n_iter=1, steps=50, cfg_scale=7.0,
    width=512, height=512, outpath_samples=None, do_not_save_samples=False, do_not_save_grid=False,
    extra_generation_params=None, overlay_images=None, eta=None, denoising_strength=None, s_min_uncond=None,
    s_churn=None, s_tmax=None, s_tmin=None, s_noise=None, override_settings=None, disable_extra_networks=False)
_IMG2IMG_FIELDS = dict(
    init_images=None, resize_mode=0, denoising_strength=0.75, image_cfg_scale=None, mask=None, mask_blur=4,
    mask_round=True, inpainting_fill=0, inpaint_full_res=True, inpaint_full_res_padding=0, inpainting_mask_invert=0,
    initial_noise_multiplier=None, latent_mask=None)


class StableDiffusionProcessing:
    fields = _JOB_FIELDS
    cached_c = [None, None]    # (parameters, conds) of the last prompts: shared by every job, as in the WebUI
    cached_uc = [None, None]

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.fields)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        self.__dict__.update({**self.fields, **kwargs})
        self.styles = self.styles or []
        self.extra_generation_params = dict(self.extra_generation_params or {})
        self.override_settings = self.override_settings or {}
        self.comments = {}
        self.scripts, self.script_args, self.batch_index = None, [], 0
        self.sampler = self.c = self.uc = self.rng = self.extra_network_data = None
        self.sampler_noise_scheduler_override = self.mask_for_overlay = self.paste_to = None
        self.is_hr_pass = self.is_using_inpainting_conditioning = False
        self.iteration = 0
        self.all_prompts = self.all_negative_prompts = self.all_seeds = self.all_subseeds = None
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1

    def fill_fields_from_opts(self):
        for name in ("s_min_uncond", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(shared.opts, name))
        self.s_tmax = self.s_tmax or float("inf")

    def setup_prompts(self):
        """Every image's prompts (the stand-in has no styles)."""
        count = self.batch_size * self.n_iter
        self.all_prompts, self.all_negative_prompts = [self.prompt] * count, [self.negative_prompt] * count

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def _conds(self, compute, prompts, steps, cache):
        """compute(model, prompts, steps, …), or the cache's when the same prompts, steps, model and networks asked
        for it last."""
        key = (list(prompts), steps, shared.opts.use_old_scheduling, shared.opts.CLIP_stop_at_last_layers,
               id(shared.sd_model), self.extra_network_data, self.width, self.height)
        if cache[0] != key:
            with devices.autocast():
                cache[1] = compute(shared.sd_model, prompts, steps, None, shared.opts.use_old_scheduling)
            cache[0] = key
        return cache[1]

    def setup_conds(self):
        config = sd_samplers.find_sampler_config(self.sampler_name)
        steps = config.total_steps(self.steps) if config else self.steps
        size = dict(width=self.width, height=self.height)
        negative = prompt_parser.SdConditioning(self.negative_prompts, is_negative_prompt=True, **size)
        self.uc = self._conds(prompt_parser.get_learned_conditioning, negative, steps, self.cached_uc)
        self.c = self._conds(prompt_parser.get_multicond_learned_conditioning,
                             prompt_parser.SdConditioning(self.prompts, **size), steps, self.cached_c)

    def close(self):
        self.sampler = self.c = self.uc = None
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        """An inpainting model's extra channels: the mask at latent size and the latent of the image with the
        masked part blanked (by "Inpainting conditioning mask strength"); a 5-channel zero for other models."""
        if self.sampler.conditioning_key not in ("hybrid", "concat"):
            return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)
        self.is_using_inpainting_conditioning = True
        source_image = devices.cond_cast_float(source_image)
        if image_mask is None:
            mask = source_image.new_ones(1, 1, *source_image.shape[-2:])
        else:
            mask = torch.from_numpy(np.asarray(image_mask.convert("L"), dtype=np.float32) / 255)[None, None]
            mask = (mask.round() if round_image_mask else mask).to(source_image)
        weight = getattr(self, "inpainting_mask_weight", shared.opts.inpainting_mask_weight)
        masked = torch.lerp(source_image, source_image * (1 - mask), weight)
        latent = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(masked))
        mask = torch.nn.functional.interpolate(mask, size=latent_image.shape[-2:]).expand(len(latent), -1, -1, -1)
        return torch.cat([mask, latent], dim=1).to(shared.device).type(self.sd_model.dtype)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    fields = {**_JOB_FIELDS, **_IMG2IMG_FIELDS}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_mask, self.mask = self.mask, None
        self.nmask = self.init_latent = self.image_conditioning = None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = shared.opts.initial_noise_multiplier

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.mask_blur or self.inpaint_full_res or self.inpainting_mask_invert or self.resize_mode:
            raise NotImplementedError("mask blur, 'only masked', inverted masks and resize modes other than "
                                      "'Just resize' are not in the stand-in")
        if self.image_mask is not None and self.inpainting_fill not in (1, 3):
            raise NotImplementedError("masked content 'fill' and 'latent noise' are not in the stand-in")
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        size = (self.width, self.height)

        mask = None
        if self.image_mask is not None:
            mask = self.image_mask.convert("L")
            if self.mask_round:
                mask = mask.point(lambda v: 255 if v > 128 else 0)
            mask = images.resize_image(0, mask, *size)
            self.mask_for_overlay = mask.point(lambda v: min(2 * v, 255))
            keep = Image.eval(self.mask_for_overlay, lambda v: 255 - v)
            self.overlay_images = []

        pixels = []
        for picture in self.init_images:
            picture = images.resize_image(0, images.flatten(picture, shared.opts.img2img_background_color), *size)
            if mask is not None:
                overlay = Image.new("RGBA", size)
                overlay.paste(picture.convert("RGBA"), mask=keep)
                self.overlay_images.append(overlay)
            pixels.append(np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) / 255)
        if len(pixels) == 1:
            pixels *= self.batch_size
            self.overlay_images = self.overlay_images and self.overlay_images * self.batch_size
        elif len(pixels) > self.batch_size:
            raise RuntimeError(f"bad number of images passed: {len(pixels)}; expecting {self.batch_size} or less")
        else:
            self.batch_size = len(pixels)
        image = torch.from_numpy(np.stack(pixels)).to(shared.device, devices.dtype_vae)
        self.init_latent = sd_samplers_common.images_tensor_to_samples(image, None, self.sd_model)

        if mask is not None:
            latent_mask = (self.latent_mask or mask).convert("RGB").resize(self.init_latent.shape[:1:-1])
            regenerate = np.asarray(latent_mask, dtype=np.float32)[..., 0] / 255
            regenerate = np.around(regenerate) if self.mask_round else regenerate
            regenerate = torch.from_numpy(regenerate).expand(self.init_latent.shape[1], -1, -1)
            self.nmask = regenerate.to(shared.device, devices.dtype)
            self.mask = (1 - regenerate).to(shared.device, devices.dtype)
            if self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
                self.extra_generation_params["Masked content"] = "latent nothing"
        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, mask,
                                                                  self.mask_round)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        noise = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            noise = noise * self.initial_noise_multiplier
        latent = self.sampler.sample_img2img(self, self.init_latent, noise, conditioning, unconditional_conditioning,
                                             image_conditioning=self.image_conditioning)
        if self.mask is not None:   # the original pasted back outside the mask, after the last step
            latent = latent * self.nmask + self.init_latent * self.mask
        return latent


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    """Latents → images in [-1, 1], one at a time. With check_for_nans a VAE result with NaNs is decoded again in
    bfloat16 ("Automatically convert VAE to bfloat16") or float32 ("… revert VAE to 32-bit floats"), which then
    stays the VAE's type; NaNs from the UNet, or with neither option, raise devices._NansException."""
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    decoded = []
    for latent in batch.split(1):
        image = sd_samplers_common.decode_first_stage(model, latent)[0]
        if check_for_nans and torch.isnan(image).any():
            upcast = torch.bfloat16 if shared.opts.auto_vae_precision_bfloat16 else \
                torch.float32 if shared.opts.auto_vae_precision else None
            if upcast is None or upcast == devices.dtype_vae:
                devices.test_for_nans(image, "vae")
            devices.dtype_vae = upcast
            model.first_stage_model.to(upcast)
            image = sd_samplers_common.decode_first_stage(model, latent)[0]
        decoded.append(image if target_device is None else image.to(target_device))
    return decoded


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images, self.seed, self.info = images_list, seed, info
        self.infotexts = infotexts or [info] * len(images_list)
        self.index_of_first_image = index_of_first_image
        self.extra_generation_params = p.extra_generation_params
        self.comments = "".join(text + "\n" for text in p.comments)


def _apply_overlay(image, paste_loc, overlay):
    """(the image with `overlay` composited over it, the image before that); paste_loc (x, y, w, h) first scales
    the image into that box of an overlay-sized canvas."""
    if overlay is None:
        return image, image.copy()
    if paste_loc is not None:
        x, y, w, h = paste_loc
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(image.resize((w, h), Image.LANCZOS), (x, y))
        image = canvas
    before = image.copy()
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay)
    return composed.convert("RGB"), before


def finish_image(p, image, i: int = 0, overlay_inpaint: bool = True):
    """The stand-in's one helper that the WebUI has not: the steps process_images_inner takes with the i-th
    decoded image, in the WebUI 1.10.1's order (scripts' postprocess_image, postprocess_maskoverlay, the original
    pasted over the unmasked area, postprocess_image_after_composite, save, infotext). Returns the final image."""
    p.batch_index = i
    runner = p.scripts

    def hook(name, args):
        if runner is not None:
            getattr(runner, name)(p, args)
        return args

    image = hook("postprocess_image", scripts.PostprocessImageArgs(image)).image
    overlay = p.overlay_images[i] if overlay_inpaint and p.overlay_images and i < len(p.overlay_images) else None
    overlay = hook("postprocess_maskoverlay",
                   scripts.PostProcessMaskOverlayArgs(i, p.mask_for_overlay, overlay)).overlay_image
    image = _apply_overlay(image, p.paste_to, overlay)[0]
    image = hook("postprocess_image_after_composite", scripts.PostprocessImageArgs(image)).image
    if p.outpath_samples is not None and not p.do_not_save_samples:
        images.save_image(image, p.outpath_samples, "", p.seeds[i] if p.seeds else p.seed, p.prompt, "png", p=p)
    image.info["parameters"] = ", ".join(f"{key}: {value}" for key, value in p.extra_generation_params.items())
    return image
