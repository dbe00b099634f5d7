"""`sweep`: the phase-transition grid end to end on the tiny models."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from lib_handrefiner.cli import main
from lib_handrefiner.cli.sweep import parse_strengths
from lib_handrefiner.grid import LABEL_HEIGHT

FAST = ["--steps", "2", "--crop-resolution", "64", "--cfg", "5"]


def _models(tiny_models):
    return ["--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(tiny_models.controlnet)]


def test_sweep_writes_a_labelled_grid_with_one_refined_crop_per_strength(tiny_models, tmp_path, capsys):
    from lib_handrefiner.adaptive import pose_error
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import cut, hand_crop_region
    from lib_handrefiner.settings import HandRefinerArgs

    out = tmp_path / "grid.png"
    image = EXAMPLES / "malformed_1.jpg"
    code = main(["sweep", str(image), "--strengths", "0.2,0.6,1.0", "--seed", "5", "--tile", "64",
                 "--columns", "3", "--out", str(out), *FAST, *_models(tiny_models)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "strength 0.2:" in printed and "strength 1:" in printed and "seed 5" in printed
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * (64 + LABEL_HEIGHT), 3 * 64, 3)  # input, depth, 3 strengths: 5 tiles in rows of 3
    tiles = [grid[r * (64 + LABEL_HEIGHT) + LABEL_HEIGHT:(r + 1) * (64 + LABEL_HEIGHT), c * 64:(c + 1) * 64]
             for r in range(2) for c in range(3)][:5]
    assert not np.array_equal(tiles[2], tiles[4])  # strength changes the refined hand
    assert not np.array_equal(tiles[0], tiles[2])  # refining changes the input
    labels = grid[:LABEL_HEIGHT]
    assert (labels < 128).any()  # text is drawn in the label strip
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["seed"] == 5 and [s["strength"] for s in data["strengths"]] == [0.2, 0.6, 1.0]
    for entry in data["strengths"]:
        assert entry["mpjpe_px"] is None or (entry["mpjpe_px"] >= 0 and math.isfinite(entry["mpjpe_px"]))

    # The input tile's number is the detector's noise floor: the unrefined crop scored against its own mesh.
    rgb = load_image(image)
    args = HandRefinerArgs()
    hand = [h for h in perceive(rgb, args).hands if h.refinable][0]
    region = hand_crop_region(hand.box, rgb.shape[1], rgb.shape[0], 64)
    target = hand.mesh.joints[:, :2] - np.array([region.x0, region.y0])
    floor = pose_error(cut(rgb, region, "edge"), target, "landmarks", args)
    assert data["input_mpjpe_px"] == pytest.approx(floor, abs=1e-6) and floor < 8.0

def test_sweep_same_seed_is_reproducible(tiny_models, tmp_path):
    outs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outs:
        assert main(["sweep", str(EXAMPLES / "freihand_sample1.jpg"), "--strengths", "0.5", "--seed", "9",
                     "--tile", "48", "--out", str(out), *FAST, *_models(tiny_models)]) == 0
    assert np.array_equal(np.asarray(Image.open(outs[0])), np.asarray(Image.open(outs[1])))


def test_image_without_hands_and_bad_arguments_are_clear_errors(tiny_models, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 96), (127, 127, 127)).save(blank)
    assert main(["sweep", str(blank), "--out", str(tmp_path / "g.png"), *FAST, *_models(tiny_models)]) == 1
    assert "no hand found" in capsys.readouterr().err
    assert main(["sweep", str(blank), "--strengths", "0.1,x", *FAST, *_models(tiny_models)]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_parse_strengths():
    assert parse_strengths("0.1, 0.5,1") == [0.1, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        parse_strengths("3")


def test_bad_grid_options_and_output_are_refused_before_any_sampling(tiny_models, tmp_path, capsys):
    image = str(EXAMPLES / "freihand_sample1.jpg")
    for option in (["--tile", "0"], ["--columns", "0"], ["--hand", "-1"]):
        assert main(["sweep", image, *option, "--out", str(tmp_path / "g.png"), *FAST, *_models(tiny_models)]) == 2
        assert option[0] in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    assert main(["sweep", image, "--out", str(taken / "g.png"), *FAST, *_models(tiny_models)]) == 2
    err = capsys.readouterr().err
    assert "taken" in err and "cannot" in err
    assert not list(tmp_path.glob("*.png"))


def test_an_out_of_range_setting_is_one_line_naming_it(tiny_models, tmp_path, capsys):
    code = main(["sweep", str(EXAMPLES / "freihand_sample1.jpg"), "--steps", "0", "--out", str(tmp_path / "g.png"),
                 *_models(tiny_models)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: steps: ")


def test_out_equal_to_the_image_is_refused(tiny_models, tmp_path, capsys):
    image = tmp_path / "hand.png"
    Image.open(EXAMPLES / "freihand_sample1.jpg").save(image)
    before = image.read_bytes()
    assert main(["sweep", str(image), "--out", str(image), *FAST, *_models(tiny_models)]) == 2
    assert "overwrite" in capsys.readouterr().err and image.read_bytes() == before
