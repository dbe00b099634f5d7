"""Image → perception → per-hand crops → refine → composite.

Each refinable hand (or all hands at once, `hands_together`) gets a square crop around its mask box of at least
the working resolution (`hand_crop_region`), so an image of that size is refined whole at scale 1 as the official
code does, and larger ones at native scale. The mesh is moved into the crop and its depth rendered there (crisp at
any zoom); the refined crop is resized back and composited through the mask feathered inward: pixels outside the
mask are the original's, byte for byte. Crops may hang over the image edge (edge-padded), so any image size or
aspect works.
"""
from __future__ import annotations

import contextlib
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from lib_handrefiner.masking import enclosing_box
from lib_handrefiner.sampler import (
    LATENT_SCALE,
    InpaintRequest,
    SamplingInterrupted,
    ddim_step_count,
    sample_inpaint,
    size_multiple,
    with_extra_negative,
)
from lib_handrefiner.sd_model import SDModel
from lib_handrefiner.settings import (
    BUILTIN_SAMPLER,
    DEFAULT_NEGATIVE_PROMPT,
    HAND_BOXES_INFOTEXT_KEY,
    MESHES_INFOTEXT_KEY,
    HandRefinerArgs,
    replace,
    to_infotext,
)

Box = Tuple[int, int, int, int]
CROP_CONTEXT = 0.5      # a crop's side is the mask box's longest side × (1 + this): room for the arm and background
ProgressFn = Callable[[int, int], None]


class SampleFn(Protocol):
    """How a crop is inpainted: `sampler.sample_inpaint` (the built-in official DDIM loop) or the WebUI's own
    sampling (`webui.sampling.WebUISampling`). Returns (len(strengths),3,H,W) in [-1,1], one image per control
    strength, all from the same noise; raises sampler.SamplingInterrupted when `should_stop()` asks to."""

    def __call__(self, sd: SDModel, controlnet: Any, request: InpaintRequest, strengths: Sequence[float], seed: int,
                 callback: Optional[ProgressFn] = None, should_stop: Optional[Callable[[], bool]] = None
                 ) -> torch.Tensor: ...


@dataclass(frozen=True)
class CropRegion:
    """A rectangle in image pixels (may extend past the image) and the working size it is resized to."""
    x0: int
    y0: int
    width: int
    height: int
    work_width: int      # multiples of the UNet's size multiple (64 for SD 1.5)
    work_height: int

    @property
    def scale(self) -> float:
        return self.work_width / self.width


@dataclass
class RefinedHand:
    box: Box
    handedness: str
    score: float
    strength: float
    tried: List[Tuple[float, float]] = field(default_factory=list)  # (strength, mpjpe px) in adaptive mode
    seed: int = 0
    crop: Optional[Box] = None      # x0, y0, x1, y1 of the crop region (may extend past the image)
    crop_scale: float = 1.0         # working pixels per image pixel (1: native scale; above 1: zoomed in)
    mesh: str = ""                  # the mesh model the hand's depth guide came from ("graphormer", "landmarks")

    def report(self) -> dict:
        """The hand as the refine JSON gives it (strict JSON: an MPJPE without a re-detected hand is null)."""
        return {"box": list(self.box), "handedness": self.handedness, "score": self.score, "strength": self.strength,
                "tried": tried_entries(self.tried), "seed": self.seed,
                "crop": list(self.crop) if self.crop else None, "crop_scale": self.crop_scale, "mesh": self.mesh}


TRIED_KEY = "HandRefiner tried"  # infotext: per refined hand, the strengths tried in adaptive mode


def tried_entries(tried: Sequence[Tuple[float, float]]) -> List[dict]:
    """[{"strength": 0.4, "mpjpe": 7.3}, …] in the order sampled; mpjpe null where no hand was found again."""
    from lib_handrefiner.strict_json import finite_or_none

    return [{"strength": float(s), "mpjpe": finite_or_none(e)} for s, e in tried]


def tried_infotext(hands: Sequence[RefinedHand]) -> dict:
    """{TRIED_KEY: JSON list with one `tried_entries` list per refined hand} when any hand tried strengths."""
    from lib_handrefiner.strict_json import dumps

    if not any(h.tried for h in hands):
        return {}
    return {TRIED_KEY: dumps([tried_entries(h.tried) for h in hands], separators=(",", ":"))}


