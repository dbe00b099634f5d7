"""End-to-end refine with tiny models on the shipped images: determinism, exact pixels outside the mask, sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import EXAMPLES, OFFICIAL_NEGATIVE

from lib_handrefiner.imageio import load_image
from lib_handrefiner.pipeline import (
    CropRegion,
    composite,
    cut,
    format_infotext,
    hand_crop_region,
    refine_image,
    whole_image_region,
)
from lib_handrefiner.settings import HandRefinerArgs, to_infotext

FAST = dict(steps=2, crop_resolution=64, cfg_scale=5.0)


@pytest.fixture(scope="module")
def malformed():
    return load_image(EXAMPLES / "malformed_1.jpg")


@pytest.fixture(scope="module")
def perceived(malformed):
    from lib_handrefiner.perception import perceive

    result = perceive(malformed, HandRefinerArgs())
    assert any(h.refinable for h in result.hands), "the example must have a refinable hand"
    return result


def test_crop_geometry_refines_a_512_image_whole_at_scale_1_and_larger_ones_at_native_scale():
    """The official code inpaints the whole 512² image at scale 1; we used to zoom a 1.5× box crop up to 512
    (1.5–1.9× on the shipped malformed images)."""
    for box in [(100, 10, 180, 130), (300, 200, 480, 420), (0, 0, 512, 512), (282, 124, 512, 365)]:
        r = hand_crop_region(box, 512, 512, 512)
        assert (r.x0, r.y0, r.width, r.height, r.work_width, r.scale) == (0, 0, 512, 512, 512, 1.0), box
    small = hand_crop_region((600, 300, 700, 420), 1024, 1024, 512)  # a small hand in a large image: native
    assert small.width == 512 and small.scale == 1.0 and small.x0 <= 600 and small.x0 + 512 >= 700
    big = hand_crop_region((100, 100, 700, 500), 1024, 1024, 512)    # hand + margin beyond 512: downscaled
    assert big.width == 900 and big.scale == pytest.approx(512 / 900)
    zoom = hand_crop_region((600, 300, 700, 420), 1024, 1024, 512, min_side=256)  # crop_min_side zooms
    assert zoom.width == 256 and zoom.scale == 2.0
    portrait = hand_crop_region((50, 600, 150, 700), 512, 768, 512)  # the shorter side bounds the crop
    assert (portrait.x0, portrait.width) == (0, 512) and portrait.y0 <= 600 and portrait.y0 + 512 >= 700
    tiny_image = hand_crop_region((20, 30, 120, 150), 224, 224, 512)  # smaller than the working size: whole
    assert (tiny_image.x0, tiny_image.y0, tiny_image.width) == (0, 0, 224)
    wide = hand_crop_region((10, 10, 200, 60), 300, 120, 64)  # the box itself is wider than the image is tall
    assert wide.height == 190 and wide.y0 == (120 - 190) // 2 and wide.x0 == 10
    whole = whole_image_region(333, 517, 64)
    assert (whole.work_width, whole.work_height, whole.scale) == (384, 576, 1.0)
    assert hand_crop_region((0, 0, 10, 10), 100, 100, 500, 64).work_width == 512


def test_cut_pads_outside_the_image():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    region = CropRegion(-1, 2, 3, 3, 8, 8)
    edge, zero = cut(img, region, "edge"), cut(img[..., 0], region, "constant")
    assert edge.shape == (3, 3, 3) and (edge[0, 0] == img[2, 0]).all() and (edge[2, 1] == img[3, 0]).all()
    assert zero[0, 0] == 0 and zero[0, 1] == img[2, 0, 0] and zero[2, 2] == 0


def test_composite_keeps_every_unweighted_pixel():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    region = CropRegion(-5, 10, 20, 20, 8, 8)
    refined = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    weight = np.zeros((40, 30), np.float32)
    weight[12:20, 0:8] = 1.0
    weight[20:22, 0:8] = 0.5
    out = composite(original, refined, region, weight)
    assert np.array_equal(out[weight == 0], original[weight == 0])
    assert np.array_equal(out[12:20, 0:8], refined[2:10, 5:13])
    expected = np.rint(original[20:22, 0:8] * 0.5 + refined[10:12, 5:13] * 0.5)
    assert np.array_equal(out[20:22, 0:8], expected.astype(np.uint8))


def test_infotext_line():
    args = HandRefinerArgs(enabled=True, boxes=[(1, 2, 3, 4)], prompt="hand, detailed")
    text = format_infotext(to_infotext(args))
    assert text.startswith("HandRefiner: True, HandRefiner strength: 0.55, HandRefiner mode: fixed")
    assert 'HandRefiner prompt: "hand, detailed"' in text


def test_refine_is_seeded_and_changes_only_the_hand(malformed, perceived, tiny_sd, tiny_controlnet):
    args = HandRefinerArgs(**FAST)
    steps = []
    a = refine_image(malformed, tiny_sd, tiny_controlnet, args, prompt="a hand", seed=5, perception=perceived,
                     progress=lambda done, total: steps.append((done, total)))
    b = refine_image(malformed, tiny_sd, tiny_controlnet, args, prompt="a hand", seed=5, perception=perceived)
    c = refine_image(malformed, tiny_sd, tiny_controlnet, args, prompt="a hand", seed=6, perception=perceived)
    assert a.image.shape == malformed.shape and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    changed = (a.image != malformed).any(-1)
    assert changed.sum() > 1000  # the hand was actually redrawn
    assert not (changed & ~(perceived.mask > 0)).any()
    n = sum(h.refinable for h in perceived.hands)
    assert len(a.hands) == n and a.hands[0].strength == 0.55 and a.hands[0].seed == 5
    assert steps[-1] == (2 * n, 2 * n)
    assert a.unet_calls == 2 * n   # one UNet call (both CFG branches in one batch) per step and hand
    assert a.infotext.startswith("HandRefiner: True, HandRefiner strength: 0.55")
    assert "HandRefiner seed: 5" in a.infotext
    # the refined hands' boxes, for txt2img's "Send … and edit its hand boxes" (a result entry, not a setting)
    boxes = ";".join(" ".join(str(v) for v in h.box) for h in a.hands)
    assert f"HandRefiner hand boxes: {boxes}," in a.infotext or a.infotext.endswith(f"HandRefiner hand boxes: {boxes}")
    assert {"sample", "composite", "total"} <= set(a.timings_ms)


def test_all_zero_mask_and_no_hands_leave_the_image_unchanged(malformed, perceived, tiny_sd, tiny_controlnet):
    args = HandRefinerArgs(**FAST)
    empty_mask = dataclasses.replace(perceived, mask=np.zeros_like(perceived.mask))
    r = refine_image(malformed, tiny_sd, tiny_controlnet, args, seed=1, perception=empty_mask)
    assert np.array_equal(r.image, malformed) and r.hands == [] and "empty" in r.message
    none = dataclasses.replace(perceived, hands=[])
    r = refine_image(malformed, tiny_sd, tiny_controlnet, args, seed=1, perception=none)
    assert np.array_equal(r.image, malformed) and "no hands" in r.message


def test_regular_4_channel_checkpoint_and_whole_image_mode(tiny_sd_regular, tiny_controlnet):
    from lib_handrefiner.perception import perceive

    image = load_image(EXAMPLES / "freihand_sample1.jpg")  # 224², small enough to refine whole
    perception = perceive(image, HandRefinerArgs())
    args = HandRefinerArgs(crop=False, **FAST)
    r = refine_image(image, tiny_sd_regular, tiny_controlnet, args, seed=2, perception=perception)
    changed = (r.image != image).any(-1)
    assert changed.sum() > 500 and not (changed & ~(perception.mask > 0)).any()
    assert r.hands[0].crop == (0, 0, 224, 224)


@pytest.mark.parametrize("size", [(301, 229), (1152, 768)])
def test_any_size_and_aspect(size, tiny_sd, tiny_controlnet):
    """Sizes not divisible by 8 and portrait aspects: the hand image placed on an edge-extended canvas."""
    hand = load_image(EXAMPLES / "freihand_sample1.jpg")
    h, w = size
    canvas = np.pad(hand, [(0, h - hand.shape[0]), (w - hand.shape[1], 0), (0, 0)], mode="edge")
    for crop in (True, False) if h < 500 else (True,):
        args = HandRefinerArgs(crop=crop, **FAST)
        r = refine_image(canvas, tiny_sd, tiny_controlnet, args, seed=3)
        assert r.image.shape == canvas.shape
        assert r.hands, r.message
        changed = (r.image != canvas).any(-1)
        assert changed.any() and not (changed & ~(r.perception.mask > 0)).any()


def test_adaptive_mode_batches_strengths(malformed, perceived, tiny_sd, tiny_controlnet):
    args = HandRefinerArgs(mode="adaptive", adaptive_strengths=[0.4, 0.7], **FAST)
    r = refine_image(malformed, tiny_sd, tiny_controlnet, args, seed=4, perception=perceived)
    hand = r.hands[0]
    assert hand.tried and hand.tried[0][0] == 1.0  # the reference first
    assert hand.strength in (1.0, 0.4, 0.7)
    fixed = refine_image(malformed, tiny_sd, tiny_controlnet,
                         HandRefinerArgs(strength=hand.strength, **FAST), seed=4, perception=perceived)
    # The chosen sample is the one a fixed run at that strength gives (same noise; batching aside).
    assert np.abs(r.image.astype(int) - fixed.image.astype(int)).max() <= 2
    # Three strengths per batch: the same strengths tried in the same order, the same one kept.
    calls = []
    wide = refine_image(malformed, tiny_sd, tiny_controlnet, args.copy(update={"adaptive_batch": 3}), seed=4,
                        perception=perceived, progress=lambda done, total: calls.append(total))
    assert [s for s, _ in wide.hands[0].tried] == [s for s, _ in hand.tried]
    assert wide.hands[0].strength == hand.strength
    assert calls[-1] == FAST["steps"]  # reference + 2 strengths in one pass of `steps` steps


def test_should_stop_interrupts_and_keeps_the_image(malformed, perceived, tiny_sd, tiny_controlnet):
    r = refine_image(malformed, tiny_sd, tiny_controlnet, HandRefinerArgs(**FAST), seed=1, perception=perceived,
                     should_stop=lambda: True)
    assert np.array_equal(r.image, malformed) and r.message.startswith("interrupted")


def test_two_hands_one_after_another_or_together(malformed, tiny_sd, tiny_controlnet):
    from lib_handrefiner.perception import perceive

    pair = np.ascontiguousarray(np.concatenate([malformed, malformed[:, ::-1]], axis=1))  # 1024x512, two hands
    perception = perceive(pair, HandRefinerArgs())
    n = sum(h.refinable for h in perception.hands)
    assert n == 2
    one_by_one = refine_image(pair, tiny_sd, tiny_controlnet, HandRefinerArgs(**FAST), seed=9, perception=perception)
    assert [h.seed for h in one_by_one.hands] == [9, 10] and one_by_one.hands[0].crop != one_by_one.hands[1].crop
    together = refine_image(pair, tiny_sd, tiny_controlnet, HandRefinerArgs(hands_together=True, **FAST), seed=9,
                            perception=perception)
    assert len(together.hands) == 2 and together.hands[0].crop == together.hands[1].crop
    x0, y0, x1, y1 = together.hands[0].crop
    assert all(x0 <= h.box[0] and h.box[2] <= x1 and y0 <= h.box[1] and h.box[3] <= y1 for h in together.hands)
    for r in (one_by_one, together):
        changed = (r.image != pair).any(-1)
        assert not (changed & ~(perception.mask > 0)).any()
    with pytest.raises(ValueError, match="perceive on this image"):
        refine_image(malformed, tiny_sd, tiny_controlnet, HandRefinerArgs(**FAST), perception=perception)


def test_nothing_to_refine_says_why_but_a_users_box_always_refines(tiny_sd, tiny_controlnet):
    # Issue 19: a box the user drew gets a hand even where no detector sees one (the landmark model alone on the
    # box), so it is refined, never "nothing to refine"; only inside the mask.
    grey = np.full((128, 128, 3), 128, np.uint8)
    boxed = refine_image(grey, tiny_sd, tiny_controlnet, HandRefinerArgs(boxes=[(10, 10, 60, 60)], **FAST), seed=1)
    (perceived,) = boxed.perception.hands
    assert perceived.found_by == "user_box" and perceived.refinable and "nothing to refine" not in boxed.message
    changed = np.any(boxed.image != grey, axis=2)
    assert changed[10:60, 10:60].any() and not (changed & ~(boxed.perception.mask > 0)).any()
    hand = load_image(EXAMPLES / "freihand_sample1.jpg")
    small = refine_image(hand, tiny_sd, tiny_controlnet, HandRefinerArgs(min_hand_size=4000, **FAST), seed=1)
    assert np.array_equal(small.image, hand) and "smaller than min_hand_size (4000px)" in small.message


def test_without_a_negative_prompt_the_official_one_is_used(malformed, perceived, tiny_sd, tiny_controlnet,
                                                            sampled_negatives):
    """We sampled with "fake 3D rendered image" alone where no negative was given; the official code uses its
    whole negative prompt (handrefiner.py's n_prompt, less its trailing "blue": see the README)."""
    args = HandRefinerArgs(**FAST)
    result = refine_image(malformed, tiny_sd, tiny_controlnet, args, seed=1, perception=perceived)
    assert sampled_negatives == [OFFICIAL_NEGATIVE] and result.negative_prompt == OFFICIAL_NEGATIVE[24:]
    # A job's negative (the WebUI's, even an empty one) is kept; the setting overrides both.
    refine_image(malformed, tiny_sd, tiny_controlnet, args, negative_prompt="", seed=1, perception=perceived)
    refine_image(malformed, tiny_sd, tiny_controlnet, args, negative_prompt="blurry", seed=1, perception=perceived)
    refine_image(malformed, tiny_sd, tiny_controlnet, args.copy(update={"negative_prompt": "cartoon"}),
                 negative_prompt="blurry", seed=1, perception=perceived)
    assert sampled_negatives[1:] == ["fake 3D rendered image", "fake 3D rendered image, blurry",
                                     "fake 3D rendered image, cartoon"]


def test_a_512_image_is_refined_whole_at_scale_1_as_the_official_code_does(malformed, perceived, tiny_sd,
                                                                          tiny_controlnet, monkeypatch):
    """What the networks see for a 512² image: the whole image, its mask and its depth map, unresized (we used to
    zoom a crop around the hand 1.5–1.9× on the shipped images)."""
    import torch

    from lib_handrefiner import pipeline

    requests, real = [], pipeline.sample_inpaint
    monkeypatch.setattr(pipeline, "sample_inpaint",
                        lambda sd, cn, request, *a, **k: (requests.append(request), real(sd, cn, request, *a, **k))[1])
    assert malformed.shape[:2] == (512, 512)
    result = refine_image(malformed, tiny_sd, tiny_controlnet, HandRefinerArgs(steps=1, cfg_scale=5.0), seed=1,
                          perception=perceived)
    (request,) = requests
    assert torch.equal(request.image, pipeline.to_tensor(malformed))
    assert torch.equal(request.mask[0, 0] > 0, torch.from_numpy(perceived.mask > 0))
    assert np.array_equal((request.hint[0, 0] * 255).round().to(torch.uint8).numpy(), perceived.depth)
    (hand,) = result.hands
    assert hand.crop == (0, 0, 512, 512) and hand.crop_scale == 1.0
