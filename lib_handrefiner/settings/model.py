"""HandRefiner's one settings model: its fields and their validators, nothing else.

The same fields, names and defaults serve the WebUI accordion, the infotext ("HandRefiner …" keys), the
`alwayson_scripts` arguments, the REST API and the standalone command line; each surface's codec is a module
beside this one. A field's `title` is its infotext key; the field order is the order of the positional
`alwayson_scripts` args. A new setting is one field here: the accordion (settings.groups puts a field of no group
in "More"), the API, the infotext, the command line and the README's table (tests/test_readme.py) follow.
Runs on pydantic 1 and 2 (settings.compat).
"""
from __future__ import annotations

from typing import List, Literal, Tuple

from pydantic import Field

from lib_handrefiner.settings.compat import SettingsModel, check

EXTRA_NEGATIVE_DEFAULT = "fake 3D rendered image"
# The official negative prompt (handrefiner.py) after its first part, the extra negative above: what the hands are
# sampled with where no negative prompt is given (command line, API, editor; a WebUI job has its own).
DEFAULT_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                           "cropped, worst quality, low quality")
BUILTIN_SAMPLER = "DDIM (HandRefiner)"   # the official DDIM loop (sampler.py); any other name is a WebUI sampler
AUTOMATIC_SCHEDULER = "Automatic"        # the WebUI's "use the sampler's own schedule"


