"""prepare-data: the readers on small synthetic folders in each source's layout, the crops, masks and hints they
become, the samples dropped (and why), and the training folder format."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image
from train_data import RHD_SAMPLES, encode_rhd_depth, write_rhd, write_static_gestures

from lib_handrefiner.cli import main
from lib_handrefiner.train.folder import DatasetFolderError, list_folder, read_captions, read_sample_images
from lib_handrefiner.train.prepare import PrepareOptions, depth_levels, prepare
from lib_handrefiner.train.sources import SourceError, hand_segments, open_source, rhd_depth


@pytest.fixture(scope="module")
def rhd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("RHD_published_v2")
    write_rhd(root)
    return root


@pytest.fixture(scope="module")
def rhd_prepared(rhd, tmp_path_factory):
    captions = tmp_path_factory.mktemp("captions") / "captions.jsonl"
    captions.write_text('{"jpg": "00000.png", "txt": "a hand pointing"}\n{"jpg": "00001", "txt": "two hands"}\n')
    dst = tmp_path_factory.mktemp("rhd-prepared")
    assert main(["prepare-data", "rhd", str(rhd), str(dst), "--resolution", "128", "--captions", str(captions),
                 "--no-progress"]) == 0
    return dst


def test_worker_processes_write_the_same_folder(rhd, rhd_prepared, tmp_path):
    assert main(["prepare-data", "rhd", str(rhd), str(tmp_path / "out"), "--resolution", "128", "--workers", "2",
                 "--no-progress"]) == 0
    files = sorted(p.relative_to(rhd_prepared) for p in rhd_prepared.rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    assert all((rhd_prepared / f).read_bytes() == (tmp_path / "out" / f).read_bytes() for f in files)
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())["runs"][-1]
    assert report["dropped"] == json.loads((rhd_prepared / "prepare.json").read_text())["runs"][-1]["dropped"]


def test_rhd_depth_is_two_8_bit_channels_over_5_metres():
    metres = np.array([[0.0, 0.5, 1.234567], [2.5, 4.99, 5.0]])
    decoded = rhd_depth(encode_rhd_depth(metres))
    assert np.abs(decoded - metres).max() <= 5.0 / 65535
    # red holds the top byte: 1 m = 13107 = 51·256 + 51
    assert tuple(encode_rhd_depth(np.array([1.0]))[0, :2]) == (51, 51)


def test_rhd_samples_kept_and_dropped_by_reason(rhd_prepared):
    report = json.loads((rhd_prepared / "prepare.json").read_text())["runs"][-1]
    kept = {case for case, _ in RHD_SAMPLES} - set(report["dropped"])
    assert kept == {"one_hand", "two_hands", "one_good_one_small"}
    assert report["dropped"] == {r: 1 for r in ("no_hand", "keypoints_off_mask", "too_small", "hidden",
                                                "in_pieces")}
    assert report["written"] == 3 and report["mask"] == "segmentation" and report["hint"] == "dataset"


def test_rhd_crop_mask_and_hint_in_the_project_convention(rhd_prepared):
    entries = {e.name: e.caption for e in list_folder(rhd_prepared)}
    assert entries == {"rhd_00000.png": "a hand pointing", "rhd_00001.png": "two hands", "rhd_00007.png": ""}
    for name in entries:
        rgb, mask, hint = read_sample_images(rhd_prepared, name)
        assert rgb.shape == (128, 128, 3) and mask.shape == (128, 128) and hint.shape == (128, 128, 3)
        levels = hint[..., 0]
        assert (hint == levels[..., None]).all()                 # one grey level on 3 channels
        assert set(np.unique(levels)) <= {0} | set(range(50, 256))
        assert not (levels > 0)[~mask].any()                      # the hint lies on the mask
        assert (levels[mask] > 0).mean() > 0.8  # the mask is resized bilinear (≤ 1 px wider)
    # Two hands: each normalised on its own (both span 50…255 although the right one is 0.1 m farther; the
    # nearest-neighbour resize 320 → 128 px may skip a hand's extreme pixels).
    _, _, hint = read_sample_images(rhd_prepared, "rhd_00001.png")
    left, right = hint[:, :64, 0], hint[:, 64:, 0]
    for half in (left, right):
        assert half.max() >= 245 and half[half > 0].min() <= 60
    # Depth rises to the right on every hand: near (left edge) bright, far (right edge) dark.
    row = hint[64, :64, 0]
    on = np.flatnonzero(row)
    assert row[on[0]] > row[on[-1]]
    # Only the big hand of "one_good_one_small" is masked (the 6 px hand is left as it is).
    _, mask, _ = read_sample_images(rhd_prepared, "rhd_00007.png")
    raw = np.asarray(Image.open(rhd_prepared / "image" / "rhd_00007.png"))
    assert raw.shape == (128, 128, 3) and 0.05 < mask.mean() < 0.5


def test_depth_levels_per_hand_and_background():
    depth = np.array([[1.0, 2.0, 9.0, 5.0, 6.0]])
    a = np.array([[True, True, False, False, False]])
    b = np.array([[False, False, False, True, True]])
    assert depth_levels(depth, [a, b]).tolist() == [[255, 50, 0, 255, 50]]
    flat = depth_levels(np.ones((1, 2)), [np.ones((1, 2), bool)])
    assert flat.tolist() == [[255, 255]]


def test_rhd_pickle_is_read_without_running_code(tmp_path):
    root = tmp_path / "RHD_published_v2"
    write_rhd(root, RHD_SAMPLES[:1])

    class Exploit:
        def __reduce__(self):
            return (exec, ("open('{}', 'w').write('ran')".format(tmp_path / "pwned"),))

    with open(root / "training" / "anno_training.pickle", "wb") as f:
        pickle.dump({0: {"uv_vis": Exploit()}}, f)
    with pytest.raises(SourceError, match="not a readable RHD annotation pickle"):
        open_source("rhd", root)
    assert not (tmp_path / "pwned").exists()


def test_rhd_layout_errors_name_the_fix(tmp_path):
    with pytest.raises(SourceError, match="training/ and evaluation/"):
        open_source("rhd", tmp_path)
    (tmp_path / "training" / "color").mkdir(parents=True)
    with pytest.raises(SourceError, match="anno_training.pickle"):
        open_source("rhd", tmp_path)


def test_static_gestures_hands_by_segment_name_and_float_depth(tmp_path):
    write_static_gestures(tmp_path / "sai", count=2)
    source = open_source("static-gestures", tmp_path / "sai")
    assert len(source) == 2 and source.names[0] == "0.cam_default.f_1.rgb.png"
    sample = source.read(0)
    assert [h.side for h in sample.hands] == ["left", "right"]
    assert sample.depth.dtype == np.float32 and 0.6 <= sample.depth[sample.hands[0].pixels].min() < 0.9
    assert main(["prepare-data", "static-gestures", str(tmp_path / "sai"), str(tmp_path / "out"), "--resolution",
                 "128", "--no-progress"]) == 0
    entries = list_folder(tmp_path / "out")
    assert [e.name for e in entries] == ["sai_0.cam_default.f_1.png", "sai_1.cam_default.f_1.png"]
    _, mask, hint = read_sample_images(tmp_path / "out", entries[0].name)
    assert mask.any() and not (hint[..., 0] > 0)[~mask].any()


def test_hand_segment_names():
    mapping = {"background": 0, "hand_left": 1, "right_hand_fingers": 2, "finger_nail_l": 3, "earring": 4,
               "thumb_right": 5}
    assert hand_segments(mapping) == {"left": [1], "right": [2, 5], "unknown": [3]}
    assert hand_segments(mapping, ["earring"]) == {"unknown": [4]}
    assert hand_segments({"background": 0, "body": 1}) == {}


def test_static_gestures_without_hand_segments_says_how_to_name_them(tmp_path, capsys):
    write_static_gestures(tmp_path / "sai", count=1, mapping={"background": 0, "body": 1, "hand_left": 2,
                                                              "hand_right": 3, "hair": 4})
    info = next((tmp_path / "sai").glob("*.info.json"))
    info.write_text(json.dumps({"segments_mapping": {"background": 0, "body": 1, "arm": 2, "wrist": 3}}))
    assert main(["prepare-data", "static-gestures", str(tmp_path / "sai"), str(tmp_path / "out"),
                 "--no-progress"]) == 2
    assert "--hand-segments" in capsys.readouterr().err
    assert main(["prepare-data", "static-gestures", str(tmp_path / "sai"), str(tmp_path / "out"), "--hand-segments",
                 "arm,wrist", "--resolution", "128", "--no-progress"]) == 0


def test_photo_folder_with_landmark_hints_matches_what_the_refiner_samples(tmp_path, tiny_sd):
    """--hint landmarks: the mask and hint of a prepared photo are exactly the inputs refine_image gives the
    sampler for the same image (all hands together, the crop at the training resolution)."""
    import torch

    from lib_handrefiner import pipeline
    from lib_handrefiner.settings import HandRefinerArgs

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("malformed_1.jpg", "internet_fig1.jpg"):
        (photos / name).write_bytes((EXAMPLES / name).read_bytes())
    (photos / "notes.txt").write_text("not an image")
    source = open_source("images", photos)
    assert source.names == ["internet_fig1.jpg", "malformed_1.jpg"]
    report = prepare(source, tmp_path / "out", PrepareOptions(resolution=128, hint="landmarks"), progress=False)
    assert report.written == 2 and not report.dropped

    seen = []

    def capture(sd, controlnet, request, strengths, seed, callback=None, should_stop=None):
        seen.append(request)
        return torch.zeros(len(strengths), 3, *request.image.shape[-2:])

    from lib_handrefiner.imageio import load_image

    args = HandRefinerArgs(hands_together=True, crop_resolution=128)
    pipeline.refine_image(load_image(photos / "malformed_1.jpg"), tiny_sd, None, args, seed=0, sample_fn=capture)
    _, mask, hint = read_sample_images(tmp_path / "out", "img_malformed_1.png")
    assert len(seen) == 1
    assert np.array_equal(seen[0].mask[0, 0].numpy() > 0.5, mask)
    assert np.array_equal(np.round(seen[0].hint[0, 0].numpy() * 255).astype(np.uint8), hint[..., 0])


def test_graphormer_hint_without_its_files_is_a_clear_error(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((EXAMPLES / "malformed_1.jpg").read_bytes())
    assert main(["prepare-data", "images", str(photos), str(tmp_path / "out"), "--hint", "graphormer",
                 "--models-dir", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "graphormer_hand_state_dict.bin" in err and "MANO_RIGHT.pkl" in err
    assert not (tmp_path / "out" / "prompt.json").exists()


def test_photos_need_a_mesh_hint(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((EXAMPLES / "malformed_1.jpg").read_bytes())
    assert main(["prepare-data", "images", str(photos), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "--hint landmarks" in capsys.readouterr().err


def test_existing_training_folder_is_not_overwritten_without_force(rhd, rhd_prepared, capsys):
    assert main(["prepare-data", "rhd", str(rhd), str(rhd_prepared), "--no-progress"]) == 2
    assert "--append" in capsys.readouterr().err


def test_append_mixes_datasets_in_one_folder(rhd, tmp_path):
    write_static_gestures(tmp_path / "sai", count=2)
    dst = tmp_path / "mixed"
    assert main(["prepare-data", "rhd", str(rhd), str(dst), "--resolution", "128", "--no-progress"]) == 0
    assert main(["prepare-data", "static-gestures", str(tmp_path / "sai"), str(dst), "--resolution", "128",
                 "--append", "--no-progress"]) == 0
    assert main(["prepare-data", "static-gestures", str(tmp_path / "sai"), str(dst), "--resolution", "128",
                 "--append", "--no-progress"]) == 0                      # again: replaces, does not duplicate
    names = [e.name for e in list_folder(dst)]
    assert len(names) == len(set(names)) == 5 and sum(n.startswith("sai_") for n in names) == 2
    report = json.loads((dst / "prepare.json").read_text())
    assert report["samples"] == 5
    assert [r["source"] for r in report["runs"]] == ["rhd", "static-gestures", "static-gestures"]


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetFolderError, match="prepare-data"):
        list_folder(tmp_path)
    for d in ("image", "mask", "pose"):
        (tmp_path / d).mkdir()
    (tmp_path / "prompt.json").write_text('{"jpg": "a.png", "txt": "x"}\nnot json\n')
    with pytest.raises(DatasetFolderError, match="line 2"):
        read_captions(tmp_path / "prompt.json")
    (tmp_path / "prompt.json").write_text('{"jpg": "a.png", "txt": "x"}\n')
    with pytest.raises(DatasetFolderError, match=r"missing, e\.g\. .*image/a\.png"):
        list_folder(tmp_path)


def test_readme_training_section_names_only_real_flags():
    """The flags "Train your own hand ControlNet" names exist in prepare-data, train or torchrun."""
    import argparse
    import importlib
    import re

    from conftest import ROOT

    from lib_handrefiner.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train your own hand ControlNet"):text.index("## Measured")]
    known = {"--nproc_per_node", "--standalone"}  # torchrun's
    for command in ("prepare-data", "train", "controlnet"):
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
        parsers = [parser] + [p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                              for p in a.choices.values()]
        known |= {s for p in parsers for a in p._actions for s in a.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]+", section))
    assert named and not named - known, sorted(named - known)


def test_mesh_hint_keeps_only_detections_on_the_segmented_hands(tiny_sd):
    """rhd/static-gestures with --hint landmarks: a detection must be one of the dataset's hands; --mask
    segmentation then masks those hands' pixels (and the mesh's depth lies on them)."""
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.mesh import get_mesh_model
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.train.prepare import Dropped, prepare_sample
    from lib_handrefiner.train.sources import SourceHand, SourceSample

    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    hand = perceive(rgb).hands[0]
    x0, y0, x1, y1 = hand.box
    on_hand = np.zeros(rgb.shape[:2], bool)
    on_hand[y0:y1, x0:x1] = True
    elsewhere = np.zeros(rgb.shape[:2], bool)
    elsewhere[:40, :40] = True
    model = get_mesh_model("landmarks")
    options = PrepareOptions(resolution=128, hint="landmarks", mask="segmentation")
    off = prepare_sample(SourceSample("s", "s.jpg", rgb, [SourceHand(elsewhere)]), options, model)
    assert isinstance(off, Dropped) and off.reason == "detection_off_mask"
    kept = prepare_sample(SourceSample("s", "s.jpg", rgb, [SourceHand(on_hand), SourceHand(elsewhere)]), options,
                          model)
    assert not isinstance(kept, Dropped)
    assert kept.hint.any() and not kept.hint[kept.mask == 0].any()
    assert kept.mask.mean() < 0.9 * 255  # the box of the hand, not the undetected corner's pixels as well
