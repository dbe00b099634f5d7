"""The always-on script's hooks: refine the finished image and record what happened, the depth/mask previews,
and pasting an infotext back into the widgets."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pydantic import ValidationError

from lib_handrefiner.settings import FIELDS, HandRefinerArgs, describe_error, from_infotext, to_infotext, to_widget
from lib_handrefiner.webui.arguments import args_from_script_args
from lib_handrefiner.webui.env import RESULT_KEY, ImageJob, ImageOutcome, job_for_image
from lib_handrefiner.webui.refiner import WebUIRefiner
from lib_handrefiner.webui.xyz import apply_xyz_overrides

log = logging.getLogger("handrefiner")

PREVIEWS_ATTRIBUTE = "handrefiner_previews"   # p.<this>: [PIL image] shown after the job


def fill_pasted_defaults(infotext: str, params: Dict[str, Any],
                         controlnet_fallback: Callable[[HandRefinerArgs], HandRefinerArgs] = lambda args: args
                         ) -> None:
    """script_callbacks.on_infotext_pasted: an infotext holds only the HandRefiner settings that differ from the
    defaults (plus on/strength/mode); fill in the others, in the widgets' format, so that pasting restores every
    widget. An image made without HandRefiner switches the accordion off. An infotext without a ControlNet key (the
    default one was used) gets `controlnet_fallback`'s choice: the ControlNet on disk when the default name is not."""
    try:
        args = from_infotext(params)
    except (ValidationError, ValueError, TypeError) as e:
        log.warning("HandRefiner: cannot read the pasted parameters (%s)", describe_error(e))
        return
    if args is None:
        params[FIELDS["enabled"].title] = False
        return
    if FIELDS["controlnet"].title not in params:
        args = controlnet_fallback(args)
    for name, field in FIELDS.items():
        params[field.title] = to_widget(name, getattr(args, name))


def paste_field_names() -> List[str]:
    return [field.title for field in FIELDS.values()]

SavePreview = Callable[[Any, ImageJob, str], None]   # (PIL image, job, file-name suffix)


def postprocess_image(refiner: WebUIRefiner, p: Any, pp: Any, script_args: Sequence[Any], defaults: HandRefinerArgs,
                      save_preview: Optional[SavePreview] = None) -> Optional[ImageOutcome]:
    """Script.postprocess_image_after_composite: refines `pp.image` (the final image, img2img's original already
    pasted back outside the inpaint mask) in place when enabled, records the settings and the outcome in
    the image's generation parameters, shows the outcome under the gallery (p.comment) and collects the depth/mask
    previews (shown after the job by `add_previews`, saved beside the image when the job saves images)."""
    try:
        args = apply_xyz_overrides(args_from_script_args(script_args, defaults), p)
    except (ValidationError, ValueError, TypeError) as e:
        if _asks_enabled(script_args):
            message = f"invalid settings ({describe_error(e)}); the image is kept"
            log.warning("HandRefiner: %s", message)
            _comment(p, message)
            p.extra_generation_params[RESULT_KEY] = message
        return None
    if not args.enabled:
        return None
    problem = boxes_problem(args, p, pp.image.size)
    if problem:
        # Boxes of another image (e.g. kept from an earlier upload): say so, not "no hands found".
        message = f"{problem}; the image is kept"
        _comment(p, message)
        p.extra_generation_params.update({RESULT_KEY: message, **to_infotext(args)})
        return None
    job = job_for_image(p, pp.image)
    outcome = refiner.process_image(job, boxes_on_output(args, p, pp.image.size))
    pp.image = outcome.image
    p.extra_generation_params.update({**outcome.infotext, **to_infotext(args)})  # the boxes as the user gave them
    _comment(p, outcome.message)
    if outcome.previews:
        previews = getattr(p, PREVIEWS_ATTRIBUTE, None)
        if previews is None:
            previews = []
            setattr(p, PREVIEWS_ATTRIBUTE, previews)
        for suffix, image in outcome.previews:
            previews.append(image)
            if save_preview is not None and _saves_samples(p):
                try:
                    save_preview(image, job, suffix)
                except OSError as e:  # a full disk must not cost the generated image
                    log.warning("HandRefiner: could not save the %s preview: %s", suffix, e)
    return outcome


def boxes_problem(args: HandRefinerArgs, p: Any, size: Tuple[int, int]) -> str:
    """Why the user's boxes cannot be used on this image ("" when they can): a box outside the image they are
    drawn on (img2img's input image, else the output), as the API says it."""
    init_images = getattr(p, "init_images", None)
    width, height = init_images[0].size if init_images else size
    what = "input image" if init_images else "image"
    for x0, y0, x1, y1 in args.boxes:
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            box = [int(v) if float(v).is_integer() else v for v in (x0, y0, x1, y1)]
            return (f"box {box} lies outside the {width}x{height} {what}; draw the boxes on this image (Detect "
                    "hands) or clear them")
    return ""


def boxes_on_output(args: HandRefinerArgs, p: Any, size: Tuple[int, int]) -> HandRefinerArgs:
    """img2img: user boxes are drawn on the input image, which the WebUI resized to the output size (exact for
    "Just resize"); txt2img boxes are already in the output's pixels."""
    init_images = getattr(p, "init_images", None)
    if not args.boxes or not init_images:
        return args
    (in_w, in_h), (out_w, out_h) = init_images[0].size, size
    if (in_w, in_h) == (out_w, out_h):
        return args
    sx, sy = out_w / in_w, out_h / in_h
    return args.copy(update={"boxes": [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in args.boxes]})


def add_previews(p: Any, processed: Any) -> int:
    """Script.postprocess: appends the collected previews to the job's output (gallery and API images)."""
    previews = getattr(p, PREVIEWS_ATTRIBUTE, None) or []
    if not previews:
        return 0
    infotexts = getattr(processed, "infotexts", None)
    info = infotexts[getattr(processed, "index_of_first_image", 0)] if infotexts else getattr(processed, "info", "")
    processed.images.extend(previews)
    if infotexts is not None:
        infotexts.extend([info] * len(previews))
    setattr(p, PREVIEWS_ATTRIBUTE, [])
    return len(previews)


def _asks_enabled(script_args: Sequence[Any]) -> bool:
    first = script_args[0] if script_args else None
    return bool(first.get("enabled")) if isinstance(first, dict) else first is True


def _comment(p: Any, message: str) -> None:
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"HandRefiner: {message}")


def _saves_samples(p: Any) -> bool:
    saves = getattr(p, "save_samples", None)
    return bool(saves()) if callable(saves) else not getattr(p, "do_not_save_samples", False)
