"""Shared fixtures: tiny random models with the real architectures (built once per test session)."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from lib_handrefiner.tiny import TinyModelPaths, ensure_tiny_models

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "examples"
# handrefiner.py's n_prompt, less its trailing "blue" (README: deliberate differences).
OFFICIAL_NEGATIVE = ("fake 3D rendered image, longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                     "fewer digits, cropped, worst quality, low quality")
WEBUI_STUB = ROOT / "tests" / "webui_stub"


@contextlib.contextmanager
def webui_stand_in():
    """tests/webui_stub first on sys.path (the stand-in `modules`, `launch`, `k_diffusion`); on exit it and every
    module imported from it are gone again."""
    sys.path.insert(0, str(WEBUI_STUB))
    try:
        yield
    finally:
        sys.path.remove(str(WEBUI_STUB))
        stand_in = ("modules", "k_diffusion", "latent_diffusion", "launch")
        for name in [n for n in sys.modules if n.split(".")[0] in stand_in]:
            del sys.modules[name]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModelPaths:
    """Paths of the tiny inpainting (9-ch) and regular (4-ch) checkpoints, their yamls and a tiny ControlNet."""
    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_sd(tiny_models):
    from lib_handrefiner.sd_model import load_sd_checkpoint

    return load_sd_checkpoint(tiny_models.checkpoint)


@pytest.fixture(scope="session")
def tiny_sd_regular(tiny_models):
    from lib_handrefiner.sd_model import load_sd_checkpoint

    return load_sd_checkpoint(tiny_models.regular_checkpoint)


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_models):
    from lib_handrefiner.controlnet import load_controlnet

    return load_controlnet(tiny_models.controlnet)


def api_client(service):
    """A TestClient of a real FastAPI app with the /handrefiner/* routes over `service`; server errors come back as
    responses (500), not exceptions."""
    import threading

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_handrefiner.api import mount

    app = FastAPI()
    mount(app, service, threading.Lock())
    return TestClient(app, raise_server_exceptions=False)


def small_hand_request(steps: int):
    """A 64×64 inpainting request of random pixels and hint with a rectangular hand mask, seeded: the same for the
    passes a test compares across UNet families or adapters."""
    from lib_handrefiner.sampler import InpaintRequest

    g = torch.Generator().manual_seed(1)
    image, hint = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 16:48] = 1
    return InpaintRequest(image=image, mask=mask, hint=hint, prompt="a hand", negative_prompt="fake 3D rendered image",
                          steps=steps, cfg_scale=7.0)


def b64_file(path: Path) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


def strict_loads(text: str):
    """json.loads as parsers outside Python read JSON: NaN, Infinity and -Infinity are errors."""
    import json

    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def infotext_value(infotext: str, key: str):
    """The text of `key`'s value in an A1111 "Key: value, …" line (a JSON-quoted value unquoted, as the WebUI's
    infotext parser does), None when absent."""
    import re

    match = re.search(rf'(?:^|, ){re.escape(key)}: ("(?:[^"\\]|\\.)*"|[^,]*)', infotext)
    if match is None:
        return None
    value = match.group(1)
    return strict_loads(value) if value.startswith('"') else value


@pytest.fixture()
def sampled_negatives(monkeypatch):
    """The negative prompt of every sampling pass (what the model's unconditional branch encodes), in order."""
    from lib_handrefiner import pipeline

    seen, real = [], pipeline.sample_inpaint

    def recording(sd, controlnet, request, *args, **kwargs):
        seen.append(request.negative_prompt)
        return real(sd, controlnet, request, *args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_inpaint", recording)
    return seen


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Several engineers and CI jobs share the cores; tiny models do not gain from more threads.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def graphormer_folder(tmp_path_factory) -> Path:
    """A models folder with Mesh Graphormer's three files, as a user would have them: the network with seeded
    random weights in the released layout (~855 MB, legacy torch.save; heads set so that the mesh lands in its
    crop, see graphormer_fixtures.mesh_shaped_heads), a synthetic MANO_RIGHT.pkl and mano_downsampling.npz."""
    import graphormer_fixtures
    import mano_files
    import numpy as np

    folder = tmp_path_factory.mktemp("graphormer-models")
    arrays = mano_files.write_synthetic_mano(folder / "MANO_RIGHT.pkl")
    sampling = mano_files.write_synthetic_downsampling(folder / "mano_downsampling.npz", arrays["f"])
    upsampling = sampling["U"][0].toarray()
    upsampling /= np.maximum(upsampling.sum(axis=1, keepdims=True), 1e-12)
    state = graphormer_fixtures.seeded_state_dict(graphormer_fixtures.manifest_entries())
    graphormer_fixtures.mesh_shaped_heads(state, torch.from_numpy(upsampling).float())
    graphormer_fixtures.write_released_layout(folder / "graphormer_hand_state_dict.bin", state)
    return folder


@pytest.fixture(scope="session")
def graphormer_model(graphormer_folder):
    from lib_handrefiner.mesh.graphormer.model import load_graphormer

    return load_graphormer(graphormer_folder)
