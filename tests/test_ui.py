"""The editor's Python side: boxes between JSON, table and settings; controls built from HandRefinerArgs."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from lib_handrefiner.settings import HandRefinerArgs
from lib_handrefiner.ui import (
    args_from_controls,
    boxes_json,
    clip_boxes,
    create_blocks,
    editor_html,
    field_control,
    image_signature,
    parse_boxes,
    rows_to_boxes,
)


def test_boxes_are_clipped_ordered_and_rounded():
    assert parse_boxes("[[10, 20, 30.4, 40.6]]", 100, 100) == [(10, 20, 30, 41)]
    assert parse_boxes("[[30, 40, 10, 20]]", 100, 100) == [(10, 20, 30, 40)]          # corners swapped
    assert parse_boxes("[[-5, -5, 150, 60]]", 100, 50) == [(0, 0, 100, 50)]             # clipped to the image
    assert parse_boxes("[[200, 200, 300, 300], [1, 1, 1.2, 9]]", 100, 100) == []         # off the image, too thin
    assert parse_boxes("", 10, 10) == []
    assert parse_boxes("10 20 30 40; 1,2,50,60", 100, 100) == [(10, 20, 30, 40), (1, 2, 50, 60)]  # infotext form
    for bad in ("[[1, 2, 3]]", "{\"a\": 1}", "[[1, 2, 'x', 4]]", "[not json", "1 2 3"):
        with pytest.raises(gr.Error):
            parse_boxes(bad, 100, 100)


def test_table_rows_skip_blank_rows():
    assert rows_to_boxes([[1, 2, 30, 40], ["", "", "", ""], [5, 5, None, 9]], 64, 64) == [(1, 2, 30, 40)]
    assert boxes_json(clip_boxes([[1.4, 2, 30, 40]], 64, 64)) == "[[1, 2, 30, 40]]"


def test_controls_follow_the_settings_model():
    strength = field_control("strength", 0.55)
    assert isinstance(strength, gr.Slider) and (strength.minimum, strength.maximum) == (0.0, 2.0)
    assert strength.label == "Strength"
    mode = field_control("mode", "fixed")
    assert isinstance(mode, gr.Dropdown) and mode.choices == ["fixed", "adaptive"]
    assert isinstance(field_control("crop", True), gr.Checkbox)
    assert isinstance(field_control("seed", -1), gr.Number)
    assert isinstance(field_control("prompt", ""), gr.Textbox)


def test_args_from_controls_converts_slider_floats_and_names_bad_fields():
    args = args_from_controls(HandRefinerArgs(), ["steps", "strength"], [12.0, 0.7], [(1, 2, 3, 4)])
    assert args.steps == 12 and isinstance(args.steps, int) and args.strength == 0.7
    assert args.boxes == [(1, 2, 3, 4)] and args.boxes_mode == "replace"
    with pytest.raises(gr.Error, match="steps"):
        args_from_controls(HandRefinerArgs(), ["steps"], [0])


def test_editor_html_carries_size_and_boxes_field():
    html = editor_html(np.zeros((30, 40, 3), np.uint8), "my_boxes")
    assert 'data-width="40"' in html and 'data-height="30"' in html and 'data-boxes-id="my_boxes"' in html
    assert "data:image/jpeg;base64," in html


def test_standalone_blocks_build(tiny_models):
    from lib_handrefiner.service import StandaloneService

    blocks = create_blocks(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet))
    ids = {block.elem_id for block in blocks.blocks.values()}
    assert {"handrefiner_image", "handrefiner_detect", "handrefiner_boxes", "handrefiner_table",
            "handrefiner_mask_preview", "handrefiner_refine", "handrefiner_setting_controlnet"} <= ids
    controlnet = next(b for b in blocks.blocks.values() if b.elem_id == "handrefiner_setting_controlnet")
    assert controlnet.value == "tiny-controlnet"


def test_serve_app_has_the_api_and_the_page(tiny_models):
    from fastapi.testclient import TestClient

    from lib_handrefiner.cli.serve import TINY_NOTICE, create_app
    from lib_handrefiner.service import StandaloneService

    app = create_app(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet), TINY_NOTICE)
    client = TestClient(app)
    assert client.get("/handrefiner/models").json()["default_controlnet"] == "tiny-controlnet"
    assert client.get("/").status_code == 200
    config = client.get("/config").json()
    assert TINY_NOTICE in json.dumps(config)
    assert ".handrefiner-editor" in config["css"]  # style.css and javascript/handrefiner.js are on the page
    assert any("handRefinerEditor" in (d.get("js") or "") for d in config["dependencies"])


def test_serve_needs_both_weights_or_neither(tmp_path):
    import argparse

    from lib_handrefiner.cli.serve import add_arguments, resolve_models

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--checkpoint", str(tmp_path / "a.safetensors")])
    with pytest.raises(SystemExit, match="both"):
        resolve_models(ns)
    ns = parser.parse_args(["--checkpoint", str(tmp_path / "a.safetensors"), "--controlnet", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="not a file"):
        resolve_models(ns)
    assert parser.parse_args([]).host == "127.0.0.1" and parser.parse_args([]).port == 7861


def test_editor_on_a_pil_image_with_an_existing_boxes_field(tiny_models):
    """The WebUI way: img2img's PIL image, the accordion's boxes textbox (infotext form), converted settings."""
    from PIL import Image

    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.ui import build_editor

    service = StandaloneService(tiny_models.checkpoint, tiny_models.controlnet)
    seen = []
    with gr.Blocks() as blocks:
        image = gr.Image(type="pil")
        padding = gr.Textbox(value="12")  # a widget whose value needs converting
        boxes = gr.Textbox(value="", elem_id="script_boxes")
        editor = build_editor(service, image, [padding], lock=None, prefix="img2img_hr", boxes=boxes,
                              read_settings=lambda values: seen.append(values) or
                              HandRefinerArgs(mask_padding=int(values[0])))
    assert editor.boxes is boxes and editor.image is image
    handler = {(dep["targets"][0], dep["trigger"]): fn.fn for dep, fn in zip(blocks.dependencies, blocks.fns)}
    detect, on_boxes = handler[(editor.detect._id, "click")], handler[(boxes._id, "input")]
    photo = Image.open(Path(__file__).resolve().parents[1] / "examples" / "malformed_1.jpg")
    html, found, rows, mask, depth, hands, note, bound = detect(photo, "12")
    assert 'data-boxes-id="script_boxes"' in html and seen == [("12",)]
    x0, y0, x1, y1 = json.loads(found)[0]
    assert rows["value"][0] == [x0, y0, x1, y1] and rows["visible"] is True
    assert mask[y0:y1, x0:x1].min() == 255 and hands[0]["handedness"] and note == ""
    assert bound == image_signature(np.asarray(photo.convert("RGB")))
    rows, mask, depth, hands, note = on_boxes(photo, f"{x0} {y0} {x1} {y1}; 10 10 60 60", "12")
    assert rows["value"] == [[x0, y0, x1, y1], [10, 10, 60, 60]] and mask[10:60, 10:60].min() == 255 and note == ""
    # No palm in the second box (the sky): the landmark model alone on it still gives the user a hand to refine.
    assert [h["found_by"] for h in hands] == ["palm", "user_box"] and all(h["refinable"] for h in hands)


def test_detect_on_an_image_without_hands_says_how_to_go_on(tiny_models):
    """No hand found: no boxes, the editor shows the image, and the note says to draw a box or lower the threshold
    (the txt2img → img2img button lands here with the tiny model's noise)."""
    from PIL import Image

    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.ui import NO_HAND_NOTE, build_editor

    with gr.Blocks() as blocks:
        image = gr.Image(type="pil")
        editor = build_editor(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet), image,
                              boxes=gr.Textbox(value="", elem_id="script_boxes"))
    handler = {(dep["targets"][0], dep["trigger"]): fn.fn for dep, fn in zip(blocks.dependencies, blocks.fns)}
    blank = Image.new("RGB", (256, 192), (90, 120, 150))
    view, found, rows, _, _, hands, note, _ = handler[(editor.detect._id, "click")](blank)
    assert json.loads(found) == [] and rows["visible"] is False and hands == []
    assert 'data-width="256"' in view and 'data-height="192"' in view
    assert note == NO_HAND_NOTE and note.startswith("⚠ No hand found") and "Drag on the image" in note


