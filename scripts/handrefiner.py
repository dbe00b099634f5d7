"""HandRefiner for the AUTOMATIC1111 WebUI (1.9, 1.10) and reForge: the always-on "HandRefiner" script.

Thin glue: it builds the accordion, hands the WebUI's objects to lib_handrefiner.webui (where the logic lives and
is tested) and registers the settings, the XYZ-grid axes and the /handrefiner/* API routes.
"""
from __future__ import annotations

import functools

import gradio as gr

from modules import devices, extra_networks, prompt_parser, script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from lib_handrefiner import webui
from lib_handrefiner.webui import sampling as webui_sampling
from lib_handrefiner.settings import FIELDS, field_names
from lib_handrefiner.ui import field_control, field_label


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


def _container(group: str):
    kind, label = group.split(":", 1)
    if kind == "accordion":
        return gr.Accordion(label, open=False)
    return gr.Row() if kind == "row" else gr.Column()


def _widget(spec: webui.WidgetSpec):
    if spec.name in webui.LIST_FIELDS:
        return gr.Textbox(value=spec.value, label=field_label(spec.name),
                          info=FIELDS[spec.name].description, lines=1)
    return field_control(spec.name, spec.value, spec.choices)


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
        widgets = {}
        with InputAccordion(defaults.enabled, label="HandRefiner", elem_id=self.elem_id("enabled")) as enabled:
            for group, names in webui.layout():
                with _container(group):
                    for name in names:
                        widgets[name] = _widget(specs[name])
                        widgets[name].elem_id = self.elem_id(name)  # unique across the txt2img/img2img tabs
                        if name in webui.SETTING_FIELDS:
                            # Settings → HandRefiner holds these defaults; ui-config.json must not override them.
                            widgets[name].do_not_save_to_config = True
                        if name == "boxes" and is_img2img and self.init_image is not None:
                            self._box_editor(["enabled", *widgets], [enabled, *widgets.values()], defaults)
        controls = [enabled] + [widgets[name] for name in field_names()[1:]]
        # Infotext keys (not functions) as targets, so that "Send to img2img" copies the widgets too;
        # webui.fill_pasted_defaults supplies the keys an infotext leaves out.
        self.paste_field_names = webui.paste_field_names()
        self.infotext_fields = list(zip(controls, self.paste_field_names))
        return controls

    def _box_editor(self, names, controls, defaults):
        """Detect / drag / type hand boxes on img2img's input image with the settings made so far (`controls`,
        fields `names`); edits the boxes widget (the last control)."""
        from modules.call_queue import queue_lock

        from lib_handrefiner.ui import build_editor

        build_editor(refiner, self.init_image, settings=controls, lock=queue_lock, prefix=self.elem_id("editor"),
                     boxes=controls[-1],
                     read_settings=lambda values: webui.args_from_named_values(names, values, defaults))

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
