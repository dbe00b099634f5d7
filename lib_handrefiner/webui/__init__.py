"""Everything behind scripts/handrefiner.py that touches the AUTOMATIC1111 WebUI's objects.

The WebUI's pieces (its loaded model, `shared.state`, `shared.opts`, devices, autocast, the console progress bar,
the model folders) are handed in by the thin glue as a `WebUIEnv`; nothing here imports the WebUI's `modules`, so
it is tested against a small stand-in. Refinement itself is `pipeline.refine_image`, the same function the
standalone command runs: the WebUI's LatentDiffusion is adapted to the `SDModel` protocol (`WebUISDModel`), so
the sampler's per-step known-region blend, extra negative prompt, ControlNet on both CFG branches and the adaptive
loop are the very same code.

One module per concern; this package only re-exports them (and the settings the glue uses) for the glue:
- backend: one adapter per WebUI backend (A1111's ldm, reForge/old Forge's ldm_patched)
- env: what the glue hands in (WebUIEnv), one image's job and outcome, the infotext keys, HandRefinerFailure
- folders: the model folders
- arguments: the script's args → HandRefinerArgs (settings.script_args), the settings section's defaults
- accordion: what each widget shows (the layout itself is settings.groups)
- xyz: the XYZ-grid axes
- sd_adapter: the WebUI's model as an SDModel (VAE precision fallback) and the choice of the inpainting model
- progress: the progress bars, Interrupt and Skip
- refiner: WebUIRefiner (the script's per-image work and the API's service)
- hooks: the always-on script's hooks (refine, previews, infotext paste)
- prompts, sampling: the WebUI's prompt encoding and samplers for the hand pass
"""
from lib_handrefiner.settings import (
           CURRENT_MODEL,
           GROUPS,
           LIST_FIELDS,
           OTHER_GROUP,
           SETTING_FIELDS,
           XYZ_FIELDS,
           describe_error,
           format_boxes,
           layout,
           layout_fields,
           parse_boxes,
           to_widget,
)
from lib_handrefiner.webui.accordion import WidgetSpec, widget_specs
from lib_handrefiner.webui.arguments import (
           KEEP_LOADED_SETTING,
           SETTINGS_SECTION,
           args_from_named_values,
           args_from_script_args,
           defaults_from_opts,
           setting_key,
           setting_spec,
           with_available_controlnet,
)
from lib_handrefiner.webui.backend import ForgeBackend, LdmBackend, UnsupportedBackendError, backend_for
from lib_handrefiner.webui.env import (
           MODEL_USED_KEY,
           RESULT_KEY,
           SCRIPT_TITLE,
           HandRefinerFailure,
           ImageJob,
           ImageOutcome,
           WebUIEnv,
           job_for_image,
)
from lib_handrefiner.webui.folders import ModelFolders, model_folders
from lib_handrefiner.webui.hooks import (
           PREVIEWS_ATTRIBUTE,
           SavePreview,
           add_previews,
           boxes_on_output,
           fill_pasted_defaults,
           paste_field_names,
           postprocess_image,
)
from lib_handrefiner.webui.progress import WebUIProgress
from lib_handrefiner.webui.refiner import (
           DEFAULT_CONTROLNET_URL,
           WebUIRefiner,
           describe_sampler,
           failure_message,
           outcome_from_result,
           sampling_names,
)
from lib_handrefiner.webui.sd_adapter import (
           ModelChoice,
           UnsupportedModelError,
           WebUISDModel,
           check_sd1_model,
           choose_model,
           inpainting_checkpoints,
           sd1_problem,
           upcast_vae_after_nans,
           vae_dtype,
)
from lib_handrefiner.webui.xyz import (
           XYZ_ATTRIBUTE,
           apply_xyz_overrides,
           find_xyz_module,
           register_xyz_axes,
           xyz_confirm,
           xyz_confirm_choice,
           xyz_setter,
)

__all__ = ["CURRENT_MODEL", "DEFAULT_CONTROLNET_URL", "ForgeBackend", "GROUPS", "HandRefinerFailure", "ImageJob",
           "ImageOutcome", "LdmBackend", "UnsupportedBackendError", "backend_for",
           "KEEP_LOADED_SETTING", "LIST_FIELDS", "MODEL_USED_KEY", "ModelChoice", "ModelFolders", "OTHER_GROUP",
           "PREVIEWS_ATTRIBUTE", "RESULT_KEY", "SCRIPT_TITLE", "SETTINGS_SECTION", "SETTING_FIELDS", "SavePreview",
           "UnsupportedModelError", "WebUIEnv", "WebUIProgress", "WebUIRefiner", "WebUISDModel", "WidgetSpec",
           "XYZ_ATTRIBUTE", "XYZ_FIELDS", "add_previews", "apply_xyz_overrides", "args_from_named_values",
           "args_from_script_args", "boxes_on_output", "check_sd1_model", "choose_model", "defaults_from_opts",
           "describe_error", "describe_sampler", "failure_message", "fill_pasted_defaults", "find_xyz_module",
           "format_boxes", "inpainting_checkpoints", "job_for_image", "layout", "layout_fields", "model_folders",
           "outcome_from_result", "parse_boxes", "paste_field_names", "postprocess_image",
           "register_xyz_axes", "sampling_names", "sd1_problem", "setting_key", "setting_spec", "to_widget",
           "upcast_vae_after_nans", "vae_dtype", "widget_specs", "with_available_controlnet", "xyz_confirm",
           "xyz_confirm_choice", "xyz_setter"]
