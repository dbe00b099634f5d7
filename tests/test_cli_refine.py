"""`python -m lib_handrefiner refine` end to end with the tiny models."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, OFFICIAL_NEGATIVE, infotext_value, strict_loads
from pickles import tiny_lightning_checkpoint, write_lightning_checkpoint
from PIL import Image

from lib_handrefiner.cli import main


def _models(tiny_models):
    return ["--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(tiny_models.controlnet)]


def test_refine_writes_png_with_parameters_and_json(tiny_models, tmp_path, capsys):
    image = EXAMPLES / "freihand_sample1.jpg"
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 80, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "out"
    code = main(["refine", str(image), str(blank), *_models(tiny_models), "--steps", "1", "--seed", "11",
                 "--prompt", "a hand", "--negative", "blurry", "--out", str(out), "--save-depth", "--save-mask",
                 "--set", "crop_resolution=128", "--set", "mask-feather=4"])
    assert code == 0
    refined = Image.open(out / "freihand_sample1.refined.png")
    lines = refined.text["parameters"].splitlines()
    assert lines[0] == "a hand" and lines[1] == "Negative prompt: blurry"
    assert lines[-1].startswith("HandRefiner: True, HandRefiner strength: 0.55") and "HandRefiner seed: 11" in lines[-1]
    assert "HandRefiner crop resolution: 128" in lines[-1] and "HandRefiner mask feather: 4" in lines[-1]
    data = json.loads((out / "freihand_sample1.refine.json").read_text())
    assert data["refined"] and data["seed"] == 11 and data["strength"] == 0.55
    assert len(data["hands"]) >= 1 and len(data["hands"][0]["box"]) == 4 and data["detected"][0]["refinable"]
    assert data["timings_ms"]["total"] > 0 and "sample" in data["timings_ms"]
    original = np.asarray(Image.open(image).convert("RGB"))
    assert refined.size == (original.shape[1], original.shape[0])
    assert (np.asarray(refined) != original).any()
    depth = Image.open(out / "freihand_sample1.depth.png")
    mask = np.asarray(Image.open(out / "freihand_sample1.mask.png"))
    assert depth.size == refined.size and mask.max() == 255
    # No hands: the original is written unchanged and the JSON says so.
    assert np.array_equal(np.asarray(Image.open(out / "blank.refined.png")), np.asarray(Image.open(blank)))
    blank_data = json.loads((out / "blank.refine.json").read_text())
    assert not blank_data["refined"] and "no hands" in blank_data["message"] and blank_data["hands"] == []
    assert "no hands" in capsys.readouterr().out


def test_refine_reports_bad_inputs(tiny_models, tmp_path, capsys):
    code = main(["refine", str(tmp_path / "missing.png"), *_models(tiny_models), "--out", str(tmp_path)])
    assert code == 1 and "missing.png" in capsys.readouterr().err
    code = main(["refine", str(EXAMPLES / "freihand_sample1.jpg"), "--checkpoint", str(tiny_models.controlnet),
                 "--controlnet", str(tiny_models.controlnet), "--out", str(tmp_path)])
    assert code == 2 and "ControlNet" in capsys.readouterr().err
    code = main(["refine", "x.png", *_models(tiny_models), "--set", "crop_resolution=9000"])
    assert code == 2 and "crop_resolution" in capsys.readouterr().err
    code = main(["refine", "x.png", *_models(tiny_models), "--set", "no_such_option=1"])
    assert code == 2 and "no_such_option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["refine", "x.png", *_models(tiny_models), "--strength", "0.5", "--adaptive"])


def test_an_output_folder_that_is_a_file_is_a_one_line_error(tiny_models, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    code = main(["refine", str(EXAMPLES / "freihand_sample1.jpg"), *_models(tiny_models), "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and "output folder" in err and "taken" in err and "Traceback" not in err


@pytest.mark.parametrize("setting, words", [
    ("crop=maybe", ["crop", "true or false"]),              # was silently read as False
    ("adaptive_strengths=0.4;x", ["adaptive_strengths", "'x'"]),  # was "could not convert string to float"
    ("boxes=1 2 x 4", ["boxes", "'x'"]),
    ("steps=0", ["steps", "greater than or equal to 1"]),
])
def test_bad_set_values_are_one_line_errors_naming_the_setting(tiny_models, setting, words, capsys):
    code = main(["refine", "x.png", *_models(tiny_models), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert all(word in err for word in words), err


def test_set_accepts_the_usual_spellings_of_booleans():
    from lib_handrefiner.settings import parse_setting

    assert [parse_setting(f"crop={v}")[1] for v in ("true", "False", "1", "0", "yes", "NO", "on", "off")] == \
        [True, False, True, False, True, False, True, False]


def test_a_box_where_no_detector_finds_a_hand_is_refined(tiny_models, tmp_path, capsys):
    # Issue 19: the user's box always gets a hand (the landmark model alone on it) and is refined, never
    # "nothing to refine"; the JSON says how the hand was found.
    grey = np.full((128, 128, 3), 128, np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    code = main(["refine", str(tmp_path / "grey.png"), *_models(tiny_models), "--steps", "1", "--seed", "5",
                 "--out", str(tmp_path / "out"), "--set", "crop_resolution=64", "--set", "boxes=20 30 90 110"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "grey.refine.json").read_text())
    assert data["refined"] and [d["found_by"] for d in data["detected"]] == ["user_box"]
    refined = np.asarray(Image.open(tmp_path / "out" / "grey.refined.png").convert("RGB"))
    changed = np.any(refined != grey, axis=2)
    assert changed[30:110, 20:90].any()


def test_a_box_outside_the_image_fails_that_image_naming_the_box(tiny_models, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 80), (127, 127, 127)).save(small)
    code = main(["refine", str(small), *_models(tiny_models), "--steps", "1", "--out", str(tmp_path / "out"),
                 "--set", "boxes=300 300 360 360"])
    err = capsys.readouterr().err
    assert code == 1 and "small.png" in err and "[300.0, 300.0, 360.0, 360.0]" in err and "100x80" in err
    assert not (tmp_path / "out" / "small.refined.png").exists()


def test_outputs_never_overwrite_an_input_image(tiny_models, tmp_path, capsys):
    shutil.copy(EXAMPLES / "freihand_sample1.jpg", tmp_path / "hand.jpg")
    shutil.copy(EXAMPLES / "freihand_sample2.jpg", tmp_path / "hand.refined.png")  # the user's, named like an output
    before = (tmp_path / "hand.refined.png").read_bytes()
    code = main(["refine", str(tmp_path / "hand.jpg"), str(tmp_path / "hand.refined.png"), *_models(tiny_models),
                 "--steps", "1", "--set", "crop_resolution=64", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "would overwrite the input image" in err
    assert (tmp_path / "hand.refined.png").read_bytes() == before and (tmp_path / "hand.refined.refined.png").exists()


def test_lightning_ckpt_files_refine_exactly_as_their_safetensors(tiny_models, tmp_path):
    """sd-v1-5-inpainting.ckpt pickles Lightning callbacks; such a .ckpt (and a .ckpt ControlNet) gives the same
    pixels as the same weights in .safetensors."""
    from safetensors.torch import load_file

    checkpoint = tiny_lightning_checkpoint(tiny_models, tmp_path / "models")
    controlnet = write_lightning_checkpoint(tmp_path / "models" / "cn.ckpt", load_file(str(tiny_models.controlnet)))
    image = str(EXAMPLES / "freihand_sample1.jpg")
    common = ["--steps", "1", "--seed", "3", "--set", "crop_resolution=64"]
    assert main(["refine", image, *_models(tiny_models), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["refine", image, "--checkpoint", str(checkpoint), "--controlnet", str(controlnet), *common,
                 "--out", str(tmp_path / "b")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "freihand_sample1.refined.png")) for d in ("a", "b"))
    assert np.array_equal(a, b) and (a != np.asarray(Image.open(image).convert("RGB"))).any()


def test_without_negative_the_official_negative_is_used_and_recorded(tiny_models, tmp_path, sampled_negatives):
    out = tmp_path / "out"
    image = str(EXAMPLES / "freihand_sample1.jpg")
    assert main(["refine", image, *_models(tiny_models), "--steps", "1", "--set", "crop_resolution=64",
                 "--out", str(out)]) == 0
    assert sampled_negatives == [OFFICIAL_NEGATIVE]
    lines = Image.open(out / "freihand_sample1.refined.png").text["parameters"].splitlines()
    assert lines[0] == f"Negative prompt: {OFFICIAL_NEGATIVE[len('fake 3D rendered image, '):]}"
    data = json.loads((out / "freihand_sample1.refine.json").read_text())
    assert data["negative_prompt"] == OFFICIAL_NEGATIVE[len("fake 3D rendered image, "):]


def test_refine_json_is_strict_reports_crops_and_tries_and_the_mask_bounds_every_change(tiny_models, tmp_path):
    """A hand that is not re-detected has an infinite MPJPE: the JSON said Infinity, which parsers outside Python
    reject; now null, and `tried` says what each number is. Compositing feathered 8 px past the saved mask; now
    every pixel where the saved mask is 0 keeps the input's bytes."""
    out = tmp_path / "out"
    image = EXAMPLES / "malformed_1.jpg"
    assert main(["refine", str(image), *_models(tiny_models), "--adaptive", "--steps", "1", "--seed", "4",
                 "--save-mask", "--set", "crop_resolution=64", "--set", "adaptive_strengths=0.4;0.6",
                 "--out", str(out)]) == 0
    data = strict_loads((out / "malformed_1.refine.json").read_text())
    (hand,) = data["hands"]
    assert [t["strength"] for t in hand["tried"]] == [1.0, 0.4, 0.6]
    assert all(set(t) == {"strength", "mpjpe"} and (t["mpjpe"] is None or t["mpjpe"] >= 0) for t in hand["tried"])
    assert None in [t["mpjpe"] for t in hand["tried"]]  # the tiny model paints no hand: the case that was Infinity
    x0, y0, x1, y1 = hand["crop"]
    assert x1 - x0 == y1 - y0 and hand["crop_scale"] == pytest.approx(64 / (x1 - x0))
    parameters = Image.open(out / "malformed_1.refined.png").text["parameters"]
    assert strict_loads(infotext_value(parameters.splitlines()[-1], "HandRefiner tried")) == [hand["tried"]]
    mask = np.asarray(Image.open(out / "malformed_1.mask.png"))
    refined = np.asarray(Image.open(out / "malformed_1.refined.png"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert (mask == 0).sum() > 0 and np.array_equal(refined[mask == 0], original[mask == 0])
    assert (refined[mask > 0] != original[mask > 0]).any()
