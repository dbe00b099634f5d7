"""`evaluate`: the table's numbers against direct computations, on copies (MPJPE 0, FID 0) and end to end on images
refined with the tiny models."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from lib_handrefiner.cli import main
from lib_handrefiner.cli.evaluate import evaluate, list_images, markdown_table, to_json
from lib_handrefiner.settings import HandRefinerArgs

HAND_IMAGES = ["freihand_sample1.jpg", "freihand_sample2.jpg", "internet_fig1.jpg", "malformed_1.jpg"]


class SmallExtractor(torch.nn.Module):
    """A seeded random conv net with 4 features: FID's covariances stay full rank on a handful of images."""
    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def before_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("before")
    for name in HAND_IMAGES + ["internet_fig2.jpg", "malformed_2.jpg"]:
        shutil.copy(EXAMPLES / name, folder / name)
    Image.new("RGB", (96, 80), (127, 127, 127)).save(folder / "blank.png")  # no hand: confidence 0
    return folder


@pytest.fixture(scope="module")
def copies_dir(before_dir, tmp_path_factory) -> Path:
    """The before images unchanged, named like cli refine's output, plus a mask image it would write beside."""
    folder = tmp_path_factory.mktemp("copies")
    for path in list_images(before_dir, refined_only=False):
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.refined.png")
    Image.new("L", (32, 32)).save(folder / "blank.mask.png")
    return folder


def test_copies_give_zero_mpjpe_and_zero_fid(before_dir, copies_dir):
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image

    before = list_images(before_dir, refined_only=False)
    after = list_images(copies_dir, refined_only=True)
    assert [p.name for p in after] == [f"{p.stem}.refined.png" for p in before]  # the mask image is left out
    result = evaluate(before, after, extractor=SmallExtractor())
    rows = {r.name: r for r in result.rows}
    scores = [max((h.score for h in detect_hands(load_image(p))), default=0.0) for p in before]
    counts = [len(detect_hands(load_image(p))) for p in before]
    assert rows["before"].detection_confidence == pytest.approx(np.mean(scores), abs=1e-6)
    assert rows["before"].hands_found == sum(counts) and rows["before"].images == len(before)
    assert rows["before"].images_with_hands == sum(c > 0 for c in counts) == len(before) - 1
    # JPEG → PNG is lossless, so the after images are the same pixels: same hands, MPJPE 0, FID 0.
    assert rows["after"].mpjpe_hands == sum(counts) and rows["after"].hands_lost == 0
    assert rows["after"].mpjpe_px == pytest.approx(0.0, abs=1e-4)
    assert result.fid_against == "before"
    assert rows["after"].fid == pytest.approx(0.0, abs=1e-6) and rows["before"].fid is None
    assert rows["after"].kid_mean is not None and result.kid_subset_size == len(before)


def test_fid_kid_against_a_reference_equal_direct_computation(before_dir, copies_dir, tmp_path):
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.inception import extract_features
    from lib_handrefiner.metrics import fid_from_features, kid_from_features

    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # "real photos": noise of varied brightness
        Image.fromarray(rng.integers(i * 20, 120 + i * 20, (70, 90, 3), dtype=np.uint8)).save(reference / f"{i}.png")
    before = list_images(before_dir, refined_only=False)
    refs = list_images(reference, refined_only=False)
    extractor = SmallExtractor()
    result = evaluate(before, list_images(copies_dir, refined_only=True), refs, extractor=extractor,
                      kid_subsets=5, kid_subset_size=1000, batch_size=3)
    rows = {r.name: r for r in result.rows}
    f_before = extract_features(extractor, [load_image(p) for p in before])
    f_ref = extract_features(extractor, [load_image(p) for p in refs])
    assert rows["before"].fid == pytest.approx(fid_from_features(f_before, f_ref), abs=1e-6)
    kid = kid_from_features(f_before, f_ref, num_subsets=5, subset_size=6)
    assert rows["before"].kid_mean == pytest.approx(kid.mean, abs=1e-9)
    assert rows["before"].kid_std == pytest.approx(kid.std, abs=1e-9)
    assert rows["after"].fid == pytest.approx(rows["before"].fid, abs=1e-4)  # the same pixels
    assert rows["reference"].hands_found == 0 and rows["reference"].detection_confidence == 0.0
    assert result.kid_subset_size == 6 and any("lowered to 6" in n for n in result.notes)
    table = markdown_table(result)
    assert "FID vs reference ↓" in table and "KID vs reference ↓" in table and "MPJPE (px) ↓" in table