def new_image_handler(tiny_models):
    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.ui import build_editor

    with gr.Blocks() as blocks:
        image = gr.Image(type="pil")
        build_editor(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet), image,
                              boxes=gr.Textbox(value="", elem_id="script_boxes"))
    handler = {(dep["targets"][0], dep["trigger"]): fn.fn for dep, fn in zip(blocks.dependencies, blocks.fns)}
    return handler[(image._id, "change")]


def test_a_new_image_drops_the_boxes_that_do_not_fit_it_and_says_so(tiny_models):
    """The issue's case: boxes detected on a 512×512 image, then a 224×224 image uploaded."""
    from PIL import Image

    on_new_image = new_image_handler(tiny_models)
    first = Image.open(Path(__file__).resolve().parents[1] / "examples" / "malformed_1.jpg").convert("RGB")
    small = Image.new("RGB", (224, 224), (90, 120, 150))
    bound = image_signature(np.asarray(first))
    view, boxes, table, mask, depth, hands, note, new_bound = on_new_image(small, "[[312, 127, 512, 358]]", bound)
    assert json.loads(boxes) == [] and table["value"] == [] and table["visible"] is False
    assert mask is None and hands is None and new_bound == image_signature(np.asarray(small))
    assert 'data-width="224"' in view   # the editor shows the new image, ready for a box to be dragged on it
    assert note == "⚠ Removed 1 box(es) that lie outside this 224×224 image."
    # A box that fits the new image stays, with a note, and the editor shows the new image with it.
    view, boxes, table, _, _, _, note, _ = on_new_image(small, "10 10 60 60; 300 10 400 60", bound)
    assert json.loads(boxes) == [[10, 10, 60, 60]] and table["value"] == [[10, 10, 60, 60]]
    assert 'data-width="224"' in view
    assert note.startswith("⚠ Removed 1 box(es) that lie outside this 224×224 image; kept 1 box(es) from the "
                           "previous image")
    # The image the boxes were made on (sent again, or the same upload): nothing changes.
    unchanged = on_new_image(first, "[[312, 127, 512, 358]]", bound)
    assert unchanged[:7] == (gr.update(),) * 7 and unchanged[7] == bound
    # Cleared: the editor and previews go, the boxes wait for the next image.
    view, boxes, table, mask, _, _, note, _ = on_new_image(None, "[[312, 127, 512, 358]]", bound)
    assert view["value"] == "" and boxes == gr.update() and mask is None and note == ""