def meshes_infotext(hands: Sequence[RefinedHand]) -> dict:
    """{MESHES_INFOTEXT_KEY: the mesh model of each refined hand, in order} when any hand was refined."""
    return {MESHES_INFOTEXT_KEY: " ".join(h.mesh for h in hands)} if hands else {}


def hand_boxes_infotext(hands: Sequence[RefinedHand]) -> dict:
    """{HAND_BOXES_INFOTEXT_KEY: the box of each refined hand, "x0 y0 x1 y1;…"} when any hand was refined."""
    from lib_handrefiner.settings.text import format_text

    return {HAND_BOXES_INFOTEXT_KEY: format_text([list(h.box) for h in hands])} if hands else {}


@dataclass
class RefineResult:
    image: np.ndarray               # RGB uint8, the input's size
    perception: Any                 # PerceptionResult
    hands: List[RefinedHand]
    infotext: str
    timings_ms: dict
    message: str
    seed: int = 0
    negative_prompt: str = ""       # the hands' negative prompt, before the extra negative (resolve_negative)
    unet_calls: int = 0             # forward calls of the UNet in the hand passes: their cost, whatever the load


def round_up(n: float, multiple: int = LATENT_SCALE) -> int:
    return int(math.ceil(n / multiple) * multiple)


def hand_crop_region(box: Sequence[float], image_w: int, image_h: int, resolution: int,
                     multiple: int = LATENT_SCALE, min_side: int = 0) -> CropRegion:
    """A square around `box` with CROP_CONTEXT margin and at least `min_side` px (0: the working resolution), but
    no larger than the image's shorter side unless the box itself is; moved inside the image where it fits,
    centred on the image where it is larger (then edge-padded). It is resized to the working resolution, so a
    hand in an image of that size is refined on the whole image at scale 1, as the official code does, and in a
    larger image at its native scale (downscaled only when the hand with its margin is larger than the working
    size); a `min_side` below the working resolution zooms into hands smaller than it."""
    x0, y0, x1, y1 = box
    resolution = round_up(resolution, multiple)
    extent = max(x1 - x0, y1 - y0)
    wanted = max(int(math.ceil(extent * (1.0 + CROP_CONTEXT))), min_side or resolution)
    side = max(8, int(math.ceil(extent)), min(wanted, min(image_w, image_h)))

    def place(center: float, size: int) -> int:
        start = int(round(center - side / 2))
        return min(max(start, 0), size - side) if side <= size else (size - side) // 2

    return CropRegion(place((x0 + x1) / 2, image_w), place((y0 + y1) / 2, image_h), side, side, resolution,
                      resolution)


def whole_image_region(image_w: int, image_h: int, multiple: int = LATENT_SCALE) -> CropRegion:
    """crop=False: the whole image at its own resolution, edge-padded to the UNet's size multiple."""
    w, h = round_up(image_w, multiple), round_up(image_h, multiple)
    return CropRegion(0, 0, w, h, w, h)


