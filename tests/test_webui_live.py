"""Against a real running AUTOMATIC1111 WebUI with HandRefiner installed: set HANDREFINER_WEBUI_URL (e.g.
http://127.0.0.1:7860 for a WebUI started with --api). Skipped otherwise.

Its loaded model must be SD 1.x and its models/ControlNet (or models/handrefiner) must hold the HandRefiner
ControlNet (any name; HANDREFINER_WEBUI_CONTROLNET picks it, default: the server's default)."""
from __future__ import annotations

import base64
import io
import json
import os

import pytest

URL = os.environ.get("HANDREFINER_WEBUI_URL", "").rstrip("/")
pytestmark = pytest.mark.skipif(not URL, reason="HANDREFINER_WEBUI_URL is not set: no running WebUI to test against "
                                                "(set it to e.g. http://127.0.0.1:7860, a WebUI started with --api)")
PROMPT = "a man facing the camera, making a hand gesture, indoor"


def _client():
    import httpx

    return httpx.Client(base_url=URL, timeout=float(os.environ.get("HANDREFINER_WEBUI_TIMEOUT", "900")))


def _controlnet(client) -> str:
    chosen = os.environ.get("HANDREFINER_WEBUI_CONTROLNET")
    if chosen:
        return chosen
    models = client.get("/handrefiner/models")
    assert models.status_code == 200, "the /handrefiner routes are missing: is the extension installed and enabled?"
    default = models.json()["default_controlnet"]
    assert default, f"no HandRefiner ControlNet on the server: {models.json()}"
    return default


def _txt2img(client, args) -> dict:
    payload = {"prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": 4, "width": 512, "height": 512,
               "sampler_name": "Euler", "alwayson_scripts": {"HandRefiner": {"args": args}}}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def _check(result: dict) -> dict:
    from PIL import Image

    info = json.loads(result["info"])
    infotext = info["infotexts"][0]
    assert "HandRefiner: True" in infotext and "HandRefiner strength:" in infotext, infotext
    assert "HandRefiner result" in info["extra_generation_params"]
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
    assert image.size == (512, 512)
    return info


def test_txt2img_with_named_args_writes_the_handrefiner_infotext():
    with _client() as client:
        info = _check(_txt2img(client, [{"enabled": True, "strength": 0.6, "steps": 4,
                                         "controlnet": _controlnet(client)}]))
    assert info["extra_generation_params"]["HandRefiner strength"] == "0.6"


def test_txt2img_with_positional_args_in_field_order():
    with _client() as client:
        controlnet = _controlnet(client)
        # enabled, strength, mode, adaptive_strengths, adaptive_reference, adaptive_factor, prompt, negative_prompt,
        # extra_negative, mesh_model, controlnet, inpaint_checkpoint, steps
        args = [True, 0.55, "fixed", "0.4, 0.6", 1.0, 1.15, "", "", "fake 3D rendered image", "landmarks",
                controlnet, "Current model", 4]
        _check(_txt2img(client, args))


def test_txt2img_from_an_infotext_restores_the_handrefiner_settings():
    """The WebUI API's `infotext` field sets script args through the script's infotext fields (as pasting does)."""
    with _client() as client:
        controlnet = _controlnet(client)
        payload = {"infotext": f"{PROMPT}\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
                               f"HandRefiner: True, HandRefiner strength: 0.7, HandRefiner mode: fixed, "
                               f"HandRefiner steps: 3, HandRefiner ControlNet: {controlnet}"}
        response = client.post("/sdapi/v1/txt2img", json=payload)
        assert response.status_code == 200, response.text[:2000]
        info = _check(response.json())
    assert info["extra_generation_params"]["HandRefiner strength"] == "0.7"
    assert info["extra_generation_params"]["HandRefiner steps"] == 3


def test_xyz_grid_axis_sets_the_strength_per_cell():
    with _client() as client:
        controlnet = _controlnet(client)
        xyz = next(s for s in client.get("/sdapi/v1/script-info").json()
                   if s["name"] == "x/y/z plot" and not s["is_img2img"])
        axis = xyz["args"][0]["choices"].index("[HandRefiner] Strength")
        # X type, X values, X values (dropdown), the same for Y and Z, draw legend, include lone images, include
        # sub grids, no fixed seeds, vary seeds x/y/z, margin, text inputs
        script_args = [axis, "0.3, 0.6", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0,
                       False]
        payload = {"prompt": PROMPT, "seed": 1, "steps": 2, "width": 256, "height": 256, "sampler_name": "Euler",
                   "script_name": "x/y/z plot", "script_args": script_args,
                   "alwayson_scripts": {"HandRefiner": {"args": [{"enabled": True, "steps": 2,
                                                                  "controlnet": controlnet}]}}}
        response = client.post("/sdapi/v1/txt2img", json=payload)
        assert response.status_code == 200, response.text[:2000]
        infotexts = json.loads(response.json()["info"])["infotexts"]
    cells = [t for t in infotexts if "HandRefiner: True" in t]
    assert any("HandRefiner strength: 0.3" in t for t in cells) and any("HandRefiner strength: 0.6" in t for t in cells)


def test_bad_handrefiner_args_are_rejected_before_generating():
    with _client() as client:
        response = client.post("/sdapi/v1/txt2img", json={
            "prompt": PROMPT, "steps": 2, "alwayson_scripts": {"HandRefiner": {"args": [{"enabled": True,
                                                                                        "steps": 500}]}}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "alwayson_scripts", "HandRefiner", "args", "steps"]
