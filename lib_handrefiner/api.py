"""REST API: `/handrefiner/refine`, `/models`, `/version`, `/schema`, on the WebUI's FastAPI app or any other.

Every error of a `/handrefiner/*` route, whatever raised it (a bad field, an unknown field, malformed JSON, a body
over the limit, a missing model on the server, an unknown path, a bug), is answered in one shape, FastAPI's
validation shape: `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` (`error_response`). The routes answer
it themselves, so the host app's exception handlers (the WebUI's adds `error`, `body`, `errors`) never reshape it.
An unknown field is answered with the closest valid name. The image is checked in this order: base64 → container
format → dimensions (before any pixel is decoded) → pixels. Requests take the lock one at a
time (the WebUI's queue lock when mounted there), so API and UI never drive the model at once; at most
`ApiConfig.max_queue` of them wait or run at once (admission.py), the next is answered 503 with Retry-After
before its body is read.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import random
import re
import threading
import time
import warnings
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError

from lib_handrefiner import __version__
from lib_handrefiner.admission import Admission, Busy, max_queue
from lib_handrefiner.api_errors import (
    InputError,
    error_response,
    errors_response,
    http_error_response,
    unknown_field_message,
)
from lib_handrefiner.api_models import HandInfo, RefineRequest, RefineResponse, TriedStrength
from lib_handrefiner.detection import DetectorUnavailable
from lib_handrefiner.imageio import MAX_PIXELS, MAX_PIXELS_ENV, ImageTooLarge, check_pixels, max_pixels
from lib_handrefiner.mesh import MeshModelError
from lib_handrefiner.models_registry import ModelListing, ModelNameError, resolve_name
from lib_handrefiner.perception import nothing_to_refine_message, with_mesh_warning
from lib_handrefiner.pipeline import tried_entries
from lib_handrefiner.service import HandRefinerService, ModelLoadError
from lib_handrefiner.settings import HandRefinerArgs, field_names, from_script_args

DEFAULT_MAX_PIXELS = MAX_PIXELS  # imageio's limit, the same as the command line's and the WebUI's
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*(;base64)?,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
log = logging.getLogger(__name__)


# ---- image decoding -----------------------------------------------------------------------------------------

def decode_image(data: object, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A base64 PNG/JPEG/WebP (optionally a data URL) → RGB uint8, checking the size before decoding pixels."""
    raw = _base64_bytes(data, field, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError([field], f"{field} is too large to decode safely ({e}), over HandRefiner's limit of "
                                      f"{max_pixels:,} pixels ({MAX_PIXELS_ENV}); downscale it first", 413) from e
        except UnidentifiedImageError as e:
            raise InputError([field], f"{field} is not a PNG, JPEG or WebP image (the decoded bytes are no known image "
                                      f"format; first bytes {raw[:8]!r})") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError([field], f"{field} is a corrupt or truncated image ({e})") from e
    if image.format not in ACCEPTED_FORMATS:
        raise InputError([field], f"{field} is a {image.format} image; send PNG, JPEG or WebP")
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError([field], f"{field} has an empty size {width}x{height}")
    try:
        check_pixels(width, height, field, max_pixels)
    except ImageTooLarge as e:
        raise InputError([field], str(e), 413) from e
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError([field], f"{field} is a corrupt or truncated {image.format} file ({e}); send the whole "
                                  "file") from e
    from lib_handrefiner.imageio import ImageError, to_rgb
    try:
        return to_rgb(image)
    except ImageError as e:
        raise InputError([field], str(e)) from e


def _base64_bytes(data: object, field: str, max_pixels: int) -> bytes:
    if not isinstance(data, str):
        raise InputError([field], f"{field} must be a base64 string, got {type(data).__name__}", kind="type_error")
    text = data.strip()
    match = _DATA_URL.match(text)
    if match:
        if not match.group(3):
            raise InputError([field], f"{field} is a data URL without ';base64'; send base64-encoded image bytes")
        text = text[match.end():]
    text = _WHITESPACE.sub("", text)
    if not text:
        raise InputError([field], f"{field} is empty; send a base64-encoded PNG, JPEG or WebP file")
    max_chars = max_base64_chars(max_pixels)
    if len(text) > max_chars:
        raise InputError([field], f"{field} is {len(text)} base64 characters, over the limit of {max_chars}", 413)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError([field], f"{field} is not valid base64 ({e}); send standard base64 (A-Z a-z 0-9 + / =), "
                                  "optionally with a data:image/...;base64, prefix") from e
    if not raw:
        raise InputError([field], f"{field} decodes to an empty file")
    return raw


def max_base64_chars(max_pixels: int) -> int:
    # A compressed image is smaller than its pixels: 4 bytes a pixel is a generous bound for any real file.
    return 4 * max(max_pixels, 1 << 20) * 4 // 3 + 4


def encode_png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- validation helpers (also for the WebUI's alwayson_scripts) ----------------------------------------------

def validation_detail(error: ValidationError, prefix: Sequence[Any] = (),
                      fields: Sequence[str] = tuple(field_names())) -> List[dict]:
    """pydantic's errors as [{loc, msg, type}], an unknown field's named with the closest of `fields`."""
    return [named_extra_field({"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}, fields)
            for e in error.errors()]


def named_extra_field(error: dict, fields: Sequence[str]) -> dict:
    if error.get("type") != "value_error.extra" or not error.get("loc"):
        return error
    return {**error, "msg": unknown_field_message(error["loc"][-1], fields)}


def script_args_errors(args: Any, prefix: Sequence[Any] = ("alwayson_scripts", "HandRefiner", "args"),
                       parse: Callable[[Any], HandRefinerArgs] = from_script_args) -> List[dict]:
    """Validation errors (FastAPI's shape) of `alwayson_scripts` args: a dict, a list holding one dict, or
    positional values (named by their field); [] when they are valid."""
    try:
        parse(args)
    except ValidationError as e:
        return validation_detail(e, prefix)
    except InputError as e:
        return [{"loc": [*prefix, *e.loc], "msg": e.message, "type": e.kind}]
    except (TypeError, ValueError) as e:
        return [{"loc": list(prefix), "msg": str(e), "type": "value_error"}]
    return []


def validate_script_args(args: Any, prefix: Sequence[Any] = ("alwayson_scripts", "HandRefiner", "args"),
                         parse: Callable[[Any], HandRefinerArgs] = from_script_args
                         ) -> HandRefinerArgs:
    """HandRefinerArgs from `alwayson_scripts` args, or an HTTPException 422 naming each bad field."""
    errors = script_args_errors(args, prefix, parse)
    if errors:
        raise HTTPException(422, detail=errors)
    return parse(args)


def alwayson_errors(body: bytes, parse: Callable[[Any], HandRefinerArgs] = from_script_args,
                    title: str = "HandRefiner") -> List[dict]:
    """Errors of the HandRefiner entry of a txt2img/img2img request's `alwayson_scripts` (matched like the
    WebUI does, ignoring case); [] when it is valid, absent, or the body is not for us to judge."""
    try:
        request = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return []  # the WebUI answers malformed JSON itself
    scripts = request.get("alwayson_scripts") if isinstance(request, dict) else None
    if not isinstance(scripts, dict):
        return []
    key = next((k for k in scripts if isinstance(k, str) and k.lower() == title.lower()), None)
    if key is None:
        return []
    entry = scripts[key]
    if not isinstance(entry, dict) or "args" not in entry:
        return [{"loc": ["body", "alwayson_scripts", key], "msg": 'must be {"args": [...]} (a list of positional '
                 'values, or a list holding one dict of settings)', "type": "type_error"}]
    return script_args_errors(entry["args"], ["body", "alwayson_scripts", key, "args"], parse)


class AlwaysonValidation:
    """ASGI middleware: a txt2img/img2img request whose HandRefiner `alwayson_scripts` args are invalid gets a 422
    naming the field, before the WebUI starts generating (it would fail later with a 500, or not at all)."""

    PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")

    def __init__(self, app: Any, parse: Callable[[Any], HandRefinerArgs] = from_script_args):
        self.app = app
        self.parse = parse

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.PATHS:
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        errors = alwayson_errors(body, self.parse)
        if errors:
            await JSONResponse(status_code=422, content={"detail": errors})(scope, receive, send)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def install_alwayson_validation(app: FastAPI,
                                parse: Callable[[Any], HandRefinerArgs] = from_script_args) -> None:
    """Adds AlwaysonValidation to an app that may already be serving (as the WebUI's is at on_app_started)."""
    app.middleware_stack = None  # rebuilt from user_middleware on the next request
    app.add_middleware(AlwaysonValidation, parse=parse)


def check_models(args: HandRefinerArgs, listing: ModelListing) -> None:
    """InputError unless every model the settings name is an available file."""
    try:
        resolve_name(args.controlnet, listing.controlnets, "controlnet")
    except ModelNameError as e:
        raise InputError(["controlnet"], str(e)) from e
    if args.inpaint_checkpoint:
        try:
            resolve_name(args.inpaint_checkpoint, listing.checkpoints, "inpaint_checkpoint")
        except ModelNameError as e:
            raise InputError(["inpaint_checkpoint"], str(e)) from e
    check_sampling(args, listing.samplers, listing.schedulers)
    status = listing.mesh_status(args.mesh_model)
    if status is not None and not status.available and not (args.mesh_fallback or listing.mesh_fallback):
        # The server's files, not the request: 503, with what to download (or mesh_fallback: true).
        raise InputError(["mesh_model"], f"{status.reason}\nOr send mesh_fallback: true to use the landmark mesh.",
                         503, "server_error.unavailable")


def check_sampling(args: HandRefinerArgs, samplers: Sequence[str], schedulers: Sequence[str]) -> None:
    """InputError unless the sampler and schedule type are among the available ones (outside the WebUI only the
    built-in sampler)."""
    if args.sampler not in samplers:
        raise InputError(["sampler"], f"sampler {args.sampler!r} is not available here; choose one of: "
                                      f"{', '.join(samplers)}")
    if args.scheduler not in schedulers:
        raise InputError(["scheduler"], f"schedule type {args.scheduler!r} is not available here; choose one of: "
                                        f"{', '.join(schedulers)}")


def check_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> None:
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InputError(["boxes", i], f"box {[x0, y0, x1, y1]} lies outside the {width}x{height} image; "
                                           f"keep 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")


# ---- the router -----------------------------------------------------------------------------------------------

@dataclass
class ApiConfig:
    max_pixels: int = dataclass_field(default_factory=max_pixels)  # imageio's limit (HANDREFINER_MAX_PIXELS) at start
    max_queue: int = dataclass_field(default_factory=max_queue)  # POSTs waiting or running at once, then 503

    @property
    def max_body_bytes(self) -> int:
        return max_base64_chars(self.max_pixels) + (1 << 20)  # the image plus room for the settings


REQUEST_FIELDS = tuple(RefineRequest.__fields__)


def body_limited_route(limit: int, admission: Optional[Admission] = None) -> type:
    """An APIRoute class that answers 413 before reading a body whose Content-Length is over `limit`, and every
    error of its route in the one shape (`error_response`), itself: a route class works on any app, unlike a
    middleware or an exception handler, so the limit and the shape hold on the WebUI's app too."""

    class HandRefinerRoute(APIRoute):
        admission_control = admission  # shared by the router's routes (how many are in: tests, monitoring)

        def get_route_handler(self):
            handler = super().get_route_handler()

            async def answer(request: Request) -> Response:
                length = request.headers.get("content-length", "")
                if length.isdigit() and int(length) > limit:
                    return error_response(413, f"body is {int(length)} bytes, over the limit of {limit}; send a "
                                               "smaller image", ["body"], "value_error.too_large")
                try:
                    if admission is not None and request.method == "POST":  # before its body is read
                        with admission.admit():
                            return await handler(request)
                    return await handler(request)
                except Busy as e:
                    response = error_response(503, str(e), [], "server_error.busy")
                    response.headers["Retry-After"] = str(e.retry_after)
                    return response
                except RequestValidationError as e:
                    return errors_response(422, [named_extra_field(dict(err), REQUEST_FIELDS) for err in e.errors()])
                except InputError as e:
                    return e.response()
                except HTTPException as e:
                    return http_error_response(e)
                except Exception as e:  # a bug: the client still gets the shape, the log the traceback
                    log.exception("HandRefiner: %s %s failed", request.method, request.url.path)
                    return error_response(500, f"internal error: {type(e).__name__}: {e}", [], "server_error")

            return answer

    return HandRefinerRoute


def create_router(service: HandRefinerService, lock: Optional[Any] = None,
                  config: ApiConfig = ApiConfig()) -> APIRouter:
    """The `/handrefiner/*` routes over `service`; `lock` (e.g. the WebUI's queue_lock) serialises refinement."""
    lock = lock if lock is not None else threading.Lock()
    router = APIRouter(prefix="/handrefiner", tags=["HandRefiner"],
                       route_class=body_limited_route(config.max_body_bytes, Admission(config.max_queue)))

    @router.get("/version")
    def version() -> dict:
        return {"name": "HandRefiner", "version": __version__}

    @router.get("/schema")
    def schema() -> dict:
        return HandRefinerArgs.schema()

    @router.get("/models")
    def models() -> dict:
        return listing_json(service.listing(), service.default_controlnet())

    @router.post("/refine", response_model=RefineResponse)
    def refine(request: RefineRequest) -> RefineResponse:
        try:
            return run_refine(service, request, lock, config)
        except InputError as e:
            raise e.http() from e
        except ModelNameError as e:
            raise InputError(["controlnet"], str(e)).http() from e
        except (ModelLoadError, DetectorUnavailable, MeshModelError) as e:  # the server's set-up, not the request
            raise HTTPException(503, detail=str(e)) from e

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def unknown(path: str, request: Request) -> Response:
        # Last: an unknown path or method under /handrefiner/ in the same shape as every other error.
        known = {route.path: route.methods for route in router.routes
                 if isinstance(route, APIRoute) and "{path:path}" not in route.path}
        full = f"{router.prefix}/{path}"
        if full in known:
            return error_response(405, f"{request.method} is not allowed on {full}; use "
                                       f"{', '.join(sorted(known[full]))}", [], "http_error.405")
        return error_response(404, f"no route {full}; the routes are: {', '.join(sorted(known))}", [],
                              "http_error.404")

    return router


def mount(app: FastAPI, service: HandRefinerService, lock: Optional[Any] = None,
          config: ApiConfig = ApiConfig()) -> None:
    app.include_router(create_router(service, lock, config))


def listing_json(listing: ModelListing, default_controlnet: Optional[str]) -> dict:
    return {
        "controlnets": sorted(listing.controlnets),
        "default_controlnet": default_controlnet,
        "checkpoints": sorted(listing.checkpoints),
        "mesh_models": [{"name": m.name, "available": m.available, "missing": m.missing, "reason": m.reason,
                         "uses": m.uses} for m in listing.mesh_models],
        "samplers": list(listing.samplers),
        "schedulers": list(listing.schedulers),
    }


def run_refine(service: HandRefinerService, request: RefineRequest, lock: Any, config: ApiConfig) -> RefineResponse:
    started = time.perf_counter()
    args = request.settings()
    if "controlnet" not in request.__fields_set__ and service.default_controlnet():
        args.controlnet = service.default_controlnet()
    check_models(args, service.listing())
    image = decode_image(request.image, "image", config.max_pixels)
    height, width = image.shape[:2]
    check_boxes(args.boxes, width, height)
    seed = args.seed if args.seed >= 0 else random.randrange(2**32)
    decoded = time.perf_counter()
    with lock:
        locked = time.perf_counter()
        perception = service.perceive(image, args)
        if any(h.refinable for h in perception.hands):
            result = service.refine(image, args, seed, perception=perception)
            out, refined, infotext, message = result.image, list(result.hands), result.infotext, result.message
            timings = {"perception": perception.timings_ms.get("total", 0.0), **result.timings_ms}
            unet_calls = result.unet_calls
        else:
            out, refined, infotext, unet_calls = image, [], "", 0
            timings = {"perception": perception.timings_ms.get("total", 0.0)}
            message = with_mesh_warning(nothing_to_refine_message(perception, args), perception)
    finished = time.perf_counter()
    want_depth, want_mask = request.return_depth or args.save_depth, request.return_mask or args.save_mask
    response = RefineResponse(
        image=encode_png(out), width=width, height=height,
        depth=encode_png(perception.depth) if want_depth else None,
        mask=encode_png(perception.mask) if want_mask else None,
        hands=hand_infos(perception.hands, refined), seed=seed, infotext=infotext, message=message,
        timings_ms={**{k: float(v) for k, v in timings.items()},
                    "decode": ms(started, decoded), "queue": ms(decoded, locked), "run": ms(locked, finished)},
        unet_calls=unet_calls,
    )
    response.timings_ms["total"] = ms(started, time.perf_counter())
    return response


def hand_infos(perceived: Sequence[Any], refined: Sequence[Any]) -> List[HandInfo]:
    """Per perceived hand, with the refined hand of the same box (the pipeline refines refinable hands in order)."""
    remaining = list(refined)
    infos = []
    for p in perceived:
        match = next((r for r in remaining if tuple(int(v) for v in r.box) == tuple(int(v) for v in p.box)), None)
        if match is None and p.refinable and remaining:
            match = remaining[0]
        if match is not None:
            remaining.remove(match)
        tried = tried_entries(match.tried) if match is not None else []
        kept = float(match.strength) if match is not None else None
        infos.append(HandInfo(
            box=tuple(int(v) for v in p.box),
            handedness=p.hand.handedness if p.hand is not None else None,
            score=float(p.hand.score) if p.hand is not None else None,
            refined=match is not None, strength=kept,
            mpjpe=next((t["mpjpe"] for t in tried if t["strength"] == kept), None),
            tried=[TriedStrength(**t) for t in tried], mesh=p.mesh.model if p.mesh is not None else None,
            found_by=p.found_by or None))
    return infos


def ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 2)
