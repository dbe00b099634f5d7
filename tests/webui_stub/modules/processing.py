from __future__ import annotations

from typing import Any, Dict, List, Optional

from PIL import Image

from modules import images, scripts


class StableDiffusionProcessing:
    """The fields HandRefiner reads or writes, with the WebUI's names."""

    def __init__(self, prompt: str = "", negative_prompt: str = "", seed: int = -1, batch_size: int = 1,
                 n_iter: int = 1, outpath_samples: Optional[str] = None, do_not_save_samples: bool = False,
                 extra_generation_params: Optional[Dict[str, Any]] = None):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.outpath_samples = outpath_samples
        self.do_not_save_samples = do_not_save_samples
        self.extra_generation_params = dict(extra_generation_params or {})
        self.comments: Dict[str, int] = {}
        self.scripts = None
        self.script_args: List[Any] = []
        self.all_prompts: List[str] = []
        self.all_negative_prompts: List[str] = []
        self.all_seeds: List[int] = []
        self.prompts: List[str] = []
        self.negative_prompts: List[str] = []
        self.seeds: List[int] = []
        self.iteration = 0
        self.batch_index = 0
        # img2img with a mask: the original with the unmasked area opaque (RGBA), per image, and where an
        # "inpaint at full resolution" crop goes back (x, y, w, h)
        self.overlay_images: Optional[List[Any]] = None
        self.paste_to = None
        self.mask_for_overlay = None
        self.color_corrections = None

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self) -> bool:
        return self.outpath_samples is not None and not self.do_not_save_samples


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
