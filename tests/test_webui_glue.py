"""The WebUI glue (scripts/handrefiner.py + lib_handrefiner/webui/) against the stand-in for the WebUI's
`modules` (tests/webui_stub), with the tiny checkpoint in the shape of the WebUI's `shared.sd_model`."""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import EXAMPLES, OFFICIAL_NEGATIVE, ROOT, strict_loads, webui_stand_in
from pickles import tiny_lightning_checkpoint
from PIL import Image

from lib_handrefiner import webui
from lib_handrefiner.imageio import load_image
from lib_handrefiner.settings import HandRefinerArgs, field_names, to_infotext

CONTROLNET_NAME = HandRefinerArgs().controlnet
FAST = dict(steps=2, crop_resolution=64, cfg_scale=5.0)


@pytest.fixture(scope="module")
def wui(tiny_models, tiny_sd, tmp_path_factory):
    """The stand-in `modules`, a models folder holding the tiny ControlNet/checkpoint, and the loaded script."""
    root = tmp_path_factory.mktemp("webui")
    os.environ["HANDREFINER_STUB_WEBUI_DIR"] = str(root)
    (root / "models" / "ControlNet").mkdir(parents=True)
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    os.link(tiny_models.controlnet, root / "models" / "ControlNet" / f"{CONTROLNET_NAME}.safetensors")
    for src in (tiny_models.checkpoint, tiny_models.config):
        os.link(src, root / "models" / "Stable-diffusion" / src.name)
    (root / "models" / "Stable-diffusion" / "clip-tiny").symlink_to(tiny_models.checkpoint.parent / "clip-tiny")
    try:
        with webui_stand_in():
            from latent_diffusion import TinyLatentDiffusion
            from modules import scripts, shared

            shared.sd_model = TinyLatentDiffusion(tiny_sd)
            spec = importlib.util.spec_from_file_location("handrefiner.py", ROOT / "scripts" / "handrefiner.py")
            module = importlib.util.module_from_spec(spec)
            scripts.current_basedir = str(ROOT)
            spec.loader.exec_module(module)
            yield module
    finally:
        os.environ.pop("HANDREFINER_STUB_WEBUI_DIR", None)


@pytest.fixture()
def script(wui):
    from modules import shared

    shared.state.begin("test")
    shared.state.job_count = 1
    s = wui.HandRefinerScript()
    s.is_img2img, s.tabname = False, "txt2img"   # as the WebUI sets them before ui()
    return s


@pytest.fixture(scope="module")
def malformed():
    return load_image(EXAMPLES / "malformed_1.jpg")


def make_p(prompt="a man making a hand gesture", seed=1234, outpath=None):
    from modules.processing import StableDiffusionProcessing

    p = StableDiffusionProcessing(prompt=prompt, negative_prompt="blurry", seed=seed, outpath_samples=outpath)
    p.all_prompts, p.all_negative_prompts, p.all_seeds = [prompt], ["blurry"], [seed]
    p.prompts, p.negative_prompts, p.seeds = [prompt], ["blurry"], [seed]
    return p


def ui_values(script, **changes):
    with gr.Blocks():
        controls = script.ui(False)
    values = [c.value for c in controls]
    names = field_names()
    for name, value in changes.items():
        values[names.index(name)] = webui.to_widget(name, value)
    return controls, values


def run(script, image, values, p=None):
    """The image through the WebUI's per-image steps (the stand-in's processing.finish_image) with the script as
    the one always-on script; returns p and the final image (as .image)."""
    from modules import processing, scripts
    from modules.scripts import PostprocessImageArgs

    p = p or make_p()
    script.args_from, script.args_to = 0, len(values)
    p.scripts, p.script_args = scripts.ScriptRunner([script]), list(values)
    errors = len(scripts.errors)
    final = processing.finish_image(p, Image.fromarray(image))
    assert scripts.errors[errors:] == []
    return p, PostprocessImageArgs(final)


def run_with_unet_hook(script, image, values, hook):
    """run() with `hook(n)` called before the n-th UNet call (1, 2, …) of the WebUI's model; also returns n."""
    from modules import shared

    model, calls = shared.sd_model, []

    def apply_model(*args, **kwargs):
        calls.append(1)
        hook(len(calls))
        return model.apply_model(*args, **kwargs)

    shared.sd_model = copy.copy(model)
    shared.sd_model.apply_model = apply_model
    try:
        return (*run(script, image, values), len(calls))
    finally:
        shared.sd_model = model


# ---- UI, args, settings -----------------------------------------------------------------------------------

def test_ui_has_one_component_per_field_in_order_and_defaults_map_back(script):
    from modules.ui_components import InputAccordion

    controls, values = ui_values(script)
    assert len(controls) == len(field_names()) == len(script.infotext_fields)
    assert isinstance(controls[0], InputAccordion)
    assert sorted(webui.layout_fields()) == sorted(field_names()[1:])
    assert [target for _, target in script.infotext_fields] == webui.paste_field_names()  # in field order
    assert webui.args_from_script_args(values) == HandRefinerArgs()
    by_name = dict(zip(field_names(), controls))
    assert CONTROLNET_NAME in [c[0] if isinstance(c, tuple) else c for c in by_name["controlnet"].choices]
    checkpoints = [c[0] if isinstance(c, tuple) else c for c in by_name["inpaint_checkpoint"].choices]
    assert checkpoints[0] == webui.CURRENT_MODEL and "tiny-inpaint" in checkpoints
    assert by_name["strength"].value == 0.55 and by_name["extra_negative"].value == "fake 3D rendered image"
    assert len({c.elem_id for c in controls[1:]}) == len(controls) - 1  # unique element ids
    assert "HandRefiner strength" in script.paste_field_names


def test_img2img_accordion_opens_with_the_box_editor_reading_every_setting(script):
    """img2img: "Edit hand boxes" is the accordion's first group, with the editor on img2img's input image; Detect
    reads every widget (the settings below it included); a new image in img2img clears stale boxes."""
    script.is_img2img, script.tabname = True, "img2img"
    try:
        with gr.Blocks() as blocks:
            script.init_image = gr.Image(type="pil", elem_id="img2img_image")
            controls = script.ui(True)
    finally:
        script.is_img2img, script.tabname, script.init_image = False, "txt2img", None
    ids = [b.elem_id for b in blocks.blocks.values() if getattr(b, "elem_id", None)]
    editor_group = ids.index("script_img2img_handrefiner_edit_hand_boxes")
    assert editor_group < ids.index("script_img2img_handrefiner_strength")
    assert editor_group < ids.index("script_img2img_handrefiner_editor_detect")
    by_id = {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}
    triggers = {(blocks.blocks[d["targets"][0]].elem_id, d["trigger"]): d for d in blocks.dependencies}
    detect = triggers[("script_img2img_handrefiner_editor_detect", "click")]
    assert detect["inputs"][1:] == [c._id for c in controls]
    assert ("img2img_image", "change") in triggers
    hints = by_id["script_img2img_handrefiner_hints"].value
    assert "script_img2img_handrefiner_mesh_model" in hints and "landmarks" in hints