class HandRefinerArgs(SettingsModel):
    enabled: bool = Field(False, title="HandRefiner", description="Refine hands on generated images.")
    strength: float = Field(0.55, ge=0.0, le=2.0, title="HandRefiner strength",
                            description="ControlNet control strength (the paper's phase transition: low fixes "
                                        "structure, high loses texture).")
    mode: Literal["fixed", "adaptive"] = Field("fixed", title="HandRefiner mode",
                                               description="fixed: use `strength`; adaptive: search strengths "
                                                           "and keep the first whose MPJPE passes.")
    adaptive_strengths: List[float] = Field([0.4, 0.5, 0.6, 0.7, 0.8, 0.9], title="HandRefiner adaptive strengths",
                                            description="Strengths tried in order in adaptive mode.")
    adaptive_reference: float = Field(1.0, ge=0.0, le=2.0, title="HandRefiner adaptive reference",
                                      description="Strength of the reference sample in adaptive mode.")
    adaptive_factor: float = Field(1.15, ge=1.0, le=10.0, title="HandRefiner adaptive factor",
                                   description="Accept a strength whose MPJPE < factor x the reference's.")
    prompt: str = Field("", title="HandRefiner prompt",
                        description="Prompt for the hands; empty uses the job's prompt.")
    negative_prompt: str = Field("", title="HandRefiner negative prompt",
                                 description="Negative prompt for the hands; empty uses the job's negative prompt in "
                                             "the WebUI, elsewhere the official one (\"longbody, lowres, bad "
                                             "anatomy, …\").")
    extra_negative: str = Field(EXTRA_NEGATIVE_DEFAULT, title="HandRefiner extra negative",
                                description="Put before the negative prompt (paper eq. 3).")
    mesh_model: Literal["auto", "graphormer", "landmarks"] = Field(
        "auto", title="HandRefiner mesh",
        description="Hand mesh the depth guide is rendered from. graphormer: Mesh Graphormer, the paper's and the "
                    "released ControlNet's (needs three files you download); landmarks: built from MediaPipe's "
                    "landmarks, no files; auto: graphormer when its files are found, else landmarks.")
    controlnet: str = Field("control_sd15_inpaint_depth_hand_fp16", title="HandRefiner ControlNet",
                            description="ControlNet model file name (without extension), from the models folders.")
    inpaint_checkpoint: str = Field("", title="HandRefiner checkpoint",
                                    description="Inpainting checkpoint; empty uses the current model.")
    steps: int = Field(50, ge=1, le=150, title="HandRefiner steps",
                       description="DDIM steps, as ldm counts them (the official 50; 30 runs 31).")
    cfg_scale: float = Field(9.0, ge=1.0, le=30.0, title="HandRefiner CFG scale",
                             description="Classifier-free guidance scale.")
    denoising_strength: float = Field(1.0, ge=0.05, le=1.0, title="HandRefiner denoising strength",
                                      description="1.0 regenerates the hand from noise.")
    seed: int = Field(-1, ge=-1, le=2**32 - 1, title="HandRefiner seed",
                      description="-1: the job's seed (WebUI) or a random one (API, command line).")
    mask_padding: int = Field(30, ge=0, le=512, title="HandRefiner mask padding",
                              description="Minimum padding (px) of a hand's mask box (its keypoints and its depth "
                                          "pixels together), on each axis.")
    mask_padding_ratio: float = Field(0.15, ge=0.0, le=2.0, title="HandRefiner mask padding ratio",
                                      description="Padding as a fraction of the mask box's extent on each axis; "
                                                  "the larger of this and mask_padding is used.")
    mask_dilation: int = Field(0, ge=0, le=256, title="HandRefiner mask dilation", description="Grow the mask (px).")
    mask_feather: int = Field(8, ge=0, le=256, title="HandRefiner mask feather",
                              description="Feather the mask's edge inward when compositing (px): nothing outside the "
                                          "mask changes.")
    crop: bool = Field(True, title="HandRefiner crop",
                       description="Crop each hand, refine it at the working resolution and paste it back.")
    crop_resolution: int = Field(512, ge=64, le=2048, title="HandRefiner crop resolution",
                                 description="Working resolution of a hand crop.")
    hands_together: bool = Field(False, title="HandRefiner hands together",
                                 description="Refine all hands in one pass instead of one after another.")
    max_hands: int = Field(0, ge=0, le=32, title="HandRefiner max hands",
                           description="Most hands refined, the most confident first; 0: all.")
    detection_confidence: float = Field(0.2, ge=0.0, le=1.0, title="HandRefiner detection confidence",
                                        description="MediaPipe palm detection threshold.")
    presence_confidence: float = Field(0.2, ge=0.0, le=1.0, title="HandRefiner presence confidence",
                                       description="MediaPipe hand presence / tracking threshold.")
    min_hand_size: int = Field(16, ge=0, le=4096, title="HandRefiner min hand size",
                               description="Hands whose keypoint box side is smaller (px) are reported, not refined.")
    boxes: List[Tuple[float, float, float, float]] = Field([], title="HandRefiner boxes",
                                                           description="User hand boxes [x0, y0, x1, y1] in pixels.")
    boxes_mode: Literal["replace", "add"] = Field("replace", title="HandRefiner boxes mode",
                                                  description="replace: only the given boxes; add: with detected.")
    save_depth: bool = Field(False, title="HandRefiner save depth", description="Save / show the depth map.")
    save_mask: bool = Field(False, title="HandRefiner save mask", description="Save / show the mask.")
    # Fields added after the first release go last: positional `alwayson_scripts` args keep their meaning.
    adaptive_batch: int = Field(2, ge=1, le=8, title="HandRefiner adaptive batch",
                                description="Strengths sampled together in one batch, from the same noise: more is "
                                            "faster where memory allows (a GPU); the same strengths are tried in the "
                                            "same order.")
    sampler: str = Field(BUILTIN_SAMPLER, min_length=1, title="HandRefiner sampler",
                         description=f"{BUILTIN_SAMPLER}: the official sampler (DDIM, the known region re-noised and "
                                     "blended in before every step). In the WebUI also any of its samplers (Euler a, "
                                     "DPM++ 2M, DDIM, ...): the hands are then sampled by the WebUI's own sampling, "
                                     "with the same blend.")
    scheduler: str = Field(AUTOMATIC_SCHEDULER, min_length=1, title="HandRefiner schedule type",
                           description="The WebUI's schedule type for a WebUI sampler (Automatic: the sampler's own); "
                                       f"{BUILTIN_SAMPLER} and the WebUI's DDIM/PLMS/UniPC use their own timesteps.")
    crop_min_side: int = Field(0, ge=0, le=4096, title="HandRefiner crop min side",
                               description="Smallest side (px) of a hand crop before it is resized to the crop "
                                           "resolution; 0: the crop resolution, so an image of that size is refined "
                                           "whole at scale 1 (as the official code does) and larger images at "
                                           "native scale. Lower it to zoom into small hands.")
    mesh_fallback: bool = Field(False, title="HandRefiner mesh fallback",
                                description="When Mesh Graphormer is chosen but its files are missing or unusable, "
                                            "use the landmark mesh (with a warning) instead of failing.")

    @check("adaptive_strengths")
    def _strengths_in_range(cls, v: List[float]) -> List[float]:
        if not v:
            raise ValueError("needs at least one strength")
        bad = [s for s in v if not 0.0 <= s <= 2.0]
        if bad:
            raise ValueError(f"strengths must lie in [0, 2], got {bad}")
        return v

    @check("boxes")
    def _boxes_ordered(cls, v: List[Tuple[float, float, float, float]]) -> List[Tuple[float, float, float, float]]:
        for b in v:
            x0, y0, x1, y1 = b
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"box {list(b)} must satisfy x1 > x0 and y1 > y0")
        return v
