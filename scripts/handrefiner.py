"""HandRefiner for the AUTOMATIC1111 WebUI (1.9, 1.10) and reForge: the always-on "HandRefiner" script.

Thin glue: it builds the accordion, hands the WebUI's objects to lib_handrefiner.webui (where the logic lives and
is tested) and registers the settings, the XYZ-grid axes and the /handrefiner/* API routes.
"""
from __future__ import annotations

import contextlib
import functools
import html
import json

import gradio as gr
from modules import devices, extra_networks, prompt_parser, script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from lib_handrefiner import webui
from lib_handrefiner.settings import BOXES_GROUP, EDITOR_GROUP, field_names
from lib_handrefiner.ui import field_control, field_label
from lib_handrefiner.webui import accordion
from lib_handrefiner.webui import sampling as webui_sampling


def _sampling_modules() -> webui_sampling.WebUIModules:
    """The WebUI modules the hand pass drives when a WebUI sampler is chosen."""
    import k_diffusion.sampling
    from modules import processing, rng, sd_samplers, sd_samplers_common, sd_samplers_timesteps, sd_schedulers

    return webui_sampling.WebUIModules(
        processing=processing, sd_samplers=sd_samplers, sd_samplers_common=sd_samplers_common,
        sd_samplers_timesteps=sd_samplers_timesteps, sd_schedulers=sd_schedulers, extra_networks=extra_networks,
        rng=rng, devices=devices, k_diffusion_sampling=k_diffusion.sampling)


SAMPLING = _sampling_modules()


def _forge_model_management():
    """reForge / old Forge: its model management, which loads the UNet before HandRefiner's own sampling loop."""
    try:
        from ldm_patched.modules import model_management
    except ImportError:   # AUTOMATIC1111
        return None
    return model_management


FORGE_MODEL_MANAGEMENT = _forge_model_management()


def _env() -> webui.WebUIEnv:
    cmd = shared.cmd_opts
    return webui.WebUIEnv(
        sd_model=lambda: shared.sd_model, device=devices.device, dtype=devices.dtype_unet,
        # The precision context the WebUI samples in (the postprocess hooks run outside it).
        autocast=lambda: devices.without_autocast() if devices.unet_needs_upcast else devices.autocast(),
        torch_gc=devices.torch_gc,
        folders=webui.model_folders(shared.models_path, getattr(cmd, "handrefiner_models_dir", None),
                                    getattr(cmd, "controlnet_dir", None), getattr(cmd, "ckpt_dir", None),
                                    getattr(shared, "extensions_dir", None)),
        state=shared.state, total_tqdm=getattr(shared, "total_tqdm", None),
        keep_models_on_device=bool(getattr(shared.opts, webui.KEEP_LOADED_SETTING, False)),
        offload_to_cpu=bool(getattr(cmd, "lowvram", False) or getattr(cmd, "medvram", False)),
        devices=devices, opts=shared.opts, sampling=SAMPLING, prompt_parser=prompt_parser,
        extra_networks=extra_networks,
        backend=functools.partial(webui.backend_for, model_management=FORGE_MODEL_MANAGEMENT))


refiner = webui.WebUIRefiner(_env)


def _defaults(controlnets):
    """The settings' defaults, with the ControlNet on disk when the configured one is not (the API's choice)."""
    return webui.with_available_controlnet(webui.defaults_from_opts(shared.opts), controlnets,
                                           refiner.default_controlnet)


RANDOM_SYMBOL, REUSE_SYMBOL = "\U0001f3b2\ufe0f", "\u267b\ufe0f"   # the WebUI's own seed buttons: dice, recycle


@contextlib.contextmanager
def _container(group: str, elem_id: str):
    kind, label = group.split(":", 1)
    if kind == "accordion":
        # Collapsed; its fields side by side in a row that wraps (the editor's group stacks its parts).
        with gr.Accordion(label, open=False, elem_id=elem_id):
            with (gr.Column() if group == EDITOR_GROUP else gr.Row()):
                yield
        return
    with (gr.Row() if kind == "row" else gr.Column()):
        yield