def test_the_accordion_shows_the_main_settings_and_groups_the_rest():
    """Visible at once: strength, mode, the hands' prompts, ControlNet and checkpoint; everything else in collapsed
    groups. In img2img the hand boxes (with the editor) come first; every field is placed once in either tab."""
    from lib_handrefiner import settings
    from lib_handrefiner.webui import accordion

    for img2img in (False, True):
        layout = webui.layout(img2img=img2img)
        visible = [n for group, names in layout if not group.startswith("accordion:") for n in names]
        assert visible == ["strength", "mode", "prompt", "negative_prompt", "controlnet", "inpaint_checkpoint"]
        assert sorted(webui.layout_fields(img2img)) == sorted(field_names()[1:])
        groups = [group for group, _ in layout]
        assert (groups[0] == settings.EDITOR_GROUP) == img2img
        assert (settings.BOXES_GROUP in groups) == (not img2img)
        assert dict(layout)[groups[0] if img2img else settings.BOXES_GROUP] == ["boxes", "boxes_mode"]
    assert accordion.hover_text("mode").startswith("fixed: use strength; adaptive:")
    assert all("`" not in accordion.hover_text(n) and "\n" not in accordion.hover_text(n)
               for n in field_names())


def test_the_recycle_button_reuses_the_hand_seed_of_the_selected_image(wui):
    import json

    from modules.infotext_utils import parse_generation_parameters

    from lib_handrefiner.webui.accordion import reused_seed

    info = json.dumps({"infotexts": ["a hand\nSteps: 2, Seed: 11, HandRefiner: True",
                                     "a hand\nSteps: 2, Seed: 12, HandRefiner: True, HandRefiner seed: 99"]})
    assert reused_seed(info, 0, parse_generation_parameters) == 11    # -1 refined with the image's seed
    assert reused_seed(info, 1, parse_generation_parameters) == 99
    assert reused_seed(info, -1, parse_generation_parameters) == 11   # nothing selected: the first image
    assert reused_seed("", 0, parse_generation_parameters) == -1
    assert reused_seed("not json", 0, parse_generation_parameters) == -1


def test_widget_values_and_api_values_map_to_the_fields():
    args = webui.args_from_script_args([True, 0.7, "adaptive", "0.3, 0.6", None, None, "hands", "", "x", "landmarks",
                                        CONTROLNET_NAME, webui.CURRENT_MODEL, 12.0])
    assert (args.enabled, args.strength, args.mode, args.adaptive_strengths, args.steps) == (True, 0.7, "adaptive",
                                                                                             [0.3, 0.6], 12)
    assert args.inpaint_checkpoint == "" and args.prompt == "hands" and args.extra_negative == "x"
    # the API pads args after a dict with the widgets' defaults: the dict wins
    assert webui.args_from_script_args([{"enabled": True, "strength": 0.4}, 0.9, "fixed"]).strength == 0.4
    assert webui.parse_boxes("[[1, 2, 30, 40]]") == webui.parse_boxes("1 2 30 40") == [(1.0, 2.0, 30.0, 40.0)]
    with pytest.raises(ValueError) as unknown:
        webui.args_from_script_args([{"strenght": 0.4}])
    assert webui.describe_error(unknown.value) == "unknown setting 'strenght'; did you mean 'strength'?"
    with pytest.raises(ValueError, match="at most"):
        webui.args_from_script_args([None] * 40)


def test_settings_section_holds_the_defaults(wui, script):
    from modules import script_callbacks, shared

    script_callbacks.ui_settings_callback()
    info = shared.opts.data_labels["handrefiner_strength"]
    assert info.default == 0.55 and info.section == webui.SETTINGS_SECTION
    assert shared.opts.data_labels["handrefiner_mode"].component_args == {"choices": ["fixed", "adaptive"]}
    assert webui.KEEP_LOADED_SETTING in shared.opts.data_labels
    shared.opts.handrefiner_strength = 0.7
    shared.opts.handrefiner_steps = 12.0   # sliders store floats
    try:
        controls, values = ui_values(script)
        assert webui.args_from_script_args(values) == HandRefinerArgs(strength=0.7, steps=12)
        assert webui.defaults_from_opts(shared.opts).strength == 0.7
    finally:
        shared.opts.handrefiner_strength = 0.55
        shared.opts.handrefiner_steps = 30


def test_settings_defaults_reach_the_widgets_over_a_saved_ui_config(wui, script):
    """ui-config.json records every widget's value at the first start and sets it back on later starts; the
    widgets whose defaults Settings → HandRefiner holds are left out of it, so a changed setting shows."""
    from modules import script_callbacks, shared
    from modules.ui_loadsave import UiLoadsave

    script_callbacks.ui_settings_callback()

    def start(loadsave):
        with gr.Blocks() as block:
            controls = script.ui(False)
        loadsave.add_block(block, "txt2img")
        return dict(zip(field_names(), controls))

    loadsave = UiLoadsave()
    first = start(loadsave)
    assert loadsave.ui_settings["txt2img/Prompt/value"] == ""
    assert not any(k.endswith(("/Strength/value", "/Steps/value")) for k in loadsave.ui_settings)
    loadsave.ui_settings["txt2img/Prompt/value"] = "a saved prompt"
    shared.opts.handrefiner_strength, shared.opts.handrefiner_steps = 0.7, 12
    try:
        second = start(loadsave)
    finally:
        shared.opts.handrefiner_strength, shared.opts.handrefiner_steps = 0.55, 30
    assert (second["strength"].value, second["steps"].value) == (0.7, 12)
    assert second["prompt"].value == "a saved prompt"   # the others keep the WebUI's usual behaviour
    # labels keep their capitals
    assert (first["controlnet"].label, first["cfg_scale"].label, first["adaptive_strengths"].label) == (
        "ControlNet", "CFG scale", "Adaptive strengths")


