"""The /handrefiner/* REST API on a real FastAPI app (TestClient), backed by the real pipeline with tiny models."""
from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import OFFICIAL_NEGATIVE, api_client, b64_file, infotext_value, strict_loads
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pickles import tiny_lightning_checkpoint
from PIL import Image

from lib_handrefiner import __version__
from lib_handrefiner.api import (
    DEFAULT_MAX_PIXELS,
    ApiConfig,
    InputError,
    decode_image,
    install_alwayson_validation,
    mount,
    validate_script_args,
)
from lib_handrefiner.models_registry import ModelNameError, build_listing, check_name_safe, resolve_name
from lib_handrefiner.service import StandaloneService
from lib_handrefiner.settings import HandRefinerArgs

ROOT = Path(__file__).resolve().parents[1]
MALFORMED = ROOT / "examples" / "malformed_1.jpg"


def b64_image(array: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: a decompression-bomb shape, 60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


@pytest.fixture(scope="session")
def service(tiny_models) -> StandaloneService:
    return StandaloneService(tiny_models.checkpoint, tiny_models.controlnet)


@pytest.fixture(scope="session")
def client(service) -> TestClient:
    return api_client(service)


def error_of(response) -> tuple[list, str]:
    detail = response.json()["detail"]
    return detail[0]["loc"], detail[0]["msg"]


# ---- GET endpoints --------------------------------------------------------------------------------------------

def test_version_and_schema(client):
    assert client.get("/handrefiner/version").json() == {"name": "HandRefiner", "version": __version__}
    schema = client.get("/handrefiner/schema").json()
    assert set(schema["properties"]) == set(HandRefinerArgs.__fields__)
    assert schema["properties"]["strength"]["default"] == 0.55
    assert schema["additionalProperties"] is False


def test_models_lists_the_tiny_controlnet_and_mesh_models(client, tiny_models):
    models = client.get("/handrefiner/models").json()
    assert tiny_models.controlnet.stem in models["controlnets"]
    assert models["default_controlnet"] == tiny_models.controlnet.stem
    mesh = {m["name"]: m for m in models["mesh_models"]}
    assert mesh["landmarks"] == {"name": "landmarks", "available": True, "missing": [], "reason": "",
                                 "uses": "landmarks"}
    assert mesh["graphormer"]["available"] is False and "MANO_RIGHT.pkl" in mesh["graphormer"]["missing"]
    assert "mano.is.tue.mpg.de" in mesh["graphormer"]["reason"]
    assert mesh["auto"] == {"name": "auto", "available": True, "missing": [], "reason": "", "uses": "landmarks"}


def test_openapi_documents_the_request(client):
    spec = client.get("/openapi.json").json()
    assert "/handrefiner/refine" in spec["paths"]
    request = spec["components"]["schemas"]["RefineRequest"]["properties"]
    assert {"image", "return_depth", "return_mask", "strength", "boxes", "prompt"} <= set(request)


# ---- happy path and no hands ----------------------------------------------------------------------------------

def test_refine_happy_path_on_a_malformed_hand(client):
    source = np.asarray(Image.open(MALFORMED).convert("RGB"))
    response = client.post("/handrefiner/refine", json={
        "image": "data:image/jpeg;base64," + b64_file(MALFORMED), "steps": 2, "crop_resolution": 64, "seed": 7,
        "return_depth": True, "return_mask": True, "prompt": "a hand"})
    assert response.status_code == 200, response.text
    body = response.json()
    refined, mask, depth = decode_png(body["image"]), decode_png(body["mask"]), decode_png(body["depth"])
    assert refined.shape == source.shape and mask.shape == depth.shape == source.shape[:2]
    assert body["hands"] and any(h["refined"] for h in body["hands"])
    hand = next(h for h in body["hands"] if h["refined"])
    assert hand["handedness"] in ("left", "right") and 0 < hand["score"] <= 1 and hand["strength"] == 0.55
    x0, y0, x1, y1 = hand["box"]
    assert mask[y0:y1, x0:x1].max() == 255 and depth.max() > 0
    # The returned mask bounds every change: where it is 0 the input's bytes (the feather is inward). The PNG
    # returned is lossless, so the decoded JPEG's pixels come back exactly.
    assert np.array_equal(refined[mask == 0], source[mask == 0])
    assert np.abs(refined.astype(int) - source.astype(int))[mask > 0].mean() > 1
    assert body["seed"] == 7 and "HandRefiner" in body["infotext"]
    assert {"decode", "queue", "run", "total"} <= set(body["timings_ms"])
    assert body["unet_calls"] == 2 * sum(h["refined"] for h in body["hands"])   # 2 steps, one region per hand


def test_adaptive_mode_reports_the_strengths_tried_in_strict_json(client):
    response = client.post("/handrefiner/refine", json={
        "image": b64_file(MALFORMED), "mode": "adaptive", "adaptive_strengths": [0.4, 0.6], "steps": 1,
        "crop_resolution": 64, "seed": 2})
    assert response.status_code == 200, response.text
    body = strict_loads(response.text)
    hand = next(h for h in body["hands"] if h["refined"])
    # Self-describing, the reference first, then in order; the tiny random model paints no hand, so no MPJPE
    # can be measured: null (Infinity is not JSON).
    assert [sorted(t) for t in hand["tried"]] == [["mpjpe", "strength"]] * 3
    assert [t["strength"] for t in hand["tried"]] == [1.0, 0.4, 0.6]
    assert hand["strength"] in (1.0, 0.4, 0.6)
    kept_error = next(t["mpjpe"] for t in hand["tried"] if t["strength"] == hand["strength"])
    assert hand["mpjpe"] == kept_error and (kept_error is None or kept_error >= 0)
    # The infotext says the same, in the same form.
    assert strict_loads(infotext_value(body["infotext"], "HandRefiner tried")) == [hand["tried"]]


def test_no_hands_returns_the_image_unchanged(client):
    grey = np.full((96, 128, 3), 128, np.uint8)
    response = client.post("/handrefiner/refine", json={"image": b64_image(grey), "return_mask": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert np.array_equal(decode_png(body["image"]), grey)
    assert body["hands"] == [] and "no hands found" in body["message"]
    assert decode_png(body["mask"]).max() == 0 and body["depth"] is None


def test_webp_input_is_accepted(client):
    grey = np.full((40, 50, 3), 90, np.uint8)
    response = client.post("/handrefiner/refine", json={"image": b64_image(grey, "WEBP")})
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["image"]).shape == (40, 50, 3)


# ---- bad input: each a 4xx naming the field -------------------------------------------------------------------

GREY = b64_image(np.full((64, 64, 3), 128, np.uint8))


def test_a_box_over_a_hand_no_detector_finds_is_refined(client):
    # Issue 19: a box the user sends gets a hand even where the palm detector sees none (here a plain grey
    # picture): the landmark model alone on the box; the response says how the hand was found.
    grey = np.full((128, 128, 3), 128, np.uint8)
    response = client.post("/handrefiner/refine", json={
        "image": b64_image(grey), "boxes": [[20, 20, 90, 100]], "steps": 2, "crop_resolution": 64, "seed": 3,
        "return_mask": True})
    assert response.status_code == 200, response.text
    body = response.json()
    (hand,) = body["hands"]
    assert hand["refined"] and hand["found_by"] == "user_box" and hand["handedness"] in ("left", "right")
    refined, mask = decode_png(body["image"]), decode_png(body["mask"])
    assert np.all(mask[20:100, 20:90] == 255) and np.array_equal(refined[mask == 0], grey[mask == 0])
    assert not np.array_equal(refined, grey)


@pytest.mark.parametrize("payload, field, words", [
    ({"image": GREY, "colour": 1}, "colour", "unknown field 'colour'"),
    ({"image": GREY, "steps": "thirty"}, "steps", "integer"),
    ({"image": GREY, "steps": 2.5}, "steps", "integer"),
    ({"image": GREY, "crop": 1}, "crop", "boolean"),
    ({"image": GREY, "steps": 0}, "steps", "greater than or equal"),
    ({"image": GREY, "strength": 2.5}, "strength", "less than or equal"),
    ({"image": GREY, "mode": "magic"}, "mode", "permitted"),
    ({"image": GREY, "adaptive_strengths": [0.5, 3]}, "adaptive_strengths", "[0, 2]"),
    ({"image": GREY, "boxes": [[10, 10, 5, 20]]}, "boxes", "x1 > x0"),
    ({"image": GREY, "boxes": [[10, 10, 20]]}, "boxes", "4 numbers"),
    ({"image": GREY, "boxes": [[10, 10, 80, 20]]}, "boxes", "outside the 64x64 image"),
    ({"image": GREY, "boxes": [[-1, 0, 20, 20]]}, "boxes", "outside"),
    ({"image": GREY, "prompt": "hand " * 3000}, "prompt", "at most 10000"),
    ({}, "image", "field required"),
    ({"image": 5}, "image", "string"),
    ({"image": ""}, "image", "empty"),
    ({"image": "not base64!!"}, "image", "not valid base64"),
    ({"image": "data:image/png,abc"}, "image", "without ';base64'"),
    ({"image": "data:image/png;base64,"}, "image", "empty"),
    ({"image": "===="}, "image", "not valid base64"),
    ({"image": base64.b64encode(b"hello, not an image").decode()}, "image", "not a PNG, JPEG or WebP"),
    ({"image": b64_image(np.zeros((8, 8, 3), np.uint8), "GIF")}, "image", "GIF"),
    ({"image": base64.b64encode(base64.b64decode(GREY)[:60]).decode()}, "image", "truncated"),
    ({"image": GREY, "controlnet": "../../etc/passwd"}, "controlnet", "is a path"),
    ({"image": GREY, "controlnet": "/abs/model"}, "controlnet", "is a path"),
    ({"image": GREY, "controlnet": "model\x00.safetensors"}, "controlnet", "NUL"),
    ({"image": GREY, "controlnet": "not_installed"}, "controlnet", "not an available model"),
    ({"image": GREY, "inpaint_checkpoint": "..\\sd"}, "inpaint_checkpoint", "is a path"),
])
def test_bad_input_is_a_422_naming_the_field(client, payload, field, words):
    response = client.post("/handrefiner/refine", json=payload)
    assert response.status_code == 422, response.text
    loc, msg = error_of(response)
    assert loc[:2] == ["body", field], (loc, msg)
    assert words in msg, msg


@pytest.mark.parametrize("side, words", [(5000, "5000×5000 = 25,000,000 pixels"), (30000, "too large")])
def test_decompression_bomb_is_refused_before_decoding(client, side, words):
    bomb = base64.b64encode(png_header_only(side, side)).decode()
    assert len(bomb) < 100  # decoding its pixels would need side*side*3 bytes
    response = client.post("/handrefiner/refine", json={"image": bomb})
    assert response.status_code == 413
    loc, msg = error_of(response)
    assert loc == ["body", "image"] and words in msg


def test_oversized_body_is_refused_before_reading(service):
    app = FastAPI()
    mount(app, service, config=ApiConfig(max_pixels=64 * 64))
    small = ApiConfig(max_pixels=64 * 64).max_body_bytes
    response = TestClient(app).post("/handrefiner/refine", content=b"x" * (small + 1),
                                    headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"][0]["msg"]


def test_pixel_limit_is_configurable():
    with pytest.raises(InputError) as e:
        decode_image(b64_image(np.zeros((40, 40, 3), np.uint8)), max_pixels=1000)
    assert e.value.status == 413 and "40×40 = 1,600 pixels, over HandRefiner's limit of 1,000" in e.value.message
    assert decode_image(b64_image(np.zeros((30, 30, 3), np.uint8)), max_pixels=1000).shape == (30, 30, 3)
    assert DEFAULT_MAX_PIXELS >= 4096 * 4096


def test_not_json_and_wrong_shapes_are_4xx(client):
    assert client.post("/handrefiner/refine", content=b"{not json",
                       headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/handrefiner/refine", json=[1, 2]).status_code == 422
    assert client.post("/handrefiner/refine", json={"image": GREY, "boxes": "0 0 1 1"}).status_code == 422


def test_decoding_keeps_exif_orientation_and_modes():
    gradient = np.tile(np.arange(60, dtype=np.uint8)[None, :, None], (20, 1, 3))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(gradient).save(buffer, format="JPEG", exif=exif, quality=95)
    rotated = decode_image(base64.b64encode(buffer.getvalue()).decode())
    assert rotated.shape == (60, 20, 3)
    grey16 = io.BytesIO()
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(grey16, format="PNG")
    rgb = decode_image(base64.b64encode(grey16.getvalue()).decode())
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8 and 150 <= rgb[0, 0, 0] <= 160


# ---- model names ----------------------------------------------------------------------------------------------

def test_model_names_resolve_only_to_listed_files(tmp_path):
    (tmp_path / "ControlNet").mkdir()
    (tmp_path / "ControlNet" / "hand_depth.safetensors").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    listing = build_listing([tmp_path / "ControlNet", tmp_path])
    assert list(listing.controlnets) == ["hand_depth"]
    path = tmp_path / "ControlNet" / "hand_depth.safetensors"
    assert resolve_name("hand_depth", listing.controlnets, "controlnet") == path
    assert resolve_name("hand_depth.safetensors", listing.controlnets, "controlnet") == path
    assert resolve_name("hand_depth [a1b2c3d4]", listing.controlnets, "controlnet") == path
    for bad in ("secret", "secret.txt", "../secret.txt", "ControlNet/hand_depth", "C:model", "..", "x\x00y", 3):
        with pytest.raises(ModelNameError):
            resolve_name(bad, listing.controlnets, "controlnet")
    assert check_name_safe(" name ", "controlnet") == "name"


# ---- alwayson_scripts args ------------------------------------------------------------------------------------

def test_alwayson_args_dict_and_positional():
    assert validate_script_args({"enabled": True, "strength": 0.7}).strength == 0.7
    assert validate_script_args([{"enabled": True}]).enabled is True
    positional = validate_script_args([True, 0.8, "adaptive"])
    assert (positional.enabled, positional.strength, positional.mode) == (True, 0.8, "adaptive")


@pytest.mark.parametrize("args, loc_end, words", [
    ({"strenght": 0.5}, "strenght", "did you mean 'strength'?"),
    ({"strength": 9}, "strength", "less than or equal"),
    ([True, "strong"], "strength", "float"),
    ([True] * 60, "args", "at most"),
])
def test_alwayson_args_errors_are_422_naming_the_field(args, loc_end, words):
    with pytest.raises(HTTPException) as e:
        validate_script_args(args)
    assert e.value.status_code == 422
    detail = e.value.detail[0]
    assert detail["loc"][:3] == ["alwayson_scripts", "HandRefiner", "args"] and detail["loc"][-1] == loc_end
    assert words in detail["msg"]


def webui_like_app() -> tuple[FastAPI, list]:
    """A FastAPI app with txt2img/img2img routes that record what reaches them (where the WebUI's would run)."""
    app, reached = FastAPI(), []

    @app.post("/sdapi/v1/txt2img")
    @app.post("/sdapi/v1/img2img")
    def generate(body: dict) -> dict:
        reached.append(body)
        return {"images": []}

    TestClient(app).get("/docs")  # the app has served a request: middleware is added to a running app
    install_alwayson_validation(app)
    return app, reached


def test_alwayson_validation_middleware():
    app, reached = webui_like_app()
    client = TestClient(app)
    good = {"prompt": "x", "alwayson_scripts": {"handrefiner": {"args": [{"enabled": True, "strength": 0.7}]}}}
    assert client.post("/sdapi/v1/txt2img", json=good).status_code == 200 and reached == [good]
    positional = {"alwayson_scripts": {"HandRefiner": {"args": [True, 0.6, "adaptive"]}}}
    assert client.post("/sdapi/v1/img2img", json=positional).status_code == 200 and reached[-1] == positional
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "no scripts"}).status_code == 200
    bad = {"alwayson_scripts": {"HandRefiner": {"args": [True, 5.0]}}}
    response = client.post("/sdapi/v1/txt2img", json=bad)
    assert response.status_code == 422 and len(reached) == 3
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "alwayson_scripts", "HandRefiner", "args", "strength"]
    assert "less than or equal to 2" in detail["msg"]
    response = client.post("/sdapi/v1/img2img", json={"alwayson_scripts": {"HandRefiner": [True]}})
    assert response.status_code == 422 and '{"args"' in response.json()["detail"][0]["msg"]
    response = client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": {"HandRefiner": {"args": [{"x": 1}]}}})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "x"


# ---- one at a time --------------------------------------------------------------------------------------------

def test_requests_wait_for_the_lock(service):
    lock = threading.Lock()
    app = FastAPI()
    mount(app, service, lock, ApiConfig())
    client = TestClient(app)
    results = []
    lock.acquire()
    worker = threading.Thread(target=lambda: results.append(
        client.post("/handrefiner/refine", json={"image": GREY}).status_code))
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive() and not results  # blocked on the held lock (e.g. the WebUI generating)
    lock.release()
    worker.join(timeout=60)
    assert results == [200]


def test_refine_when_mediapipe_cannot_run_answers_503_with_the_reason(client, monkeypatch):
    from test_detection import GRAPH_INIT_FAILURE, failing_graph

    failing_graph(monkeypatch, GRAPH_INIT_FAILURE)
    response = client.post("/handrefiner/refine", json={"image": b64_file(MALFORMED), "detection_confidence": 0.33})
    assert response.status_code == 503
    (error,) = response.json()["detail"]
    assert error["loc"] == [] and error["type"] == "server_error.unavailable"
    assert "cannot run with protobuf" in error["msg"]


def test_model_slots_hold_one_model_per_kind():
    from lib_handrefiner.models_registry import ModelSlots

    slots, loads = ModelSlots(), []

    def loader(name):
        return lambda: loads.append(name) or name.upper()

    assert slots.get("controlnet", "a", loader("a")) == "A"
    assert slots.get("controlnet", "a", loader("a")) == "A" and loads == ["a"]  # reused, not reloaded
    assert slots.get("checkpoint", "c", loader("c")) == "C"
    assert slots.get("controlnet", "b", loader("b")) == "B"  # switching replaces the old one
    assert sorted(slots.models()) == ["B", "C"] and loads == ["a", "c", "b"]

    def broken():
        raise OSError("truncated")

    with pytest.raises(OSError):
        slots.get("controlnet", "x", broken)
    assert slots.models() == ["C"]  # a failed switch has still freed the previous ControlNet


def test_a_lightning_ckpt_named_by_a_request_refines_as_its_safetensors(tiny_models, tmp_path):
    """/handrefiner/refine with inpaint_checkpoint naming a .ckpt that pickles Lightning callbacks (as
    sd-v1-5-inpainting.ckpt does) gives the pixels of the same weights in .safetensors."""
    tiny_lightning_checkpoint(tiny_models, tmp_path / "models" / "Stable-diffusion")
    app = FastAPI()
    mount(app, StandaloneService(tiny_models.checkpoint, tiny_models.controlnet, tmp_path / "models"),
          threading.Lock())
    client = TestClient(app, raise_server_exceptions=False)
    assert "tiny-inpaint-lightning" in client.get("/handrefiner/models").json()["checkpoints"]
    body = {"image": b64_file(MALFORMED), "steps": 1, "crop_resolution": 64, "seed": 5}
    images = []
    for checkpoint in ("", "tiny-inpaint-lightning"):
        response = client.post("/handrefiner/refine", json={**body, "inpaint_checkpoint": checkpoint})
        assert response.status_code == 200, response.text
        assert any(h["refined"] for h in response.json()["hands"])
        images.append(decode_png(response.json()["image"]))
    assert np.array_equal(*images)


def test_a_request_without_a_negative_prompt_samples_with_the_official_one(client, sampled_negatives):
    response = client.post("/handrefiner/refine", json={"image": b64_file(MALFORMED), "steps": 1,
                                                        "crop_resolution": 64, "seed": 2})
    assert response.status_code == 200, response.text
    assert sampled_negatives == [OFFICIAL_NEGATIVE]
    client.post("/handrefiner/refine", json={"image": b64_file(MALFORMED), "steps": 1, "crop_resolution": 64,
                                             "negative_prompt": "blurry"})
    assert sampled_negatives[1] == "fake 3D rendered image, blurry"


# ---- one error shape ------------------------------------------------------------------------------------------

def app_that_reshapes_errors(service) -> FastAPI:
    """An app whose own exception handlers reshape errors as the WebUI's do (`error`, `detail`, `body`, `errors`):
    the /handrefiner/* routes must answer in their one shape anyway."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def reshaped(request, e):
        return JSONResponse(status_code=getattr(e, "status_code", 500), content={
            "error": type(e).__name__, "detail": getattr(e, "detail", ""), "body": "", "errors": str(e)})

    app.add_exception_handler(HTTPException, reshaped)
    app.add_exception_handler(Exception, reshaped)
    mount(app, service, threading.Lock(), ApiConfig(max_pixels=64 * 64))
    return app


def test_every_handrefiner_error_has_one_shape_on_an_app_that_reshapes_errors(service, monkeypatch):
    client = TestClient(app_that_reshapes_errors(service), raise_server_exceptions=False)
    answers = {
        "bad value": client.post("/handrefiner/refine", json={"image": GREY, "steps": 0}),
        "bad image": client.post("/handrefiner/refine", json={"image": "not base64!"}),
        "too many pixels": client.post("/handrefiner/refine", json={"image": base64.b64encode(
            png_header_only(100, 100)).decode()}),
        "malformed JSON": client.post("/handrefiner/refine", content=b"{",
                                      headers={"content-type": "application/json"}),
        "missing field": client.post("/handrefiner/refine", json={}),
        "unknown controlnet": client.post("/handrefiner/refine", json={"image": GREY, "controlnet": "nope"}),
        "unknown path": client.get("/handrefiner/nothing"),
        "wrong method": client.get("/handrefiner/refine"),
    }
    monkeypatch.setattr("lib_handrefiner.api.run_refine", lambda *a: 1 / 0)
    answers["a bug"] = client.post("/handrefiner/refine", json={"image": GREY})
    statuses = {what: r.status_code for what, r in answers.items()}
    assert statuses == {"bad value": 422, "bad image": 422, "too many pixels": 413, "malformed JSON": 422,
                        "missing field": 422, "unknown controlnet": 422, "unknown path": 404, "wrong method": 405,
                        "a bug": 500}
    for what, response in answers.items():
        body = response.json()
        assert set(body) == {"detail"}, (what, body)
        assert body["detail"] and all(set(e) == {"loc", "msg", "type"} and isinstance(e["loc"], list)
                                      and e["msg"] for e in body["detail"]), (what, body)
    assert answers["wrong method"].json()["detail"][0]["msg"].endswith("use POST")
    assert "ZeroDivisionError" in answers["a bug"].json()["detail"][0]["msg"]


def test_a_misspelt_field_is_answered_with_the_closest_valid_name(client):
    response = client.post("/handrefiner/refine", json={"image": GREY, "strenght": 0.6})
    assert response.status_code == 422
    assert response.json()["detail"] == [{"loc": ["body", "strenght"], "type": "value_error.extra",
                                          "msg": "unknown field 'strenght'; did you mean 'strength'?"}]
    near = {"Steps": "steps", "crop_resolutoin": "crop_resolution", "return_dpeth": "return_depth",
            "negative prompt": "negative_prompt"}
    for wrong, right in near.items():
        msg = client.post("/handrefiner/refine", json={"image": GREY, wrong: 1}).json()["detail"][0]["msg"]
        assert msg.endswith(f"did you mean {right!r}?"), msg
    far = client.post("/handrefiner/refine", json={"image": GREY, "zzz": 1}).json()["detail"][0]["msg"]
    assert far.startswith("unknown field 'zzz'; the fields are: enabled, strength,") and "return_mask" in far


def test_a_misspelt_alwayson_field_is_answered_with_the_closest_valid_name():
    from lib_handrefiner.api import script_args_errors

    (error,) = script_args_errors([{"enabled": True, "strenght": 0.6}])
    assert error["loc"] == ["alwayson_scripts", "HandRefiner", "args", "strenght"]
    assert error["msg"] == "unknown field 'strenght'; did you mean 'strength'?"