def _group_slug(group: str) -> str:
    """"accordion:Edit hand boxes" → "edit_hand_boxes" (for the group's element id)."""
    return "_".join(group.split(":", 1)[1].lower().replace(",", "").split())


def _widget(spec: webui.WidgetSpec):
    if spec.name in webui.LIST_FIELDS:
        return gr.Textbox(value=spec.value, label=field_label(spec.name), lines=1)
    if spec.name in ("prompt", "negative_prompt"):
        return gr.Textbox(value=spec.value, label=field_label(spec.name), lines=1, max_lines=4)
    return field_control(spec.name, spec.value, spec.choices, with_info=False)


class HandRefinerScript(scripts.Script):
    def __init__(self):
        self.init_image = None  # img2img's input image, where the box editor works
        self.on_after_component(self._remember_init_image, elem_id="img2img_image")

    def _remember_init_image(self, on_component):
        self.init_image = on_component.component

    def title(self):
        return webui.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        listing = refiner.listing()
        defaults = _defaults(listing.controlnets)
        specs = {s.name: s for s in webui.widget_specs(defaults, listing.controlnets, listing.checkpoints,
                                                       webui_sampling.sampler_choices(SAMPLING),
                                                       webui_sampling.scheduler_choices(SAMPLING))}
        widgets, hints, editor = {}, {}, None
        with InputAccordion(defaults.enabled, label="HandRefiner", elem_id=self.elem_id("enabled")) as enabled:
            for group, names in webui.layout(img2img=is_img2img):
                with _container(group, self.elem_id(_group_slug(group))):
                    for name in names:
                        widgets[name] = self._seed(specs[name], hints) if name == "seed" else _widget(specs[name])
                        widgets[name].elem_id = self.elem_id(name)  # unique across the txt2img/img2img tabs
                        hints[widgets[name].elem_id] = accordion.hover_text(name)
                        if name in webui.SETTING_FIELDS:
                            # Settings → HandRefiner holds these defaults; ui-config.json must not override them.
                            widgets[name].do_not_save_to_config = True
                    if group == EDITOR_GROUP and self.init_image is not None:
                        editor = self._box_editor(widgets["boxes"])
                    if group == BOXES_GROUP and not is_img2img:
                        send = gr.Button("Send the image to img2img and edit its hand boxes",
                                         elem_id=self.elem_id("send_boxes"))
                        hints[send.elem_id] = ("The image selected in the gallery goes to img2img with its "
                                               "parameters (the WebUI's own Send to img2img), HandRefiner on, "
                                               "and the boxes of the hands refined here in Edit hand boxes "
                                               "(none refined: its hands are detected there).")
                        # The click reads the gallery's infotexts (the refined hands' boxes): generation_info is
                        # made after the scripts' UI.
                        self.on_after_component(lambda x, send=send: self._connect_send(send, x.component),
                                                elem_id=f"generation_info_{self.tabname}")
            # The help of every field, as hover text (javascript/handrefiner.js), not paragraphs under the fields.
            gr.HTML(f'<div class="handrefiner-hints" data-hints="{html.escape(json.dumps(hints))}"></div>',
                    elem_id=self.elem_id("hints"))
        controls = [enabled] + [widgets[name] for name in field_names()[1:]]
        if editor is not None:
            names = field_names()
            editor.connect(refiner, controls,
                           lambda values: webui.args_from_named_values(names, values, defaults))
        # Infotext keys (not functions) as targets, so that "Send to img2img" copies the widgets too;
        # webui.fill_pasted_defaults supplies the keys an infotext leaves out.
        self.paste_field_names = webui.paste_field_names()
        self.infotext_fields = list(zip(controls, self.paste_field_names))
        return controls

    def _seed(self, spec, hints):
        """The hand seed with the WebUI's own seed buttons: dice (-1, random) and recycle (the seed of the image
        selected in the gallery)."""
        from modules.ui_components import ToolButton

        elem_id = self.elem_id("seed")
        with gr.Row():
            seed = gr.Number(value=spec.value, label=field_label("seed"), precision=0, min_width=100)
            dice = ToolButton(RANDOM_SYMBOL, elem_id=f"{elem_id}_random")
            recycle = ToolButton(REUSE_SYMBOL, elem_id=f"{elem_id}_reuse")
        hints[dice.elem_id] = "Set the hand seed to -1: the image's own seed"
        hints[recycle.elem_id] = "Reuse the hand seed of the image selected in the gallery"
        dice.click(fn=None, _js=f"function(){{setRandomSeed('{elem_id}')}}", show_progress=False, inputs=[],
                   outputs=[])
        self.on_after_component(lambda x: self._connect_reuse(recycle, seed, x.component),
                                elem_id=f"generation_info_{self.tabname}")
        return seed

    @staticmethod
    def _connect_reuse(recycle, seed, generation_info):
        from modules.infotext_utils import parse_generation_parameters

        recycle.click(fn=lambda info, index: accordion.reused_seed(info, index, parse_generation_parameters),
                      _js="(info, seed) => [info, selected_gallery_index()]", show_progress=False,
                      inputs=[generation_info, seed], outputs=[seed])

    @staticmethod
    def _connect_send(send, generation_info):
        send.click(fn=None, _js="handRefinerSendToImg2img", inputs=[generation_info], outputs=[], show_progress=False)

    def _box_editor(self, boxes):
        """Detect / drag / type hand boxes on img2img's input image; connected once every setting exists."""
        from modules.call_queue import queue_lock

        from lib_handrefiner.ui import build_editor

        return build_editor(refiner, self.init_image, lock=queue_lock, prefix=self.elem_id("editor"), boxes=boxes,
                            connect=False)

    def postprocess_image_after_composite(self, p, pp, *args):
        # After img2img's original is pasted back over the unmasked area (WebUI 1.8+): hands outside an inpaint
        # mask are fixed too, and the result is what gets saved and shown.
        webui.postprocess_image(refiner, p, pp, args, _defaults(refiner.listing().controlnets), _save_preview(p))

    def postprocess(self, p, processed, *args):
        webui.add_previews(p, processed)