def cut(array: np.ndarray, region: CropRegion, pad_mode: str) -> np.ndarray:
    """The region of an H×W(×C) array; parts outside the image are edge-replicated ("edge") or zero ("constant")."""
    h, w = array.shape[:2]
    x0, y0, x1, y1 = region.x0, region.y0, region.x0 + region.width, region.y0 + region.height
    inner = array[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pads = [(max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(inner, pads, mode=pad_mode) if any(p != (0, 0) for p in pads) else inner


def resize(array: np.ndarray, width: int, height: int, resample=Image.LANCZOS) -> np.ndarray:
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return np.array(Image.fromarray(array).resize((width, height), resample))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 → (1,3,H,W) in [-1,1]."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> List[np.ndarray]:
    """(B,3,H,W) in [-1,1] → list of uint8 H×W×3."""
    arr = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


def grow_box(box: Sequence[float], by: int, w: int, h: int) -> Box:
    x0, y0, x1, y1 = box
    return (max(0, int(math.floor(x0)) - by), max(0, int(math.floor(y0)) - by),
            min(w, int(math.ceil(x1)) + by), min(h, int(math.ceil(y1)) + by))


def region_mask(mask: np.ndarray, boxes: Sequence[Sequence[float]], region: CropRegion, dilation: int
                ) -> np.ndarray:
    """The part of the perception mask inside the crop region that belongs to `boxes` (grown by the mask
    dilation)."""
    h, w = mask.shape
    keep = np.zeros_like(mask, dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = grow_box(box, dilation, w, h)
        keep[y0:y1, x0:x1] = True
    inside = np.zeros_like(keep)
    x1, y1 = region.x0 + region.width, region.y0 + region.height
    inside[max(0, region.y0):max(0, y1), max(0, region.x0):max(0, x1)] = True
    return np.where(keep & inside & (mask > 0), 255, 0).astype(np.uint8)


def composite(original: np.ndarray, refined_region: np.ndarray, region: CropRegion, weight: np.ndarray
              ) -> np.ndarray:
    """original·(1−f) + refined·f inside the region; every pixel with f = 0 stays the original's exactly."""
    h, w = original.shape[:2]
    x0, y0 = max(region.x0, 0), max(region.y0, 0)
    x1, y1 = min(region.x0 + region.width, w), min(region.y0 + region.height, h)
    patch = refined_region[y0 - region.y0:y1 - region.y0, x0 - region.x0:x1 - region.x0].astype(np.float32)
    f = weight[y0:y1, x0:x1, None]
    orig = original[y0:y1, x0:x1]
    blended = np.clip(np.rint(orig.astype(np.float32) * (1.0 - f) + patch * f), 0, 255).astype(np.uint8)
    out = original.copy()
    out[y0:y1, x0:x1] = np.where(f > 0, blended, orig)
    return out


def format_infotext(entries: dict) -> str:
    """A1111-style "Key: value, Key: value"; values with separators are JSON-quoted."""
    import json

    def fmt(v: Any) -> str:
        s = str(v)
        return json.dumps(s) if any(c in s for c in ',:\n"') else s

    return ", ".join(f"{k}: {fmt(v)}" for k, v in entries.items())


def resolve_negative(args: HandRefinerArgs, job_negative: Optional[str]) -> str:
    """The hands' negative prompt (the extra negative goes before it): the setting, else the job's (a WebUI job's,
    even when empty), else — no job, as on the command line, the API and the editor — the official one."""
    if args.negative_prompt:
        return args.negative_prompt
    return job_negative if job_negative is not None else DEFAULT_NEGATIVE_PROMPT


def choose_seed(seed: Optional[int], args: HandRefinerArgs) -> int:
    if seed is not None and seed >= 0:
        return int(seed) % 2 ** 32
    if args.seed >= 0:
        return args.seed
    return secrets.randbelow(2 ** 32)


@dataclass
class _Unit:
    """One sampling pass: one hand, or all hands together."""
    hands: list          # PerceivedHand
    region: CropRegion
    seed: int


def _units(perception, args: HandRefinerArgs, base_seed: int, multiple: int) -> List[_Unit]:
    hands = [h for h in perception.hands if h.refinable]
    if not hands:
        return []
    w, h = perception.width, perception.height
    if not args.crop:
        return [_Unit(hands, whole_image_region(w, h, multiple), base_seed)]
    if args.hands_together:
        union = enclosing_box(hd.box for hd in hands)
        return [_Unit(hands, hand_crop_region(union, w, h, args.crop_resolution, multiple, args.crop_min_side),
                      base_seed)]
    return [_Unit([hd], hand_crop_region(hd.box, w, h, args.crop_resolution, multiple, args.crop_min_side),
                  (base_seed + i) % 2 ** 32) for i, hd in enumerate(hands)]


def render_hint(all_meshes: list, region: CropRegion) -> np.ndarray:
    """The meshes' depth rendered in the crop's camera at the working size (crisp at any zoom)."""
    from lib_handrefiner.depth import render_depth
    from lib_handrefiner.mesh import transform_mesh

    meshes = [transform_mesh(m, region.scale, (region.x0, region.y0)) for m in all_meshes]
    return render_depth(meshes, region.work_width, region.work_height).depth


def crop_pixels(image: np.ndarray, mask: np.ndarray, region: CropRegion) -> Tuple[np.ndarray, np.ndarray]:
    """The region at the working size: the image (edge-padded, Lanczos) and the mask (bilinear, then any
    coverage is hand), as the refiner sees them; training data is cut the same way."""
    crop = resize(cut(image, region, "edge"), region.work_width, region.work_height)
    crop_mask = resize(cut(mask, region, "constant"), region.work_width, region.work_height, Image.BILINEAR)
    return crop, crop_mask > 0


def unit_mask(perception_mask: np.ndarray, boxes: Sequence[Sequence[float]], region: CropRegion,
              args: HandRefinerArgs) -> np.ndarray:
    """The mask one sampling pass regenerates and composites (feathered inward): the boxes' part of the perception
    mask inside the region."""
    return region_mask(perception_mask, boxes, region, args.mask_dilation + 1)


def _crop_request(image: np.ndarray, mask: np.ndarray, meshes: list, region: CropRegion, args: HandRefinerArgs,
                  prompt: str, negative_prompt: str) -> InpaintRequest:
    """The region at the working size: image, mask, and the depth of the meshes rendered in the crop's camera."""
    crop, crop_mask = crop_pixels(image, mask, region)
    depth = render_hint(meshes, region)
    return InpaintRequest(image=to_tensor(crop), mask=torch.from_numpy(crop_mask)[None, None].float(),
                          hint=torch.from_numpy(depth).float().div(255.0)[None, None].expand(1, 3, -1, -1),
                          prompt=prompt, negative_prompt=negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale,
                          denoising_strength=args.denoising_strength)


class _StepCounter:
    """Turns the sampler's per-pass step callbacks into one progress count over the whole image."""

    def __init__(self, progress: Optional[ProgressFn], total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, _done_in_pass: int, _pass_total: int) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))


def refine_image(image, sd: SDModel, controlnet, args: HandRefinerArgs, prompt: str = "",
                 negative_prompt: Optional[str] = None,
                 seed: Optional[int] = None, mesh_model=None, perception=None, progress: Optional[ProgressFn] = None,
                 should_stop: Optional[Callable[[], bool]] = None, sample_fn: Optional[SampleFn] = None,
                 mesh_warning: str = "") -> RefineResult:
    """Refines the hands of `image` (any RGB input `imageio.to_rgb` takes). `args.prompt`/`negative_prompt`, when
    set, override the job's prompts given here; without a job negative (None) the official one is used.
    `perception` skips detection (e.g. user-edited boxes). `progress(done, total)` is called after every sampling
    step; `should_stop()` is polled before each one and
    ends the run with the hands refined so far. `sample_fn` inpaints each crop (None: the built-in
    `sample_inpaint`); crops, masks, the adaptive search and compositing are the same whichever samples.
    `mesh_model` is the model `args.mesh_model` resolved to (None: resolved here) and `mesh_warning` the warning
    of that resolution (the result's message repeats it)."""
    from lib_handrefiner.imageio import to_rgb
    from lib_handrefiner.masking import feather
    from lib_handrefiner.perception import nothing_to_refine_message, with_mesh_warning

    if sample_fn is None and args.sampler != BUILTIN_SAMPLER:
        raise ValueError(f"sampler {args.sampler!r} is one of the WebUI's samplers, which only the WebUI extension "
                         f"runs; use {BUILTIN_SAMPLER!r} here")
    started = time.perf_counter()
    timings: dict = {}
    original = to_rgb(image)
    if mesh_model is None and args.mode == "adaptive":
        from lib_handrefiner.mesh import resolve_mesh_model

        # One model for perception and the pose checks (the paper: the same hand mesh reconstruction model).
        mesh_model, mesh_warning = resolve_mesh_model(args.mesh_model, fallback=args.mesh_fallback)
    if perception is None:
        from lib_handrefiner.perception import perceive

        t = time.perf_counter()
        perception = perceive(original, args, mesh_model=mesh_model, mesh_warning=mesh_warning)
        _add(timings, "perception", t)
    if (perception.width, perception.height) != (original.shape[1], original.shape[0]):
        raise ValueError(f"the perception is for a {perception.width}x{perception.height} image but the image is "
                         f"{original.shape[1]}x{original.shape[0]}; run perceive on this image")
    base_seed = choose_seed(seed, args)
    entries = to_infotext(replace(args, enabled=True, seed=base_seed))
    units = _units(perception, args, base_seed, size_multiple(sd.unet))
    if not units:
        _add(timings, "total", started)
        return RefineResult(original.copy(), perception, [], format_infotext(entries), timings,
                            with_mesh_warning(nothing_to_refine_message(perception, args), perception),
                            base_seed, resolve_negative(args, negative_prompt))

    meshes = [hd.mesh for hd in perception.hands if hd.refinable]
    prompt_used = args.prompt or prompt
    negative = resolve_negative(args, negative_prompt)
    negative_used = with_extra_negative(negative, args.extra_negative)
    passes = 1 if args.mode == "fixed" else math.ceil((1 + len(args.adaptive_strengths)) / args.adaptive_batch)
    on_step = _StepCounter(progress, ddim_step_count(args.steps, args.denoising_strength) * passes * len(units))
    out, refined, regions, interrupted = original, [], 0, False
    unet_calls = [0]
    for unit in units:
        region = unit.region
        t = time.perf_counter()
        mask = unit_mask(perception.mask, [hd.box for hd in unit.hands], region, args)
        if not mask.any():
            continue
        weight = feather(mask, args.mask_feather)
        request = _crop_request(out, mask, meshes, region, args, prompt_used, negative_used)
        _add(timings, "crop", t)

        def sample(strengths: Sequence[float]) -> List[np.ndarray]:
            with counted_calls(getattr(sd, "unet", None), unet_calls):
                return to_uint8((sample_fn or sample_inpaint)(sd, controlnet, request, list(strengths), unit.seed,
                                                              on_step, should_stop))

        t = time.perf_counter()
        try:
            if args.mode == "adaptive":
                found = _adaptive(sample, unit, region, args, mesh_model)
                refined_crop, strength, tried = found.sample, found.strength, list(found.tried)
            else:
                refined_crop, strength, tried = sample([args.strength])[0], args.strength, []
        except SamplingInterrupted:
            interrupted = True
            break
        _add(timings, "sample", t)
        t = time.perf_counter()
        out = composite(out, resize(refined_crop, region.width, region.height), region, weight)
        _add(timings, "composite", t)
        regions += 1
        crop_box = (region.x0, region.y0, region.x0 + region.width, region.y0 + region.height)
        refined += [RefinedHand(box=tuple(int(v) for v in hd.box),
                                handedness=hd.hand.handedness if hd.hand else "unknown",
                                score=float(hd.hand.score) if hd.hand else 0.0, strength=float(strength),
                                tried=tried, seed=unit.seed, crop=crop_box, crop_scale=region.scale,
                                mesh=hd.mesh.model)
                    for hd in unit.hands]
    if interrupted:
        message = f"interrupted: refined {regions} of {len(units)} region(s)"
    elif regions:
        message = f"refined {len(refined)} hand(s) in {regions} region(s)"
    else:
        message = "the hand masks are empty; image unchanged"
    _add(timings, "total", started)
    infotext = format_infotext({**entries, **tried_infotext(refined), **meshes_infotext(refined),
                                **hand_boxes_infotext(refined)})
    return RefineResult(out, perception, refined, infotext, timings, with_mesh_warning(message, perception),
                        base_seed, negative, unet_calls[0])


@contextlib.contextmanager
def counted_calls(module: Any, count: List[int]) -> Iterator[None]:
    """Adds the forward calls of `module` (a torch module; anything else counts nothing) inside the context to
    count[0]. Every engine samples through the UNet's forward (the ControlNet's hooks rely on it), so this counts
    the built-in loop's calls and the WebUI samplers' alike."""
    if not isinstance(module, torch.nn.Module):
        yield
        return

    def counted(*_: Any) -> None:
        count[0] += 1

    handle = module.register_forward_pre_hook(counted)
    try:
        yield
    finally:
        handle.remove()


def _add(timings: dict, key: str, since: float) -> None:
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - since) * 1000


def _adaptive(sample: Callable[[Sequence[float]], List[np.ndarray]], unit: _Unit, region: CropRegion,
              args: HandRefinerArgs, mesh_model):
    """Per region: the first strength whose re-detected pose error (in the crop) passes the reference test.
    `mesh_model` is the one refine_image resolved, so the pose checks fit the same mesh as the guide."""
    from lib_handrefiner.adaptive import refit_error, search_strength
    from lib_handrefiner.detection import crop_hand
    from lib_handrefiner.mesh import transform_mesh

    offset = (region.x0, region.y0)
    targets = [transform_mesh(hd.mesh, region.scale, offset).joints[:, :2] for hd in unit.hands]
    hands = [crop_hand(hd.hand, region.scale, offset) for hd in unit.hands]
    boxes = [None if hd.mesh_box is None else [(v - offset[i % 2]) * region.scale for i, v in enumerate(hd.mesh_box)]
             for hd in unit.hands]

    def error(crop_rgb: np.ndarray) -> float:
        return float(np.mean([refit_error(crop_rgb, hand, target, mesh_model, args, box)
                              for hand, target, box in zip(hands, targets, boxes)]))

    return search_strength(sample, error, reference=args.adaptive_reference, strengths=args.adaptive_strengths,
                           factor=args.adaptive_factor, batch_size=args.adaptive_batch)
