"""perceive(): the whole perception stage on the shipped images, any input mode, user boxes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_handrefiner.imageio import load_image
from lib_handrefiner.perception import overlay_image, perceive
from lib_handrefiner.settings import HandRefinerArgs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.jpg"))
STAGES = {"convert", "detect", "mesh", "depth", "mask", "total"}


@pytest.fixture(scope="module")
def results():
    return {name: perceive(load_image(EXAMPLES / f"{name}.jpg")) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_example_hand_box_mask_and_depth(results, name):
    r = results[name]
    assert (r.width, r.height) == load_image(EXAMPLES / f"{name}.jpg").shape[1::-1]
    assert len(r.hands) == 1
    (p,) = r.hands
    assert p.hand is not None and p.mesh is not None and p.refinable and not p.from_user_box
    x0, y0, x1, y1 = p.box
    xy = np.floor(p.hand.landmarks[:, :2])
    inside_image = (xy[:, 0] >= 0) & (xy[:, 0] < r.width) & (xy[:, 1] >= 0) & (xy[:, 1] < r.height)
    assert inside_image.all()
    assert np.all((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1))  # box covers landmarks
    assert r.mask.dtype == np.uint8 and set(np.unique(r.mask)) == {0, 255}
    assert np.all(r.mask[r.depth > 0] == 255)                                              # mask ⊇ depth pixels
    assert np.all(r.mask[y0:y1, x0:x1] == 255)                                              # mask ⊇ box
    # The farthest surface: 255 · (1 − 0.8) truncated, 50 or 51 as the float rounding of 0.8·span/span falls.
    assert r.depth.max() == 255 and r.depth[r.depth > 0].min() in (50, 51)
    ys, xs = np.nonzero(r.depth)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1           # box ⊇ depth pixels
    assert set(r.timings_ms) == STAGES and all(v >= 0 for v in r.timings_ms.values())
    np.testing.assert_array_equal(r.hand_mask(0), r.mask)


def official_mask(result) -> np.ndarray:
    """The official preprocessor's mask (preprocessor/meshgraphormer.py, get_depth), written out over our hands and
    meshes: each hand's depth rendered alone on the image padded by half its size on each side, the keypoint
    extrema int()-truncated, both united, padded per axis by max(int((extent + 1) * 0.15), 30), clamped, filled."""
    from lib_handrefiner.depth import render_depth
    from lib_handrefiner.mesh import transform_mesh

    H, W = result.height, result.width
    mask = np.zeros((H, W))
    for perceived in result.hands:
        x = [float(v) for v in perceived.hand.landmarks[:, 0]]
        y = [float(v) for v in perceived.hand.landmarks[:, 1]]
        x_min, x_max, y_min, y_max = int(min(x)), int(max(x)), int(min(y)), int(max(y))
        on_canvas = transform_mesh(perceived.mesh, 1.0, (-int(W / 2), -int(H / 2)))
        nonzero_y, nonzero_x = (render_depth([on_canvas], 2 * W, 2 * H).depth != 0).nonzero()
        original_nonzero_x, original_nonzero_y = nonzero_x - int(W / 2), nonzero_y - int(H / 2)
        nonzerox_min, nonzerox_max = min(np.min(original_nonzero_x), x_min), max(np.max(original_nonzero_x), x_max)
        nonzeroy_min, nonzeroy_max = min(np.min(original_nonzero_y), y_min), max(np.max(original_nonzero_y), y_max)
        bb_xpad = max(int((nonzerox_max - nonzerox_min + 1) * 0.15), 30)
        bb_ypad = max(int((nonzeroy_max - nonzeroy_min + 1) * 0.15), 30)
        bbx_min, bbx_max = np.max((nonzerox_min - bb_xpad, 0)), np.min((nonzerox_max + bb_xpad, W - 1))
        bby_min, bby_max = np.max((nonzeroy_min - bb_ypad, 0)), np.min((nonzeroy_max + bb_ypad, H - 1))
        mask[bby_min:bby_max + 1, bbx_min:bbx_max + 1] = 1.0
    return (255.0 * mask).astype(np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_the_mask_is_the_official_one_on_the_shipped_images(results, name):
    """Our boxes were 0.76–0.83 of the official area on the malformed examples (the keypoint box alone padded
    by its longer side, the depth pixels united unpadded); now the mask is the official one, pixel for pixel."""
    r = results[name]
    np.testing.assert_array_equal(r.mask, official_mask(r))


def _modes(rgb: np.ndarray):
    image = Image.fromarray(rgb)
    gray16 = Image.fromarray((np.asarray(image.convert("L")).astype(np.uint16) * 257))
    rgba = image.convert("RGBA")
    return {"RGBA": rgba, "L": image.convert("L"), "P": image.convert("P"), "CMYK": image.convert("CMYK"),
            "I;16": gray16, "uint16 array": rgb.astype(np.uint16) * 257, "float array": rgb / 255.0}


def test_every_input_mode_finds_the_hand(results):
    rgb = load_image(EXAMPLES / "malformed_3.jpg")
    expected = results["malformed_3"].hands[0].hand.landmarks
    tolerance = 0.15 * results["malformed_3"].hands[0].hand.size  # grey or dithered pixels move MediaPipe a bit
    for mode, image in _modes(rgb).items():
        r = perceive(image)
        assert len(r.hands) == 1, mode
        assert np.abs(r.hands[0].hand.landmarks[:, :2] - expected[:, :2]).max() < tolerance, mode


def test_user_box_replaces_detections_and_finds_the_hand_inside(results):
    rgb = load_image(EXAMPLES / "malformed_3.jpg")
    x0, y0, x1, y1 = results["malformed_3"].hands[0].hand.keypoint_box
    args = HandRefinerArgs(boxes=[(x0 - 10, y0 - 10, x1 + 10, y1 + 10), (400, 20, 480, 90)], boxes_mode="replace")
    r = perceive(rgb, args)
    assert len(r.hands) == 2 and all(h.from_user_box for h in r.hands)
    found, empty = r.hands
    assert found.hand is not None and found.mesh is not None and found.refinable and found.found_by == "palm"
    assert found.box[0] <= x0 - 10 and found.box[2] >= x1 + 10
    # A box where the palm detector finds nothing still gets a hand: the landmark model alone on the box.
    assert empty.hand is not None and empty.mesh is not None and empty.refinable and empty.found_by == "user_box"
    ex0, ey0, ex1, ey1 = empty.box
    assert ex0 <= 400 and ey0 <= 20 and ex1 >= 480 and ey1 >= 90 and np.all(r.mask[20:90, 400:480] == 255)
    centre = empty.hand.landmarks[:, :2].mean(axis=0)
    assert 380 <= centre[0] <= 500 and 0 <= centre[1] <= 110  # the hand is the box's, not somewhere else
    assert r.depth[ey0:ey1, ex0:ex1].any()


def test_user_box_on_an_empty_region_still_gets_a_hand():
    # Issue 19: never "nothing to refine" for a box the user drew, even where no detector sees a hand.
    r = perceive(np.full((128, 128, 3), 90, np.uint8), HandRefinerArgs(boxes=[(10, 20, 50, 60)]))
    (hand,) = r.hands
    assert hand.hand is not None and hand.found_by == "user_box" and hand.from_user_box and hand.refinable
    assert hand.box[0] <= 10 and hand.box[1] <= 20 and hand.box[2] >= 50 and hand.box[3] >= 60
    assert np.all(r.mask[20:60, 10:50] == 255) and r.depth.any()


def test_add_mode_merges_a_box_on_a_detected_hand_and_adds_others(results):
    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    detected = results["malformed_1"].hands[0]
    x0, y0, x1, y1 = detected.hand.keypoint_box
    args = HandRefinerArgs(boxes=[(x0, y0, x1, y1), (10, 10, 60, 60)], boxes_mode="add")
    r = perceive(rgb, args)
    assert len(r.hands) == 2
    assert r.hands[0].hand is not None and r.hands[0].from_user_box and r.hands[0].box == detected.box
    assert r.hands[1].hand is not None and r.hands[1].found_by == "user_box"
    assert r.hands[1].box[:2] <= (10, 10) and r.hands[1].box[2] >= 60 and r.hands[1].box[3] >= 60


def test_small_hands_reported_not_refined_and_dilation_grows_the_mask(results):
    rgb = load_image(EXAMPLES / "malformed_2.jpg")
    r = perceive(rgb, HandRefinerArgs(min_hand_size=4096, mask_dilation=12))
    assert len(r.hands) == 1 and not r.hands[0].refinable and r.hands[0].mesh is not None
    base = results["malformed_2"].mask
    assert (r.mask > 0).sum() > (base > 0).sum() and np.all(r.mask[base > 0] == 255)


def test_no_hands():
    r = perceive(Image.new("RGB", (200, 150), (120, 130, 140)))
    assert r.hands == [] and not r.depth.any() and not r.mask.any() and r.depth.shape == (150, 200)


def test_overlay_shows_depth_and_landmarks(results):
    rgb = load_image(EXAMPLES / "malformed_3.jpg")
    r = results["malformed_3"]
    picture = overlay_image(rgb, r)
    assert picture.shape == rgb.shape and picture.dtype == np.uint8
    hand = r.depth > 0
    # Hand pixels are brighter than the darkened background outside the mask.
    assert picture[hand].mean() > picture[r.mask == 0].mean() + 30
    assert not np.array_equal(picture, rgb)


def test_mesh_graphormer_reads_a_user_box_hand_from_the_box_crop(graphormer_model, monkeypatch):
    # Issue 19: where only the landmark model (at no presence threshold) found the hand in a user's box, its
    # landmarks say little; Mesh Graphormer then reads the hand from the crop of the box itself, as in the paper.
    from lib_handrefiner.mesh.graphormer.model import network_input, official_crop

    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[..., 0] = np.arange(128, dtype=np.uint8)[None, :] * 2
    rgb[..., 1] = np.arange(128, dtype=np.uint8)[:, None] * 2
    box = (10, 20, 50, 60)
    seen = []
    predict = graphormer_model.predict
    monkeypatch.setattr(graphormer_model, "predict", lambda images: seen.append(images.copy()) or predict(images))
    (hand,) = perceive(rgb, HandRefinerArgs(boxes=[box]), mesh_model=graphormer_model).hands
    assert hand.found_by == "user_box" and hand.mesh is not None and hand.refinable
    mirror = hand.hand.handedness == "left"
    corners = np.array([[10, 20, 0], [50, 60, 0]], dtype=np.float64)
    assert np.array_equal(seen[0][0], network_input(rgb, official_crop(corners), mirror))
    assert not np.array_equal(seen[0][0], network_input(rgb, official_crop(hand.hand.landmarks), mirror))
    assert hand.mesh_box == box  # the adaptive check refits there (crop_refit_error's box)

    from lib_handrefiner.adaptive import crop_refit_error

    seen.clear()
    crop_refit_error(rgb, hand.hand, hand.mesh.joints[:, :2], graphormer_model, hand.mesh_box)
    assert np.array_equal(seen[0][0], network_input(rgb, official_crop(corners), mirror))


def test_a_detected_hand_has_no_mesh_box(results):
    assert all(h.mesh_box is None for r in results.values() for h in r.hands)