def _save_preview(p):
    def save(image, job, suffix):
        from modules import images

        images.save_image(image, p.outpath_samples, "", job.seed, job.prompt, shared.opts.samples_format, p=p,
                          suffix=suffix)

    return save


def on_ui_settings():
    for name in webui.SETTING_FIELDS:
        default, label, kwargs = webui.setting_spec(name)
        component = gr.Radio if "choices" in kwargs else gr.Slider if kwargs else None
        shared.opts.add_option(webui.setting_key(name), shared.OptionInfo(
            default, label, component, kwargs or None, section=webui.SETTINGS_SECTION).needs_reload_ui())
    shared.opts.add_option(webui.KEEP_LOADED_SETTING, shared.OptionInfo(
        False, "Keep HandRefiner's ControlNet and checkpoint on the GPU between images (faster, more VRAM)",
        section=webui.SETTINGS_SECTION))


def on_before_ui():
    xyz = webui.find_xyz_module(scripts.scripts_data)
    if xyz is not None:
        webui.register_xyz_axes(xyz, samplers=lambda: webui_sampling.sampler_choices(SAMPLING),
                                schedulers=lambda: webui_sampling.scheduler_choices(SAMPLING))


def on_app_started(demo, app):
    from modules.call_queue import queue_lock

    from lib_handrefiner import api

    api.mount(app, refiner, lock=queue_lock)
    # txt2img/img2img requests with bad HandRefiner args get a 422 naming the field before anything is generated.
    api.install_alwayson_validation(app, parse=_checked_script_args)


def _checked_script_args(values):
    """`alwayson_scripts` args as HandRefinerArgs, with the sampler and schedule type among the WebUI's."""
    from lib_handrefiner import api

    args = webui.args_from_script_args(values)
    api.check_sampling(args, *webui.sampling_names(_env()))
    return args


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_before_ui(on_before_ui)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_infotext_pasted(functools.partial(
    webui.fill_pasted_defaults,
    controlnet_fallback=lambda args: webui.with_available_controlnet(args, refiner.listing().controlnets,
                                                                     refiner.default_controlnet)))
