"""Mesh Graphormer in the product: the mesh_model setting (auto / graphormer / landmarks, mesh_fallback), the
command line, the API and the adaptive pose check, with the random-weight files of the `graphormer_folder`
fixture in the released layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import api_client, b64_file
from PIL import Image

from lib_handrefiner.cli import main
from lib_handrefiner.imageio import load_image
from lib_handrefiner.mesh import MeshModelError, resolve_mesh_model
from lib_handrefiner.mesh.graphormer import files
from lib_handrefiner.models_registry import ModelSlots
from lib_handrefiner.settings import FIELDS, HandRefinerArgs, field_names, from_infotext

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHIPPED = sorted(EXAMPLES.glob("*.jpg"))


@pytest.fixture()
def no_env_folder(monkeypatch):
    monkeypatch.delenv(files.MODELS_DIR_ENV, raising=False)


def _partial_folder(tmp_path: Path, graphormer_folder: Path, leave_out: str) -> Path:
    folder = tmp_path / f"without-{leave_out}"
    folder.mkdir()
    for name in files.FILE_NAMES:
        if name != leave_out:
            (folder / name).symlink_to(graphormer_folder / name)
    return folder


# ---- the setting --------------------------------------------------------------------------------------------------

def test_the_setting_defaults_to_auto_and_the_fallback_comes_last():
    field = FIELDS["mesh_model"]
    assert field.default == "auto" and set(field.choices) == {"auto", "graphormer", "landmarks"}
    assert field_names()[-1] == "mesh_fallback" and HandRefinerArgs().mesh_fallback is False
    assert from_infotext({"HandRefiner": "True", "HandRefiner mesh": "graphormer"}).mesh_model \
        == "graphormer"


def test_auto_takes_graphormer_when_its_files_are_there(graphormer_folder, graphormer_model, tmp_path, no_env_folder):
    loaded = []

    def load(name):
        loaded.append(name)
        return graphormer_model if name == "graphormer" else resolve_mesh_model("landmarks")[0]

    model, warning = resolve_mesh_model("auto", graphormer_folder, load=load)
    assert model.name == "graphormer" and warning == "" and loaded == ["graphormer"]
    partial = _partial_folder(tmp_path, graphormer_folder, "MANO_RIGHT.pkl")
    model, warning = resolve_mesh_model("auto", partial, load=load)
    assert model.name == "landmarks" and warning == ""


def test_graphormer_without_its_files_fails_or_falls_back_with_a_warning(tmp_path, graphormer_folder):
    partial = _partial_folder(tmp_path, graphormer_folder, "mano_downsampling.npz")
    with pytest.raises(MeshModelError, match="mano_downsampling.npz: the 778 → 195 vertex sampling"):
        resolve_mesh_model("graphormer", partial)
    model, warning = resolve_mesh_model("graphormer", partial, fallback=True)
    assert model.name == "landmarks"
    assert "used the landmark mesh" in warning and "mano_downsampling.npz" in warning
    assert "MANO_RIGHT.pkl" not in warning  # only what is missing


def test_model_slots_load_mesh_graphormer_once(graphormer_folder):
    slots = ModelSlots()
    first, _ = slots.mesh_model("graphormer", [graphormer_folder])
    again, _ = slots.mesh_model("auto", [graphormer_folder])
    assert first is again and first.name == "graphormer" and slots.models() == [first]
    landmarks, _ = slots.mesh_model("landmarks", [graphormer_folder])
    assert landmarks.name == "landmarks" and slots.models() == [landmarks]  # the network is let go


# ---- detect ------------------------------------------------------------------------------------------------------

def test_detect_with_mesh_graphormer_on_every_shipped_image(tmp_path, graphormer_folder, capsys):
    out = tmp_path / "out"
    code = main(["detect", *map(str, SHIPPED), "--out", str(out), "--mesh", "graphormer",
                 "--models-dir", str(graphormer_folder)])
    assert code == 0, capsys.readouterr().err
    rendered = 0
    for image in SHIPPED:
        data = json.loads((out / f"{image.stem}.hands.json").read_text())
        assert data["hands"] and all(h["mesh"] == "graphormer" for h in data["hands"]), image.name
        depth = np.asarray(Image.open(out / f"{image.stem}.depth.png"))
        mask = np.asarray(Image.open(out / f"{image.stem}.mask.png"))
        assert depth.shape == mask.shape == (data["height"], data["width"])
        assert np.all(mask[depth > 0] == 255) and mask.any()
        rendered += int(depth.max() == 255)
    assert rendered >= len(SHIPPED) - 1  # random weights: a mesh may miss its crop, but not on most images


@pytest.mark.parametrize("missing", files.FILE_NAMES)
def test_detect_with_a_file_missing_exits_1_naming_it(tmp_path, graphormer_folder, capsys, missing):
    folder = _partial_folder(tmp_path, graphormer_folder, missing)
    out = tmp_path / "out"
    assert main(["detect", str(SHIPPED[0]), "--out", str(out), "--mesh", "graphormer",
                 "--models-dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"- {missing}:" in err and files.required_by_name(missing).where in err
    assert not out.exists() or not list(out.iterdir())


def test_detect_falls_back_with_a_warning(tmp_path, capsys, no_env_folder):
    out = tmp_path / "out"
    assert main(["detect", str(SHIPPED[0]), "--out", str(out), "--mesh", "graphormer", "--mesh-fallback"]) == 0
    err = capsys.readouterr().err
    assert "warning: used the landmark mesh" in err and "graphormer_hand_state_dict.bin" in err
    data = json.loads((out / f"{SHIPPED[0].stem}.hands.json").read_text())
    assert data["hands"][0]["mesh"] == "landmarks" and "MANO_RIGHT.pkl" in data["mesh_warning"]


# ---- the API -----------------------------------------------------------------------------------------------------

def test_api_graphormer_without_files_is_503_naming_them(tiny_models, no_env_folder):
    from lib_handrefiner.service import StandaloneService

    client = api_client(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet))
    body = {"image": b64_file(SHIPPED[0]), "mesh_model": "graphormer", "steps": 1, "crop_resolution": 64}
    response = client.post("/handrefiner/refine", json=body)
    assert response.status_code == 503
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "mesh_model"] and error["type"] == "server_error.unavailable"
    assert all(f"- {name}:" in error["msg"] for name in files.FILE_NAMES) and "mesh_fallback" in error["msg"]
    response = client.post("/handrefiner/refine", json={**body, "mesh_fallback": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["hands"][0]["mesh"] == "landmarks" and "warning: used the landmark mesh" in answer["message"]
    models = client.get("/handrefiner/models").json()["mesh_models"]
    assert [m["name"] for m in models] == ["auto", "graphormer", "landmarks"]
    assert models[1]["missing"] == list(files.FILE_NAMES)


def test_api_server_started_with_mesh_fallback_falls_back_for_every_request(tiny_models, no_env_folder):
    """`serve --mesh-fallback`: a request that names graphormer while its files are missing gets the landmark mesh
    and the warning, as the service resolves it, not the 503 of a server without the fallback."""
    from lib_handrefiner.service import StandaloneService

    client = api_client(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet, mesh_fallback=True))
    body = {"image": b64_file(SHIPPED[0]), "mesh_model": "graphormer", "steps": 1, "crop_resolution": 64}
    response = client.post("/handrefiner/refine", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["hands"][0]["mesh"] == "landmarks" and "warning: used the landmark mesh" in answer["message"]


def test_api_refines_with_mesh_graphormer(tiny_models, graphormer_folder):
    from lib_handrefiner.service import StandaloneService

    service = StandaloneService(tiny_models.checkpoint, tiny_models.controlnet, graphormer_folder)
    client = api_client(service)
    models = {m["name"]: m for m in client.get("/handrefiner/models").json()["mesh_models"]}
    assert models["auto"]["uses"] == "graphormer" and models["graphormer"]["available"]
    body = {"image": b64_file(EXAMPLES / "malformed_1.jpg"), "steps": 1, "crop_resolution": 64, "seed": 3}
    answer = client.post("/handrefiner/refine", json=body).json()
    assert answer["hands"][0]["mesh"] == "graphormer" and answer["hands"][0]["refined"]
    assert "HandRefiner meshes: graphormer" in answer["infotext"]
    # Adaptive: every strength's pose error is Mesh Graphormer's at the original crop, finite even on the tiny
    # model's noise, where detecting the hand again would find none.
    answer = client.post("/handrefiner/refine", json={**body, "mode": "adaptive", "adaptive_strengths": [0.5]}).json()
    tried = answer["hands"][0]["tried"]
    assert [t["strength"] for t in tried] == [1.0, 0.5] and all(t["mpjpe"] is not None and t["mpjpe"] > 0
                                                                for t in tried)


# ---- the adaptive pose check ---------------------------------------------------------------------------------------

def test_the_pose_check_refits_at_the_original_crop_without_detecting(graphormer_model):
    """The official eval_mpjpe: the refined image is cropped where the original hand was; an unchanged image
    scores 0, and an image where no hand could be detected still gets a finite error."""
    from lib_handrefiner.adaptive import refit_error
    from lib_handrefiner.detection import detect_hands

    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    hand = detect_hands(rgb)[0]
    target = graphormer_model.fit(hand, rgb).joints[:, :2]
    assert refit_error(rgb, hand, target, graphormer_model) == pytest.approx(0.0, abs=1e-4)
    blank = np.zeros_like(rgb)
    error = refit_error(blank, hand, target, graphormer_model)
    assert np.isfinite(error) and error > 0


@pytest.mark.parametrize("command", ["refine", "sweep"])
def test_refine_and_sweep_with_a_file_missing_exit_1_naming_it(tmp_path, graphormer_folder, tiny_models, capsys,
                                                                command):
    folder = _partial_folder(tmp_path, graphormer_folder, "MANO_RIGHT.pkl")
    models = ["--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(tiny_models.controlnet)]
    out = ["--out", str(tmp_path / ("out" if command == "refine" else "grid.png"))]
    assert main([command, str(SHIPPED[0]), *models, *out, "--mesh", "graphormer", "--models-dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "- MANO_RIGHT.pkl:" in err and "your own download" in err
