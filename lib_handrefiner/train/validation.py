"""Periodic validation: held-out samples refined at control strengths 0.4, 0.55 and 0.8, as one labelled grid.

Each sample goes through the refiner's own sampling stage (`sampler.sample_inpaint`, the call `refine_image`
makes for every crop: DDIM with the known region re-noised and blended back, CFG with the extra negative, the
strengths as one batch from one noise, the refiner's default negative prompt) with the sample's own mask and
hint, and is composited through the feathered mask as the pipeline composites. The sample's hint is used rather than a
re-detected mesh's, so the grid
shows what the ControlNet makes of the hints it is trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from lib_handrefiner.grid import GridTile, grid_image
from lib_handrefiner.settings import HandRefinerArgs

VALIDATION_STRENGTHS = (0.4, 0.55, 0.8)
TILE = 256


@dataclass
class ValidationSample:
    name: str
    rgb: np.ndarray       # H×W×3 uint8
    mask: np.ndarray      # H×W bool
    hint: np.ndarray      # H×W×3 uint8
    caption: str


def refine_sample(sd, controlnet, sample: ValidationSample, args: HandRefinerArgs, strengths: Sequence[float],
                  seed: int) -> List[np.ndarray]:
    """The sample refined once per strength (one batch, one noise), composited into the sample's image."""
    from lib_handrefiner.masking import feather
    from lib_handrefiner.pipeline import composite, resolve_negative, to_uint8, whole_image_region
    from lib_handrefiner.sampler import InpaintRequest, sample_inpaint, with_extra_negative
    from lib_handrefiner.train.folder import sample_tensors

    h, w = sample.mask.shape
    image, mask, hint = sample_tensors(sample.rgb, sample.mask, sample.hint)  # the tensors training sees
    request = InpaintRequest(image=image[None], mask=mask[None], hint=hint[None], prompt=args.prompt or sample.caption,
                             negative_prompt=with_extra_negative(resolve_negative(args, None), args.extra_negative),
                             steps=args.steps, cfg_scale=args.cfg_scale, denoising_strength=args.denoising_strength)
    refined = to_uint8(sample_inpaint(sd, controlnet, request, list(strengths), seed))
    weight = feather(np.where(sample.mask, 255, 0).astype(np.uint8), args.mask_feather)
    region = whole_image_region(w, h, 1)
    return [composite(sample.rgb, crop, region, weight) for crop in refined]


def validation_grid(sd, controlnet, samples: Sequence[ValidationSample], args: HandRefinerArgs, seed: int,
                    strengths: Sequence[float] = VALIDATION_STRENGTHS, tile: int = TILE) -> np.ndarray:
    """One row per sample: its image, its hint, then the refinement at each strength; every tile labelled."""
    was_training = controlnet.training
    controlnet.eval()
    try:
        tiles: List[GridTile] = []
        for sample in samples:
            refined = refine_sample(sd, controlnet, sample, args, strengths, seed)
            tiles += [GridTile(f"input {sample.name}", None, None, sample.rgb),
                      GridTile("hint", None, None, sample.hint)]
            tiles += [GridTile(f"{s:g}", s, None, image) for s, image in zip(strengths, refined)]
    finally:
        controlnet.train(was_training)
    return grid_image(tiles, tile, columns=2 + len(strengths))