def test_preload_adds_the_models_dir_option(tmp_path):
    spec = importlib.util.spec_from_file_location("preload_handrefiner", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    assert parser.parse_args(["--handrefiner-models-dir", "/m"]).handrefiner_models_dir == "/m"
    assert parser.parse_args([]).handrefiner_models_dir is None
    folders = webui.model_folders("/w/models", "/m", controlnet_dir="/cn", extensions_dir=tmp_path)
    # sd-webui-controlnet's own models folder only when that extension is installed
    assert folders.controlnet_dirs == [Path("/m"), Path("/w/models/handrefiner"), Path("/w/models/ControlNet"),
                                       Path("/cn")]
    (tmp_path / "sd-webui-controlnet").mkdir()
    folders = webui.model_folders("/w/models", "/m", controlnet_dir="/cn", extensions_dir=tmp_path)
    assert folders.controlnet_dirs[-1] == tmp_path / "sd-webui-controlnet" / "models"
    assert folders.mesh_dirs == [Path("/m"), Path("/w/models/handrefiner")]
    assert folders.checkpoint_dirs[0] == Path("/w/models/Stable-diffusion")


# ---- postprocess_image -----------------------------------------------------------------------------------

def test_refines_only_the_hand_with_the_webui_model_and_writes_infotext(wui, script, malformed, tiny_sd,
                                                                        tiny_controlnet, tmp_path):
    from modules import images, shared
    from modules.processing import Processed

    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import refine_image

    _, values = ui_values(script, enabled=True, save_depth=True, save_mask=True, **FAST)
    from modules import devices

    job_no, job_count, gc_calls = shared.state.job_no, shared.state.job_count, devices.gc_calls
    p, pp = run(script, malformed, values, make_p(outpath=str(tmp_path)))
    assert devices.gc_calls > gc_calls  # memory released after the image
    out = np.asarray(pp.image)
    changed = (out != malformed).any(-1)
    args = HandRefinerArgs(enabled=True, save_depth=True, save_mask=True, **FAST)
    perception = perceive(malformed, args)
    assert changed.sum() > 1000
    assert not (changed & ~(perception.mask > 0)).any()  # the mask bounds every change (the feather is inward)

    # the same pipeline as the standalone command: same pixels from the plain SD model with the job's seed
    direct = refine_image(malformed, tiny_sd, tiny_controlnet, args, prompt="a man making a hand gesture",
                          negative_prompt="blurry", seed=1234)
    assert np.abs(direct.image.astype(int) - out.astype(int)).max() <= 1

    params = p.extra_generation_params
    assert params["HandRefiner"] == "True" and params["HandRefiner strength"] == "0.55"
    assert params["HandRefiner steps"] == 2 and params[webui.RESULT_KEY].startswith("refined 1 ")
    # the refined hand's box (the mask box), which txt2img's send button puts in img2img's editor
    assert params["HandRefiner hand boxes"] == " ".join(str(int(v)) for v in perception.hands[0].box)
    assert any("HandRefiner: refined" in c for c in p.comments)
    # progress: one more job, its steps counted
    assert shared.state.job_count == job_count + 1 and shared.state.job_no == job_no + 1
    assert shared.state.sampling_steps == 2
    # previews: saved beside the image and appended to the job's output
    assert [Path(f).name.split("-", 1)[1] for f in images.saved[-3:]] == ["1234-handrefiner-depth.png",
                                                                        "1234-handrefiner-mask.png", "1234.png"]
    # the infotext is made after the script ran: it has the HandRefiner keys
    assert "HandRefiner result: refined" in pp.image.info["parameters"]
    processed = Processed(p, [pp.image], infotexts=["info"])
    script.postprocess(p, processed)
    assert len(processed.images) == 3 and processed.infotexts == ["info"] * 3
    assert np.array_equal(np.asarray(processed.images[2])[..., 0], perception.mask)
    shown = np.asarray(processed.images[2])[..., 0]  # the mask preview: where it is 0, the generated image's bytes
    assert np.array_equal(np.asarray(processed.images[0])[shown == 0], malformed[shown == 0])


def test_img2img_hand_fix_outside_the_inpaint_mask_survives_the_overlay(wui, script, malformed):
    """img2img with an inpaint mask away from the hand: the WebUI pastes the original back over everything outside
    the mask. HandRefiner runs after that paste, so its fix is in the final image."""
    from lib_handrefiner.perception import perceive

    _, values = ui_values(script, enabled=True, **FAST)
    p = make_p()
    p.init_images = [Image.fromarray(malformed)]
    overlay = Image.fromarray(malformed).convert("RGBA")
    alpha = np.full(malformed.shape[:2], 255, np.uint8)
    alpha[:16, :16] = 0   # the user's inpaint mask: a corner far from the hand
    overlay.putalpha(Image.fromarray(alpha))
    p.overlay_images = [overlay]
    p, pp = run(script, malformed, values, p)
    hand = perceive(malformed, HandRefinerArgs(**FAST)).mask > 0
    assert hand.sum() > 1000 and not hand[:16, :16].any()
    changed = (np.asarray(pp.image) != malformed).any(-1)
    assert changed[hand].sum() > 0.5 * hand.sum()
    assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")


@pytest.mark.parametrize("api_args", [[True], [{"enabled": True}]])
def test_the_handrefiner_controlnet_under_another_name_is_the_default(wui, script, malformed, api_args):
    """Only a ControlNet named other than the configured default on disk: the dropdown shows it, and API args that
    name no ControlNet use it (as /handrefiner/refine does)."""
    from modules import shared

    folder = Path(shared.models_path) / "ControlNet"
    configured, other = folder / f"{CONTROLNET_NAME}.safetensors", folder / "my_hand_controlnet.safetensors"
    os.rename(configured, other)
    saved = dict(shared.opts.data)
    shared.opts.data.update(handrefiner_steps=2, handrefiner_crop_resolution=64, handrefiner_cfg_scale=5.0)
    try:
        controls, values = ui_values(script)
        by_name = dict(zip(field_names(), controls))
        assert by_name["controlnet"].value == "my_hand_controlnet"
        assert CONTROLNET_NAME not in [c[0] if isinstance(c, tuple) else c for c in by_name["controlnet"].choices]
        p, pp = run(script, malformed, api_args)
        assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")
        assert p.extra_generation_params["HandRefiner ControlNet"] == "my_hand_controlnet"
        # a name the user gives is still checked
        p, pp = run(script, malformed, [{"enabled": True, "controlnet": CONTROLNET_NAME}])
        assert "not an available" in p.extra_generation_params[webui.RESULT_KEY]
        # pasting an infotext made with the default ControlNet (no key for it) picks the one on disk too
        from modules.infotext_utils import paste_values

        pasted = paste_values(script.infotext_fields, "a prompt\nHandRefiner: True, HandRefiner strength: 0.6")
        assert webui.args_from_script_args(pasted).controlnet == "my_hand_controlnet"
        pasted = paste_values(script.infotext_fields, "x\nHandRefiner: True, HandRefiner ControlNet: other_cn")
        assert webui.args_from_script_args(pasted).controlnet == "other_cn"  # a named one is kept as written
    finally:
        os.rename(other, configured)
        shared.opts.data.clear()
        shared.opts.data.update(saved)


def test_no_previews_for_an_image_without_hands(wui, script, tmp_path):
    from modules import images
    from modules.processing import Processed

    plain = np.full((128, 128, 3), 200, np.uint8)
    _, values = ui_values(script, enabled=True, save_depth=True, save_mask=True, **FAST)
    saved = len(images.saved)
    p, pp = run(script, plain, values, make_p(outpath=str(tmp_path)))
    assert "no hands found" in p.extra_generation_params[webui.RESULT_KEY]
    assert [Path(f).name for f in images.saved[saved:]] == ["%05d-1234.png" % saved]   # the image only
    processed = Processed(p, [pp.image], infotexts=["info"])
    script.postprocess(p, processed)
    assert len(processed.images) == 1


def test_disabled_does_nothing(script, malformed):
    _, values = ui_values(script)
    p, pp = run(script, malformed, values)
    assert np.array_equal(np.asarray(pp.image), malformed) and p.extra_generation_params == {}


@pytest.mark.parametrize("problem", ["missing controlnet", "bad value", "no hands", "out of memory",
                                     "mediapipe and protobuf"])
def test_failures_keep_the_image_and_say_why(wui, script, malformed, problem, monkeypatch):
    from modules import shared

    image = malformed if problem != "no hands" else np.full((128, 128, 3), 200, np.uint8)
    changes = dict(enabled=True, **FAST)
    if problem == "missing controlnet":
        changes["controlnet"] = "no_such_controlnet"
    _, values = ui_values(script, **changes)
    if problem == "bad value":
        values[field_names().index("steps")] = 1000
    model = shared.sd_model
    if problem == "out of memory":
        shared.sd_model = copy.copy(model)

        def out_of_memory(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        shared.sd_model.apply_model = out_of_memory
    if problem == "mediapipe and protobuf":
        from test_detection import GRAPH_INIT_FAILURE, failing_graph

        failing_graph(monkeypatch, GRAPH_INIT_FAILURE)
        values[field_names().index("detection_confidence")] = 0.34   # not a cached graph
    try:
        p, pp = run(script, image, values)
    finally:
        shared.sd_model = model
    assert np.array_equal(np.asarray(pp.image), image)
    result = p.extra_generation_params[webui.RESULT_KEY]
    expected = {"missing controlnet": "no_such_controlnet", "bad value": "steps", "no hands": "no hands found",
                "out of memory": "out of GPU memory", "mediapipe and protobuf": "cannot run with protobuf"}[problem]
    assert expected in result
    assert any(expected in c for c in p.comments)
    # where to put the ControlNet: said for a missing one, never for a path
    assert ("Put the HandRefiner ControlNet" in result) == (problem == "missing controlnet")


def test_a_controlnet_path_is_refused_without_the_where_to_put_it_hint(wui, script, malformed):
    p, pp = run(script, malformed, [{"enabled": True, "controlnet": "../../secret/cn", **FAST}])
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert "is a path; give a model name" in result and "Put the HandRefiner" not in result
    assert np.array_equal(np.asarray(pp.image), malformed)


@pytest.mark.parametrize("request_name", ["interrupt", "skip", "stop_generating"])
def test_interrupt_skip_and_stop_generating_stop_between_steps_and_keep_the_image(wui, script, malformed,
                                                                                   request_name):
    """Each of the WebUI's three requests, made while HandRefiner samples (after its first step), ends the pass
    before the next step; the image is the one the job made."""
    from modules import shared

    _, values = ui_values(script, enabled=True, **dict(FAST, steps=4))

    def request(call):
        if call == 1:
            getattr(shared.state, request_name)()

    p, pp, calls = run_with_unet_hook(script, malformed, values, request)
    assert calls == 1   # one step of four, then stopped
    assert np.array_equal(np.asarray(pp.image), malformed)
    assert p.extra_generation_params[webui.RESULT_KEY].startswith("interrupted")


@pytest.mark.parametrize("setting", ["auto_vae_precision", "auto_vae_precision_bfloat16", "off"])
def test_a_vae_that_makes_nans_in_half_precision_is_upcast_as_the_webui_does(wui, script, malformed, tiny_sd,
                                                                             setting):
    """A float16 VAE decoding to NaNs would composite a black hand: the VAE is converted as the WebUI's settings
    say (float32 by default, bfloat16 when that setting is on; devices.dtype_vae follows) and decodes again; with
    both settings off the image is kept and the result says how to fix it."""
    from latent_diffusion import TinyLatentDiffusion
    from modules import devices, shared

    _, values = ui_values(script, enabled=True, **FAST)
    _, reference = run(script, malformed, values)
    model, saved = shared.sd_model, dict(shared.opts.data)
    shared.sd_model = half = TinyLatentDiffusion(copy.deepcopy(tiny_sd))
    half.first_stage_model.half()
    devices.dtype_vae = torch.float16
    shared.opts.auto_vae_precision_bfloat16 = setting == "auto_vae_precision_bfloat16"
    shared.opts.auto_vae_precision = setting != "off"
    try:
        p, pp = run(script, malformed, values)
        dtype_vae = devices.dtype_vae
    finally:
        shared.sd_model, devices.dtype_vae = model, torch.float32
        shared.opts.data.clear()
        shared.opts.data.update(saved)
    result = p.extra_generation_params[webui.RESULT_KEY]
    if setting == "off":
        assert "NaNs" in result and "--no-half-vae" in result
        assert np.array_equal(np.asarray(pp.image), malformed)
        return
    expected = torch.float32 if setting == "auto_vae_precision" else torch.bfloat16
    assert dtype_vae == expected and next(half.first_stage_model.parameters()).dtype == expected
    assert result.startswith("refined 1 ")
    out, ref = np.asarray(pp.image).astype(int), np.asarray(reference.image).astype(int)
    # the hand decoded as in float32, not black (the encode ran in float16 before the decode's NaNs; bfloat16
    # rounds more)
    tolerance = 4 if expected == torch.float32 else 48
    assert np.abs(out - ref).max() <= tolerance and np.abs(out - ref).mean() < 0.5 and (out != malformed).any()


def test_reentry_is_refused(wui, script, malformed):
    """A pass that reaches the script again (as an inner processing pass would) must not refine recursively."""
    from modules.scripts import PostprocessImageArgs

    _, values = ui_values(script, enabled=True, **FAST)
    inner = []

    def reenter(call):
        if call == 1:
            p2, pp2 = make_p(), PostprocessImageArgs(Image.fromarray(malformed))
            script.postprocess_image_after_composite(p2, pp2, *values)
            inner.append((p2, pp2))

    p, pp, _ = run_with_unet_hook(script, malformed, values, reenter)
    (p2, pp2), = inner
    assert "re-entry" in p2.extra_generation_params[webui.RESULT_KEY]
    assert np.array_equal(np.asarray(pp2.image), malformed)
    assert not np.array_equal(np.asarray(pp.image), malformed)


@pytest.mark.parametrize("sampler", ["DDIM (HandRefiner)", "Euler a"])
def test_controlnet_extension_forward_is_set_aside_during_the_pass(wui, script, malformed, sampler):
    """sd-webui-controlnet replaces unet.forward for the whole job; HandRefiner's pass (either engine) runs the
    original and puts the replacement back afterwards."""
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    calls = []

    def extension_forward(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the other extension's control ran inside HandRefiner's pass")

    unet._original_forward = unet.forward
    unet.forward = extension_forward
    try:
        _, values = ui_values(script, enabled=True, sampler=sampler, **FAST)
        p, pp = run(script, malformed, values)
        assert unet.forward is extension_forward and not calls
        assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined")
    finally:
        del unet.forward
        del unet._original_forward


# ---- infotext paste, XYZ grid, API -------------------------------------------------------------------------

def test_infotext_comes_back_into_the_widgets(wui, script):
    from modules.infotext_utils import paste_values, quote

    controls, values = ui_values(script, enabled=True, strength=0.8, mode="adaptive", prompt="a hand, five fingers",
                                 adaptive_strengths=[0.3, 0.5], boxes=[(1, 2, 30, 40)], inpaint_checkpoint="",
                                 steps=25, crop=False)
    used = webui.args_from_script_args(values)
    line = ", ".join(f"{k}: {quote(v)}" for k, v in {"Steps": 20, **to_infotext(used)}.items())
    assert "HandRefiner mask feather" not in line  # defaults are not written...
    pasted = paste_values(script.infotext_fields, f"a prompt\nNegative prompt: x\n{line}")
    assert webui.args_from_script_args(pasted) == used  # ...but come back as defaults
    # widgets left at other values come back to the defaults too
    assert pasted[field_names().index("mask_feather")] == 8
    # an image made without HandRefiner switches the accordion off and leaves the rest alone
    off = paste_values(script.infotext_fields, "a prompt\nSteps: 20, Seed: 1, Size: 512x512")
    assert off[0] is False and all(v is None for v in off[1:])
    # "Send to img2img" copies the widgets whose infotext keys are listed
    assert [target for _, target in script.infotext_fields] == script.paste_field_names


def test_xyz_grid_axes_override_strength_mode_sampler_and_schedule(wui, script, malformed):
    from modules import script_callbacks, scripts

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    class XYZScript(scripts.Script):
        pass

    XYZScript.__module__ = "xyz_grid.py"
    xyz = type(sys)("xyz_grid.py")
    xyz.AxisOption, xyz.axis_options = AxisOption, []
    scripts.scripts_data.append(scripts.ScriptClassData(XYZScript, "xyz_grid.py", "", xyz))
    try:
        script_callbacks.before_ui_callback()
        script_callbacks.before_ui_callback()  # registering twice adds nothing
    finally:
        scripts.scripts_data.pop()
    strength, mode, sampler, scheduler = xyz.axis_options
    assert [o.label for o in xyz.axis_options] == ["[HandRefiner] Strength", "[HandRefiner] Mode",
                                                   "[HandRefiner] Sampler", "[HandRefiner] Schedule type"]
    assert mode.choices() == ["fixed", "adaptive"]
    assert sampler.choices() == ["DDIM (HandRefiner)", "DPM++ 2M", "Euler a", "Euler", "Heun", "DPM adaptive",
                                 "DDIM"]
    assert scheduler.choices() == ["Automatic", "Uniform", "Karras", "Exponential"]
    with pytest.raises(Exception):
        strength.confirm(None, [0.5, 5.0])
    sampler.confirm(None, ["Euler a", "DDIM (HandRefiner)"])
    with pytest.raises(RuntimeError, match="unknown 'Euler b'"):
        sampler.confirm(None, ["Euler a", "Euler b"])
    with pytest.raises(RuntimeError, match="unknown 'karras'"):
        scheduler.confirm(None, ["karras"])
    p = make_p()
    cell_a, cell_b = copy.copy(p), copy.copy(p)
    strength.apply(cell_a, 0.3, [0.3, 0.6])
    mode.apply(cell_a, "fixed", ["fixed"])
    strength.apply(cell_b, 0.6, [0.3, 0.6])
    assert cell_a.handrefiner_xyz == {"strength": 0.3, "mode": "fixed"} and cell_b.handrefiner_xyz == {"strength": 0.6}
    _, values = ui_values(script, enabled=True, **FAST)
    run(script, malformed, values, cell_a)
    assert cell_a.extra_generation_params["HandRefiner strength"] == "0.3"


def test_app_started_mounts_the_api_on_the_webui_app(wui):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import script_callbacks

    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    client = TestClient(app)
    models = client.get("/handrefiner/models").json()
    assert CONTROLNET_NAME in models["controlnets"] and models["default_controlnet"] == CONTROLNET_NAME
    assert "tiny-inpaint" in models["checkpoints"]
    assert client.get("/handrefiner/version").json()["name"] == "HandRefiner"

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict) -> dict:
        return {"images": []}

    def post(args):
        return client.post("/sdapi/v1/txt2img",
                           json={"prompt": "x", "alwayson_scripts": {"HandRefiner": {"args": args}}})

    # widget-format values (as the API's own defaults are) pass; a bad one is named before anything runs
    assert post([True, 0.6, "fixed", "0.4, 0.6", None, None, "", "", "x", "landmarks", CONTROLNET_NAME,
                 webui.CURRENT_MODEL, 4]).status_code == 200
    assert post([{"enabled": True, "steps": 4}]).status_code == 200
    bad = post([{"enabled": True, "steps": 500}])
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "steps"


# ---- the adapter -------------------------------------------------------------------------------------------

def test_adapter_runs_the_webui_model_and_rejects_other_models(wui, tiny_sd):
    from latent_diffusion import TinyLatentDiffusion

    ldm = TinyLatentDiffusion(tiny_sd)
    sd = webui.WebUISDModel(ldm, "cpu", torch.float32)
    assert sd.in_channels == 9 and sd.unet is tiny_sd.unet and sd.alphas_cumprod.dtype == torch.float64
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.allclose(sd.encode_image(x), tiny_sd.encode_image(x), atol=1e-5)
    ldm.is_sdxl = True
    with pytest.raises(webui.UnsupportedModelError, match="SD 1.5"):
        webui.WebUISDModel(ldm, "cpu", torch.float32)
    with pytest.raises(webui.UnsupportedModelError, match="no Stable Diffusion model"):
        webui.WebUISDModel(None, "cpu", torch.float32)


# ---- which model refines, and whose prompt machinery --------------------------------------------------------

EMPHASIS_PROMPT = "a (hand:1.3) with five fingers, hrtestemb"


@pytest.fixture()
def webui_model(wui, tiny_sd):
    """shared.sd_model set by the test (restored after); a textual-inversion embedding loaded in the WebUI."""
    from modules import shared

    saved = shared.sd_model
    yield lambda model: setattr(shared, "sd_model", model) or model
    shared.sd_model = saved


def _with_embedding(ldm):
    ldm.embeddings["hrtestemb"] = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    return ldm


@contextlib.contextmanager
def _without_the_inpainting_checkpoint():
    from modules import shared

    folder = Path(shared.models_path) / "Stable-diffusion"
    hidden = folder.parent / "hidden-checkpoint"
    hidden.mkdir(exist_ok=True)
    os.rename(folder / "tiny-inpaint.safetensors", hidden / "tiny-inpaint.safetensors")
    try:
        yield
    finally:
        os.rename(hidden / "tiny-inpaint.safetensors", folder / "tiny-inpaint.safetensors")


def test_a_chosen_checkpoint_takes_its_prompts_through_the_webuis_conditioning(wui, script, malformed, tiny_sd,
                                                                               webui_model):
    """"HandRefiner checkpoint" set with an SD 1.x model loaded: emphasis and embeddings work as with the current
    model (here the same weights: the same pixels), and the WebUI model encoded the prompts."""
    from latent_diffusion import TinyLatentDiffusion

    ldm = webui_model(_with_embedding(TinyLatentDiffusion(tiny_sd)))
    _, current = ui_values(script, enabled=True, prompt=EMPHASIS_PROMPT, **FAST)
    _, chosen = ui_values(script, enabled=True, prompt=EMPHASIS_PROMPT, inpaint_checkpoint="tiny-inpaint", **FAST)
    p_current, pp_current = run(script, malformed, current)
    ldm.conditioning_calls.clear()
    p_chosen, pp_chosen = run(script, malformed, chosen)
    assert [EMPHASIS_PROMPT] in ldm.conditioning_calls
    assert p_chosen.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")
    assert webui.MODEL_USED_KEY not in p_chosen.extra_generation_params   # the user's own choice
    assert np.abs(np.asarray(pp_chosen.image).astype(int) - np.asarray(pp_current.image).astype(int)).max() <= 1
    # the embedding reached the pass: without it, another hand
    ldm.embeddings.clear()
    _, pp_plain = run(script, malformed, chosen)
    assert np.abs(np.asarray(pp_plain.image).astype(int) - np.asarray(pp_chosen.image).astype(int)).max() > 8


def test_a_prompt_with_and_refines_with_the_controlnet_on_every_branch(wui, script, malformed):
    """AND gives the pass three guidance branches (negative and two parts): the ControlNet's batch follows."""
    _, plain = ui_values(script, enabled=True, prompt="a hand", **FAST)
    _, joined = ui_values(script, enabled=True, prompt="a hand AND a glove:0.5", **FAST)
    _, pp_plain = run(script, malformed, plain)
    p, pp = run(script, malformed, joined)
    assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")
    assert not np.array_equal(np.asarray(pp.image), np.asarray(pp_plain.image))


def test_a_regular_current_model_hands_the_pass_to_an_inpainting_checkpoint(wui, script, malformed,
                                                                          tiny_sd_regular, webui_model):
    """A 4-channel SD 1.x model: the SD 1.x inpainting checkpoint of the models folder refines (named in the
    infotext), with the prompts through the WebUI model; without one the model blends only, and says so."""
    from latent_diffusion import TinyLatentDiffusion

    ldm = webui_model(TinyLatentDiffusion(tiny_sd_regular))
    _, values = ui_values(script, enabled=True, **FAST)
    p, pp = run(script, malformed, values)
    params = p.extra_generation_params
    assert params[webui.MODEL_USED_KEY] == "tiny-inpaint"
    assert params[webui.RESULT_KEY].startswith("refined 1 ") and "not an inpainting model" in params[webui.RESULT_KEY]
    assert ldm.conditioning_calls and "HandRefiner model used: tiny-inpaint" in pp.image.info["parameters"]

    with _without_the_inpainting_checkpoint():
        p, pp = run(script, malformed, values)
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert result.startswith("refined 1 ") and "regular model: blend-only inpainting, results are weaker" in result
    assert webui.MODEL_USED_KEY not in p.extra_generation_params
    assert not np.array_equal(np.asarray(pp.image), malformed)


def test_inpainting_candidates_are_sd1_inpainting_models_by_name_and_header(wui, tiny_models, tmp_path):
    from lib_handrefiner.models_registry import build_listing

    for name, src in (("a-inpainting", tiny_models.checkpoint),
                      ("b-inpaint-really-regular", tiny_models.regular_checkpoint),
                      ("c-plain", tiny_models.checkpoint)):
        os.link(src, tmp_path / f"{name}.safetensors")
    (tmp_path / "d-inpainting.ckpt").write_bytes(b"not read until loaded")
    assert webui.inpainting_checkpoints(build_listing(checkpoint_dirs=[tmp_path])) == ["a-inpainting", "d-inpainting"]


def test_an_sdxl_current_model_refines_with_an_sd15_inpainting_checkpoint_and_its_own_clip(wui, script, malformed,
                                                                                           webui_model):
    """SDXL cannot run or encode for an SD 1.x UNet: the inpainting checkpoint refines, its own CLIP encodes the
    prompts (the WebUI's prompt syntax resolved); nothing of the SDXL model runs."""
    from latent_diffusion import TinySDXL

    sdxl = webui_model(TinySDXL())
    _, values = ui_values(script, enabled=True, prompt="a [cat:hand:0.5] (open:1.2) <lora:x:1>", **FAST)
    p, pp = run(script, malformed, values)
    params = p.extra_generation_params
    assert params[webui.RESULT_KEY].startswith("refined 1 ") and "SDXL" in params[webui.RESULT_KEY]
    assert params[webui.MODEL_USED_KEY] == "tiny-inpaint" and sdxl.used == []
    assert not np.array_equal(np.asarray(pp.image), malformed)


def test_an_sdxl_current_model_without_an_inpainting_checkpoint_keeps_the_image_and_says_what_to_do(
        wui, script, malformed, webui_model):
    from latent_diffusion import TinySDXL

    webui_model(TinySDXL())
    _, values = ui_values(script, enabled=True, **FAST)
    with _without_the_inpainting_checkpoint():
        p, pp = run(script, malformed, values)
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert "SDXL" in result and "inpainting checkpoint" in result and "models/Stable-diffusion" in result
    assert np.array_equal(np.asarray(pp.image), malformed)


def test_an_sdxl_current_model_with_a_webui_sampler_points_to_the_builtin_sampler(wui, script, malformed,
                                                                                    webui_model):
    """The WebUI's samplers sample its loaded model, so with SDXL loaded they cannot refine, though an SD 1.5
    inpainting checkpoint is in the models folder: the result says to load an SD 1.5 model or to choose the built-in
    sampler (which refines with that checkpoint), not to choose a checkpoint, which the WebUI's samplers refuse."""
    from latent_diffusion import TinySDXL

    sdxl = webui_model(TinySDXL())
    p, pp = run(script, malformed, [{"enabled": True, "sampler": "Euler a", **FAST}])
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert result.startswith("failed: the loaded model is SDXL") and "load an SD 1.5 checkpoint" in result
    assert "choose the sampler DDIM (HandRefiner)" in result and "checkpoint menu" not in result
    assert np.array_equal(np.asarray(pp.image), malformed) and sdxl.used == []


# ---- img2img: the box editor on the input image ----------------------------------------------------------

def test_img2img_box_editor_edits_the_boxes_widget_and_boxes_follow_the_resize(wui, malformed):
    from modules.scripts import OnComponent

    script = wui.HandRefinerScript()
    script.is_img2img, script.tabname = True, "img2img"
    with gr.Blocks():
        init_image = gr.Image(elem_id="img2img_image", type="pil")
        for elem_id, callback in script.on_after_component_elem_id:
            if elem_id == "img2img_image":
                callback(OnComponent(component=init_image))
        controls = script.ui(True)
    assert script.init_image is init_image
    boxes = controls[field_names().index("boxes")]
    assert boxes.elem_id == "script_img2img_handrefiner_boxes"
    assert len(controls) == len(field_names())

    args = HandRefinerArgs(enabled=True, boxes=[(10, 20, 110, 220)])
    p = make_p()
    p.init_images = [Image.new("RGB", (256, 512))]
    assert webui.boxes_on_output(args, p, (512, 1024)).boxes == [(20, 40, 220, 440)]
    assert webui.boxes_on_output(args, p, (256, 512)).boxes == args.boxes
    assert webui.boxes_on_output(args, make_p(), (512, 1024)).boxes == args.boxes  # txt2img: output pixels


def test_txt2img_send_button_reads_the_galleries_infotexts(script):
    """txt2img's "Send the image to img2img and edit its hand boxes" is in the Hand boxes group; once the WebUI makes
    generation_info_txt2img (after the scripts' UI) its click runs handRefinerSendToImg2img on that JSON, which
    holds the refined hands' boxes of each gallery image (run in a real WebUI by tests/test_webui_browser.py)."""
    from modules.scripts import OnComponent

    with gr.Blocks() as blocks:
        script.ui(False)
        info = gr.Textbox(visible=False, elem_id="generation_info_txt2img")
        for elem_id, callback in script.on_after_component_elem_id:
            if elem_id == "generation_info_txt2img":
                callback(OnComponent(component=info))
    by_id = {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}
    send = by_id["script_txt2img_handrefiner_send_boxes"]
    clicks = [d for d in blocks.dependencies if d["targets"] == [send._id] and d["trigger"] == "click"]
    assert len(clicks) == 1
    assert clicks[0]["js"] == "handRefinerSendToImg2img" and clicks[0]["inputs"] == [info._id]
    assert clicks[0]["outputs"] == [] and clicks[0]["backend_fn"] is False   # the browser does it all
    assert send.elem_id in by_id["script_txt2img_handrefiner_hints"].value


def test_img2img_boxes_of_another_image_give_a_result_that_names_the_box(script):
    """The issue's case: boxes detected on a 512×512 image, then a 224×224 input: the result says which box lies
    outside which image (as the API does), not "no hands found"; the image is kept and nothing runs."""
    small = np.full((224, 224, 3), 120, np.uint8)
    p = make_p()
    p.init_images = [Image.fromarray(small)]
    p, pp = run(script, small, [{"enabled": True, "boxes": [[312, 127, 512, 358]], "boxes_mode": "replace", **FAST}],
                p)
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert result == ("box [312, 127, 512, 358] lies outside the 224x224 input image; draw the boxes on this image "
                      "(Detect hands) or clear them; the image is kept")
    assert p.extra_generation_params["HandRefiner boxes"] == "312 127 512 358"
    assert np.array_equal(np.asarray(pp.image), small)


def test_a_lightning_ckpt_as_the_handrefiner_checkpoint_refines_as_its_weights(wui, script, malformed, tiny_sd,
                                                                               tiny_controlnet, tiny_models):
    """The accordion's "checkpoint" naming a .ckpt that pickles Lightning callbacks (as sd-v1-5-inpainting.ckpt
    does): it loads through the restricted unpickler and refines as the same weights do."""
    from modules import shared

    from lib_handrefiner.pipeline import refine_image

    folder = Path(shared.models_path) / "Stable-diffusion"
    path = tiny_lightning_checkpoint(tiny_models, folder)
    try:
        _, values = ui_values(script, enabled=True, inpaint_checkpoint="tiny-inpaint-lightning", **FAST)
        p, pp = run(script, malformed, values)
        assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")
        assert p.extra_generation_params["HandRefiner checkpoint"] == "tiny-inpaint-lightning"
        loaded_from, _ = wui.refiner._models._slots["checkpoint"][0]
        assert loaded_from == path  # this .ckpt was loaded, not the WebUI's model
        args = HandRefinerArgs(enabled=True, **FAST)
        direct = refine_image(malformed, tiny_sd, tiny_controlnet, args, prompt="a man making a hand gesture",
                              negative_prompt="blurry", seed=1234)
        assert np.abs(direct.image.astype(int) - np.asarray(pp.image).astype(int)).max() <= 1
    finally:
        path.unlink()
        path.with_suffix(".yaml").unlink()


def test_a_job_keeps_its_negative_and_the_api_and_editor_get_the_official_one(wui, script, malformed,
                                                                             sampled_negatives):
    _, values = ui_values(script, enabled=True, **FAST)
    run(script, malformed, values)                                   # a txt2img job with negative "blurry"
    wui.refiner.refine(malformed, HandRefinerArgs(**FAST), seed=1)  # /handrefiner/refine and the editor: no job
    assert sampled_negatives == ["fake 3D rendered image, blurry", OFFICIAL_NEGATIVE]


@pytest.mark.parametrize("sampler", ["DDIM (HandRefiner)", "Euler"])
def test_an_api_refine_is_a_webui_job_of_its_own(wui, malformed, sampler):
    """/handrefiner/refine (no job) begins and ends a WebUI job, as the WebUI's own API does for each request: an
    Interrupt pressed earlier (the WebUI keeps the flag until a job begins) no longer stops the WebUI sampler's
    first call before the UNet (it answered 500, "the hand pass never called the UNet"), and an Interrupt during the
    run ends it between steps, the image kept."""
    from modules import shared

    shared.state.interrupt()   # left over: no job was running
    result = wui.refiner.refine(malformed, HandRefinerArgs(sampler=sampler, **FAST), seed=1)
    assert result.message.startswith("refined 1 hand(s)") and result.unet_calls == 2, result.message
    assert shared.state.job == "" and not shared.state.interrupted

    unet = shared.sd_model.model.diffusion_model
    hook = unet.register_forward_hook(lambda *_: shared.state.interrupt())   # Interrupt during the first step
    try:
        result = wui.refiner.refine(malformed, HandRefinerArgs(sampler=sampler, **FAST), seed=1)
    finally:
        hook.remove()
    assert result.message.startswith("interrupted: refined 0 of 1 region(s)"), result.message
    assert result.unet_calls == 1 and np.array_equal(result.image, malformed)


# ---- a WebUI sampler for the hands ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, scheduler", [("Euler a", "Automatic"), ("DPM++ 2M", "Karras")])
def test_a_webui_sampler_refines_the_hand_and_says_so(wui, script, malformed, sampler, scheduler):
    """The hands sampled by the WebUI's own sampler: only the hand changes, the infotext names the sampler (and it
    pastes back), the job counts one more job, and the job's sampler is as it was."""
    from modules import sd_samplers, shared
    from modules.infotext_utils import paste_values, quote

    from lib_handrefiner.perception import perceive

    controls, values = ui_values(script, enabled=True, sampler=sampler, scheduler=scheduler, **FAST)
    by_name = dict(zip(field_names(), controls))
    assert sampler in by_name["sampler"].choices and scheduler in by_name["scheduler"].choices
    p = make_p()
    p.sampler = job_sampler = sd_samplers.create_sampler("Euler", shared.sd_model)
    job_no, job_count = shared.state.job_no, shared.state.job_count
    p, pp = run(script, malformed, values, p)

    params = p.extra_generation_params
    assert params["HandRefiner sampler"] == sampler
    assert params.get("HandRefiner schedule type", "Automatic") == scheduler
    assert params[webui.RESULT_KEY] == ("refined 1 hand(s) in 1 region(s) with the WebUI's "
                                        + webui.describe_sampler(HandRefinerArgs(sampler=sampler,
                                                                                 scheduler=scheduler)))
    out = np.asarray(pp.image)
    changed = (out != malformed).any(-1)
    args = HandRefinerArgs(enabled=True, **FAST)
    assert changed.sum() > 1000
    assert not (changed & ~(perceive(malformed, args).mask > 0)).any()  # the mask bounds every change
    assert shared.state.job_count == job_count + 1 and shared.state.job_no == job_no + 1
    assert p.sampler is job_sampler and "forward" not in job_sampler.model_wrap_cfg.__dict__

    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if k.startswith("HandRefiner"))
    pasted = webui.args_from_script_args(paste_values(script.infotext_fields, f"a prompt\n{line}"))
    assert (pasted.sampler, pasted.scheduler) == (sampler, scheduler)


def test_the_builtin_and_a_webui_sampler_differ_but_share_crops_and_masks(wui, script, malformed):
    """Same crop and mask for both engines: the WebUI's DDIM changes the same pixels, with other values."""
    _, builtin = ui_values(script, enabled=True, **FAST)
    _, webui_ddim = ui_values(script, enabled=True, sampler="DDIM", **FAST)
    a = np.asarray(run(script, malformed, builtin)[1].image)
    b = np.asarray(run(script, malformed, webui_ddim)[1].image)
    changed_a, changed_b = (a != malformed).any(-1), (b != malformed).any(-1)
    assert (changed_a ^ changed_b).sum() < 0.02 * changed_a.sum() and (a != b).any()


@pytest.mark.parametrize("problem", ["unknown sampler", "with a chosen checkpoint"])
def test_a_webui_sampler_that_cannot_run_keeps_the_image_and_says_why(wui, script, malformed, problem):
    changes = dict(sampler="Euler b") if problem == "unknown sampler" else dict(sampler="Euler a",
                                                                                 inpaint_checkpoint="tiny-inpaint")
    p, pp = run(script, malformed, [{"enabled": True, **changes, **FAST}])
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert np.array_equal(np.asarray(pp.image), malformed)
    expected = {"unknown sampler": "sampler 'Euler b' is not one of the WebUI's samplers; choose one of: "
                                   "DDIM (HandRefiner), DPM++ 2M, Euler a",
                "with a chosen checkpoint": "the WebUI's samplers sample the WebUI's loaded model"}[problem]
    assert result.startswith("failed: ") and expected in result


def test_webui_samplers_in_the_api(wui, malformed):
    """/handrefiner/models lists the WebUI's samplers; /handrefiner/refine samples with one; alwayson args with an
    unknown one get a 422 naming `sampler` before anything is generated."""
    import base64
    import io

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import script_callbacks

    app = FastAPI()
    script_callbacks.app_started_callback(None, app)

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict) -> dict:
        return {"images": []}

    client = TestClient(app)
    models = client.get("/handrefiner/models").json()
    assert models["samplers"][:3] == ["DDIM (HandRefiner)", "DPM++ 2M", "Euler a"]
    assert "Karras" in models["schedulers"]
    buffer = io.BytesIO()
    Image.fromarray(malformed).save(buffer, "PNG")
    refined = client.post("/handrefiner/refine", json={"image": base64.b64encode(buffer.getvalue()).decode(),
                                                       "sampler": "Euler a", "seed": 5, **FAST})
    assert refined.status_code == 200, refined.text
    assert refined.json()["message"].endswith("with the WebUI's Euler a")
    assert "HandRefiner sampler: Euler a" in refined.json()["infotext"]
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"HandRefiner": {
        "args": [{"enabled": True, "sampler": "Euler b"}]}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "sampler"
    assert "choose one of: DDIM (HandRefiner), DPM++ 2M" in bad.json()["detail"][0]["msg"]
    unknown = client.post("/handrefiner/refine", json={"image": base64.b64encode(buffer.getvalue()).decode(),
                                                       "scheduler": "karras"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "scheduler"]


def test_mesh_graphormer_in_the_webui(wui, script, malformed, graphormer_folder):
    """auto takes Mesh Graphormer once its files are in models/handrefiner/ and the infotext says so; chosen
    without its files, the image is kept and the result names each missing file and where to get it."""
    from modules import shared

    from lib_handrefiner.mesh.graphormer.files import FILE_NAMES
    from lib_handrefiner.settings import MESHES_INFOTEXT_KEY

    controls, _ = ui_values(script)
    by_name = dict(zip(field_names(), controls))
    assert by_name["mesh_model"].value == "auto"
    assert [c[0] if isinstance(c, tuple) else c for c in by_name["mesh_model"].choices] == \
        ["auto", "graphormer", "landmarks"]
    assert isinstance(by_name["mesh_fallback"], gr.Checkbox)
    folder = Path(shared.models_path) / "handrefiner"
    folder.mkdir(exist_ok=True)
    try:
        p, pp = run(script, malformed, [{"enabled": True, "mesh_model": "graphormer", **FAST}])
        result = p.extra_generation_params[webui.RESULT_KEY]
        assert result.startswith("failed:") and all(name in result for name in FILE_NAMES)
        assert "mano.is.tue.mpg.de" in result and np.array_equal(np.asarray(pp.image), malformed)
        p, _ = run(script, malformed, [{"enabled": True, "mesh_model": "graphormer", "mesh_fallback": True, **FAST}])
        assert "warning: used the landmark mesh" in p.extra_generation_params[webui.RESULT_KEY]
        assert p.extra_generation_params[MESHES_INFOTEXT_KEY] == "landmarks"
        for name in FILE_NAMES:
            (folder / name).symlink_to(graphormer_folder / name)
        p, pp = run(script, malformed, [{"enabled": True, **FAST}])
        assert p.extra_generation_params[webui.RESULT_KEY].startswith("refined 1 ")
        assert p.extra_generation_params[MESHES_INFOTEXT_KEY] == "graphormer"
        assert "HandRefiner meshes: graphormer" in pp.image.info["parameters"]
        (mesh,) = [m for m in wui.refiner._models.models() if getattr(m, "name", "") == "graphormer"]
        assert next(mesh.parameters()).device.type == "cpu"  # back on the CPU after the image
    finally:
        for name in FILE_NAMES:
            (folder / name).unlink(missing_ok=True)
        wui.refiner._models.mesh_model("landmarks", [folder])  # let the network go


def test_adaptive_writes_the_strengths_tried_into_the_infotext_as_strict_json(wui, script, malformed):
    _, values = ui_values(script, enabled=True, mode="adaptive", adaptive_strengths=[0.4, 0.6], **FAST)
    p, _ = run(script, malformed, values)
    (tried,) = strict_loads(p.extra_generation_params["HandRefiner tried"])  # one refined hand
    assert [t["strength"] for t in tried] == [1.0, 0.4, 0.6]
    assert all(set(t) == {"strength", "mpjpe"} for t in tried)


def test_an_image_over_the_pixel_limit_is_kept_and_the_limit_named(script, malformed, monkeypatch):
    """The WebUI path has the command line's and the API's pixel limit (issue 20)."""
    monkeypatch.setenv("HANDREFINER_MAX_PIXELS", str(malformed.shape[0] * malformed.shape[1] - 1))
    p, pp = run(script, malformed, [{"enabled": True, **FAST}])
    result = p.extra_generation_params[webui.RESULT_KEY]
    assert result.startswith("failed:") and "over HandRefiner's limit of" in result, result
    assert "HANDREFINER_MAX_PIXELS" in result and "\n" not in result
    assert np.array_equal(np.asarray(pp.image), malformed)