def test_without_inception_the_table_has_no_fid_columns(before_dir, copies_dir):
    result = evaluate(list_images(before_dir, refined_only=False), list_images(copies_dir, refined_only=True))
    table = markdown_table(result)
    assert "FID" not in table and "KID" not in table and "Det. Conf." in table
    data = to_json(result)
    assert data["fid_against"] is None and data["rows"][1]["mpjpe_px"] == pytest.approx(0.0, abs=1e-4)


def test_evaluate_end_to_end_on_images_refined_with_the_tiny_models(tiny_models, tiny_sd, tiny_controlnet,
                                                                    tmp_path, capsys):
    from lib_handrefiner.adaptive import pose_error
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.mesh import get_mesh_model
    from lib_handrefiner.pipeline import refine_image

    before, after, out = tmp_path / "before", tmp_path / "after", tmp_path / "out"
    before.mkdir(), after.mkdir()
    args = HandRefinerArgs(steps=2, crop_resolution=64, cfg_scale=5.0)
    for name in HAND_IMAGES[:2] + ["malformed_1.jpg"]:
        shutil.copy(EXAMPLES / name, before / name)
        refined = refine_image(load_image(before / name), tiny_sd, tiny_controlnet, args, seed=3)
        assert refined.hands, refined.message
        Image.fromarray(refined.image).save(after / f"{Path(name).stem}.refined.png")

    code = main(["evaluate", "--before", str(before), "--after", str(after), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").read_text() in printed
    rows = {r["name"]: r for r in data["rows"]}
    # Each before hand is either found again (measured) or lost; the per-image numbers are pose_error's.
    model = get_mesh_model("landmarks")
    expected = []
    for path in sorted(before.iterdir()):
        rgb_before, rgb_after = load_image(path), load_image(after / f"{path.stem}.refined.png")
        for hand in detect_hands(rgb_before):
            expected.append(pose_error(rgb_after, model.fit(hand, rgb_before).joints[:, :2], model))
    got = [e for record in data["images"]["after"] for e in record["mpjpe_px"]]
    assert len(got) == len(expected) == rows["before"]["hands_found"]
    for g, e in zip(got, expected):
        assert (g is None and math.isinf(e)) or g == pytest.approx(e, abs=1e-6)
    assert rows["after"]["mpjpe_hands"] + rows["after"]["hands_lost"] == len(expected)
    assert rows["after"]["images"] == 3 and 0.0 <= rows["after"]["detection_confidence"] <= 1.0


def test_missing_inception_weights_and_folders_are_clear_errors(before_dir, copies_dir, tmp_path, capsys):
    code = main(["evaluate", "--before", str(before_dir), "--after", str(copies_dir), "--out", str(tmp_path),
                 "--inception", str(tmp_path / "missing.pth")])
    assert code == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    code = main(["evaluate", "--before", str(tmp_path / "nope"), "--after", str(copies_dir), "--out", str(tmp_path)])
    assert code == 2 and "is not a folder of images" in capsys.readouterr().err
    assert not (tmp_path / "evaluation.json").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_evaluating(before_dir, copies_dir, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    code = main(["evaluate", "--before", str(before_dir), "--after", str(copies_dir), "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and "output folder" in err and "taken" in err
