"""`python -m lib_handrefiner detect`: outputs per image, bad files, no hands, progress bar, user boxes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from lib_handrefiner.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _outputs(out: Path, stem: str):
    return [out / f"{stem}.{kind}" for kind in ("hands.json", "depth.png", "mask.png", "overlay.png")]


def test_detect_writes_json_depth_mask_overlay(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(EXAMPLES / "malformed_3.jpg"), "--out", str(out)]) == 0
    for path in _outputs(out, "malformed_3"):
        assert path.is_file() and path.stat().st_size > 0
    data = json.loads((out / "malformed_3.hands.json").read_text())
    assert (data["width"], data["height"]) == (512, 512)
    (hand,) = data["hands"]
    assert hand["handedness"] == "right" and 0.2 <= hand["score"] <= 1 and hand["mesh"] == "landmarks"
    landmarks = np.array(hand["landmarks"])
    assert landmarks.shape == (21, 3)
    x0, y0, x1, y1 = hand["box"]
    assert np.all((landmarks[:, 0] >= x0) & (landmarks[:, 0] < x1) & (landmarks[:, 1] >= y0)
                  & (landmarks[:, 1] < y1))
    assert {"detect", "mesh", "depth", "mask", "total"} <= set(data["timings_ms"])
    depth = np.asarray(Image.open(out / "malformed_3.depth.png"))
    mask = np.asarray(Image.open(out / "malformed_3.mask.png"))
    overlay = Image.open(out / "malformed_3.overlay.png")
    assert depth.shape == mask.shape == (512, 512) and depth.max() == 255 and np.all(mask[depth > 0] == 255)
    assert overlay.size == (512, 512) and overlay.mode == "RGB"
    captured = capsys.readouterr()
    assert "malformed_3.jpg: 1 hand(s) [right" in captured.out and "%|" not in captured.err  # no bar for one


def test_bad_files_fail_with_one_line_each_and_others_still_run(tmp_path, capsys):
    good = tmp_path / "good.jpg"
    shutil.copy(EXAMPLES / "malformed_1.jpg", good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES / "malformed_1.jpg").read_bytes()[:15000])
    text = tmp_path / "text.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    code = main(["detect", str(empty), str(truncated), str(good), str(text), str(missing), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 4
    for bad in (empty, truncated, text, missing):
        assert sum(str(bad) in line for line in error_lines) == 1
    assert all(p.is_file() for p in _outputs(out, "good"))
    assert not (out / "empty.hands.json").exists()
    assert "%|" in err  # a progress bar with several images


def test_no_hands_exits_zero_with_empty_list(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 64), (200, 180, 160)).save(blank)
    out = tmp_path / "out"
    assert main(["detect", str(blank), "--out", str(out)]) == 0
    data = json.loads((out / "blank.hands.json").read_text())
    assert data["hands"] == [] and (data["width"], data["height"]) == (96, 64)
    assert "no hands found" in capsys.readouterr().out
    assert not np.asarray(Image.open(out / "blank.mask.png")).any()


def test_user_box_and_options(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(EXAMPLES / "malformed_1.jpg"), "--out", str(out), "--box", "10,10,60,70",
                 "--boxes-mode", "replace", "--mask-dilation", "4"])
    assert code == 0
    (hand,) = json.loads((out / "malformed_1.hands.json").read_text())["hands"]
    # No palm in the box: the landmark model alone on it still gives the user a hand, saying so.
    assert hand["handedness"] in ("left", "right") and hand["from_user_box"] and hand["found_by"] == "user_box"
    assert hand["box"][:2] <= [10, 10] and hand["box"][2] >= 60 and hand["box"][3] >= 70
    mask = np.asarray(Image.open(out / "malformed_1.mask.png"))
    assert mask[6, 30] == 255 and mask[30, 200] == 0


def test_bad_options_exit_2(tmp_path, capsys):
    assert main(["detect", str(EXAMPLES / "malformed_1.jpg"), "--out", str(tmp_path), "--mesh", "nope"]) == 2
    assert "mesh_model: unexpected value" in capsys.readouterr().err
    assert main(["detect", str(EXAMPLES / "malformed_1.jpg"), "--out", str(tmp_path), "--box", "5,5,1,1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) <= 2 and "x1 > x0" in err[-1]


def test_a_box_outside_an_image_fails_that_image_naming_the_box(tmp_path, capsys):
    # Was silently dropped: the user was told "no hands found" for the box they gave.
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 80), (127, 127, 127)).save(small)
    out = tmp_path / "out"
    code = main(["detect", str(small), str(EXAMPLES / "malformed_1.jpg"), "--out", str(out),
                 "--box", "300,300,360,360"])
    err = capsys.readouterr().err
    assert code == 1 and "small.png" in err and "[300.0, 300.0, 360.0, 360.0]" in err and "100x80" in err
    assert not (out / "small.hands.json").exists()
    (hand,) = json.loads((out / "malformed_1.hands.json").read_text())["hands"]  # inside this one: still done
    assert hand["from_user_box"]


def test_outputs_never_overwrite_an_input_image_or_another_images_outputs(tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(EXAMPLES / "malformed_1.jpg", folder / "hand.jpg")
    shutil.copy(EXAMPLES / "malformed_2.jpg", folder / "hand.mask.png")  # the user's own image, named like an output
    shutil.copy(EXAMPLES / "malformed_3.jpg", folder / "hand.png")        # same stem as hand.jpg
    before = (folder / "hand.mask.png").read_bytes()
    code = main(["detect", str(folder / "hand.jpg"), str(folder / "hand.mask.png"), str(folder / "hand.png"),
                 "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 1 and (folder / "hand.mask.png").read_bytes() == before
    assert "hand.jpg" in err and "would overwrite the input image" in err
    assert "hand.png:" in err  # its outputs would replace hand.jpg's (or the input hand.mask.png)
    assert (folder / "hand.mask.hands.json").exists()  # the other image still ran
