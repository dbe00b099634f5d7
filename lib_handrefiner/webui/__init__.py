"""Everything behind scripts/handrefiner.py that touches the AUTOMATIC1111 WebUI's objects.

The WebUI's pieces (its loaded model, `shared.state`, `shared.opts`, devices, autocast, the console progress bar,
the model folders) are handed in by the thin glue as a `WebUIEnv`; nothing here imports the WebUI's `modules`, so
it is tested against a small stand-in. Refinement itself is `pipeline.refine_image`, the same function the
standalone command runs: the WebUI's LatentDiffusion is adapted to the `SDModel` protocol (`WebUISDModel`), so
the sampler's per-step known-region blend, extra negative prompt, ControlNet on both CFG branches and the adaptive
loop are the very same code.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import ValidationError

from ..args import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, HandRefinerArgs
from ..detection import DetectorUnavailable
from ..mesh import MeshModelError
from ..models_registry import ModelListing, ModelNameError, ModelSlots, build_listing, check_name_safe, resolve_name

log = logging.getLogger("handrefiner")

SCRIPT_TITLE = "HandRefiner"                  # the script's title: the `alwayson_scripts` key
RESULT_KEY = "HandRefiner result"             # infotext entry with what happened to the image
MODEL_USED_KEY = "HandRefiner model used"     # infotext entry: the inpainting checkpoint HandRefiner chose itself
CURRENT_MODEL = "Current model"               # the checkpoint dropdown's entry for "the WebUI's loaded model"
SETTINGS_SECTION = ("handrefiner", "HandRefiner")
XYZ_ATTRIBUTE = "handrefiner_xyz"             # p.<this>: {field: value} set by the XYZ-grid axes
PREVIEWS_ATTRIBUTE = "handrefiner_previews"   # p.<this>: [PIL image] shown after the job
DEFAULT_CONTROLNET_URL = "https://huggingface.co/hr16/ControlNet-HandRefiner-pruned"

# Fields whose defaults the settings section holds (the others keep HandRefinerArgs' defaults).
SETTING_FIELDS = ("strength", "mode", "extra_negative", "mesh_model", "mesh_fallback", "controlnet",
                  "inpaint_checkpoint", "steps", "cfg_scale", "denoising_strength", "mask_padding", "mask_feather",
                  "crop_resolution", "max_hands")
KEEP_LOADED_SETTING = "handrefiner_keep_models_on_device"
XYZ_FIELDS = ("strength", "mode", "sampler", "scheduler")

# Where each setting sits in the accordion, top to bottom; "enabled" is the accordion. Fields in no group go in
# "More" at the end. The script still returns the widgets in HandRefinerArgs' field order, so positional
# `alwayson_scripts` args are the fields in order whatever the layout.
GROUPS: Dict[str, Tuple[str, ...]] = {
    "row:main": ("strength", "mode"),
    "accordion:Adaptive strength": ("adaptive_strengths", "adaptive_reference", "adaptive_factor"),
    "column:prompts": ("prompt", "negative_prompt", "extra_negative"),
    "row:models": ("mesh_model", "mesh_fallback", "controlnet", "inpaint_checkpoint"),
    "row:sampler": ("sampler", "scheduler"),
    "row:sampling": ("steps", "cfg_scale", "denoising_strength", "seed"),
    "accordion:Mask, crop and detection": ("mask_padding", "mask_padding_ratio", "mask_dilation", "mask_feather",
                                           "crop", "crop_resolution", "crop_min_side", "hands_together", "max_hands",
                                           "detection_confidence", "presence_confidence", "min_hand_size",
                                           "boxes", "boxes_mode"),
    "row:previews": ("save_depth", "save_mask"),
}
OTHER_GROUP = "accordion:More"
LIST_FIELDS = ("adaptive_strengths", "boxes")   # shown as text: "0.4, 0.5" and "x0 y0 x1 y1; …"


class HandRefinerFailure(RuntimeError):
    """A refinement that could not run (bad model choice, missing file); the message says what to do."""


# ---- arguments ---------------------------------------------------------------------------------------------

def setting_key(name: str) -> str:
    return f"handrefiner_{name}"


def defaults_from_opts(opts: Any) -> HandRefinerArgs:
    """HandRefinerArgs' defaults overridden by the settings section; a bad stored value keeps the default."""
    args = HandRefinerArgs()
    for name in SETTING_FIELDS:
        value = getattr(opts, setting_key(name), None)
        if value is None:
            continue
        try:
            args = HandRefinerArgs(**{**args.dict(), name: _from_widget(name, value)})
        except (ValidationError, TypeError, ValueError) as e:
            log.warning("HandRefiner: ignoring setting %s=%r (%s)", setting_key(name), value, e)
    return args


def with_available_controlnet(defaults: HandRefinerArgs, available: Sequence[str],
                              fallback: Callable[[], Optional[str]]) -> HandRefinerArgs:
    """The configured default ControlNet when it is on disk; otherwise `fallback()` (WebUIRefiner.default_controlnet:
    the file /handrefiner/refine and the standalone editor use, e.g. the HandRefiner ControlNet under another name)."""
    if defaults.controlnet in available:
        return defaults
    chosen = fallback()
    return defaults.copy(update={"controlnet": chosen}) if chosen else defaults


def parse_strengths(value: Any) -> Any:
    if isinstance(value, str):
        return [float(s) for s in re.split(r"[,;\s]+", value.strip()) if s]
    return value


def parse_boxes(value: Any) -> Any:
    """Boxes from text: JSON [[x0, y0, x1, y1], …] (the editor's format) or "x0 y0 x1 y1; …" (the infotext's)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        return [tuple(float(v) for v in box) for box in json.loads(text)]
    return [tuple(float(v) for v in re.split(r"[,\s]+", part.strip()) if v)
            for part in re.split(r"[;\n]", text) if part.strip()]


def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    return "; ".join(" ".join(f"{v:g}" for v in box) for box in boxes)


def _from_widget(name: str, value: Any) -> Any:
    """A widget's (or an API client's positional) value → the field's value."""
    if name == "adaptive_strengths":
        return parse_strengths(value)
    if name == "boxes":
        return parse_boxes(value)
    if name == "inpaint_checkpoint" and value in (CURRENT_MODEL, None, "None"):
        return ""
    kind = HandRefinerArgs.__fields__[name].type_
    if isinstance(value, float) and isinstance(kind, type) and issubclass(kind, int) and not issubclass(kind, bool) \
            and value.is_integer():
        return int(value)  # sliders and numbers send floats
    return value


def to_widget(name: str, value: Any) -> Any:
    """A field's value → its widget's value (the inverse of _from_widget)."""
    if name == "adaptive_strengths":
        return ", ".join(f"{v:g}" for v in value)
    if name == "boxes":
        return format_boxes(value)
    if name == "inpaint_checkpoint" and not value:
        return CURRENT_MODEL
    return value


def args_from_script_args(values: Sequence[Any], defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """The script's args (the widgets' values, or `alwayson_scripts` args) as HandRefinerArgs.

    Positional values are the fields in order (None: the default); a dict (alone or first, as the WebUI's API pads
    the rest with the widgets' defaults) names fields. Raises ValidationError / ValueError naming the field."""
    values = list(values)
    if values and isinstance(values[0], dict):
        given = dict(values[0])
    else:
        names = HandRefinerArgs.field_names()
        if len(values) > len(names):
            raise ValueError(f"HandRefiner takes at most {len(names)} args ({', '.join(names)}), got {len(values)}")
        given = {name: value for name, value in zip(names, values) if value is not None}
    unknown = sorted(set(given) - set(HandRefinerArgs.__fields__))
    if unknown:
        raise ValueError(f"unknown HandRefiner args {unknown}; valid names: {', '.join(HandRefinerArgs.field_names())}")
    update = {name: _from_widget(name, value) for name, value in given.items()}
    return HandRefinerArgs(**{**defaults.dict(), **update})


def apply_xyz_overrides(args: HandRefinerArgs, p: Any) -> HandRefinerArgs:
    overrides = getattr(p, XYZ_ATTRIBUTE, None) or {}
    return HandRefinerArgs(**{**args.dict(), **overrides}) if overrides else args


def xyz_setter(name: str) -> Callable[[Any, Any, Any], None]:
    """An XYZ-grid `apply(p, x, xs)`: records the override on p. The grid copies p shallowly per cell, so a new
    dict is made each time instead of changing one that other cells share."""

    def apply(p: Any, x: Any, xs: Any) -> None:
        setattr(p, XYZ_ATTRIBUTE, {**(getattr(p, XYZ_ATTRIBUTE, None) or {}), name: x})

    return apply


def xyz_confirm(name: str) -> Callable[[Any, Sequence[Any]], None]:
    """An XYZ-grid `confirm(p, xs)`: every value must be valid for the field, before the grid starts."""

    def confirm(p: Any, xs: Sequence[Any]) -> None:
        for x in xs:
            HandRefinerArgs(**{name: x})

    return confirm


def xyz_confirm_choice(name: str, choices: Callable[[], Sequence[str]]) -> Callable[[Any, Sequence[Any]], None]:
    """An XYZ-grid `confirm(p, xs)` for a field whose values are the WebUI's names (samplers, schedule types)."""
    title = HandRefinerArgs.__fields__[name].field_info.title   # "HandRefiner sampler"

    def confirm(p: Any, xs: Sequence[Any]) -> None:
        known = list(choices())
        for x in xs:
            if x not in known:
                raise RuntimeError(f"{title}: unknown {x!r}; choose from {', '.join(known)}")

    return confirm


def register_xyz_axes(xyz_module: Any, samplers: Callable[[], Sequence[str]] = lambda: [BUILTIN_SAMPLER],
                      schedulers: Callable[[], Sequence[str]] = lambda: [AUTOMATIC_SCHEDULER]) -> bool:
    """Adds "[HandRefiner] …" axes to the XYZ-grid script's options (once); `samplers()` and `schedulers()` are
    the names the sampler and schedule-type axes offer (read when the grid's UI asks)."""
    from ..ui import field_label

    options = xyz_module.axis_options
    if any(str(getattr(o, "label", "")).startswith("[HandRefiner]") for o in options):
        return False
    named = {"mode": lambda: ["fixed", "adaptive"], "sampler": samplers, "scheduler": schedulers}
    for name in XYZ_FIELDS:
        label = f"[HandRefiner] {field_label(name)}"
        choices = named.get(name)
        if choices is None:
            options.append(xyz_module.AxisOption(label, float, xyz_setter(name), confirm=xyz_confirm(name)))
            continue
        # mode's values are the field's own; the sampler's and schedule's are the WebUI's names
        confirm = xyz_confirm(name) if name == "mode" else xyz_confirm_choice(name, choices)
        options.append(xyz_module.AxisOption(label, str, xyz_setter(name), confirm=confirm, choices=choices))
    return True


# ---- infotext ------------------------------------------------------------------------------------------------

def fill_pasted_defaults(infotext: str, params: Dict[str, Any],
                         controlnet_fallback: Callable[[HandRefinerArgs], HandRefinerArgs] = lambda args: args
                         ) -> None:
    """script_callbacks.on_infotext_pasted: an infotext holds only the HandRefiner settings that differ from the
    defaults (plus on/strength/mode); fill in the others, in the widgets' format, so that pasting restores every
    widget. An image made without HandRefiner switches the accordion off. An infotext without a ControlNet key (the
    default one was used) gets `controlnet_fallback`'s choice: the ControlNet on disk when the default name is not."""
    enabled_key = HandRefinerArgs.__fields__["enabled"].field_info.title
    try:
        args = HandRefinerArgs.from_infotext(params)
    except (ValidationError, ValueError, TypeError) as e:
        log.warning("HandRefiner: cannot read the pasted parameters (%s)", describe_error(e))
        return
    if args is None:
        params[enabled_key] = False
        return
    if HandRefinerArgs.__fields__["controlnet"].field_info.title not in params:
        args = controlnet_fallback(args)
    for name, info in HandRefinerArgs.__fields__.items():
        params[info.field_info.title] = to_widget(name, getattr(args, name))


def paste_field_names() -> List[str]:
    return [f.field_info.title for f in HandRefinerArgs.__fields__.values()]


# ---- UI description ----------------------------------------------------------------------------------------

def layout() -> List[Tuple[str, List[str]]]:
    """(container, fields) top to bottom; container is "row:…", "column:…" or "accordion:<label>"."""
    fields = HandRefinerArgs.field_names()[1:]
    out = [(group, [n for n in names if n in fields]) for group, names in GROUPS.items()]
    grouped = {n for _, names in out for n in names}
    out.append((OTHER_GROUP, [n for n in fields if n not in grouped]))
    return [(group, names) for group, names in out if names]


def layout_fields() -> List[str]:
    """The fields in the order the widgets are made (top to bottom)."""
    return [name for _, names in layout() for name in names]


def args_from_named_values(names: Sequence[str], values: Sequence[Any],
                           defaults: HandRefinerArgs = HandRefinerArgs()) -> HandRefinerArgs:
    """HandRefinerArgs from some widgets' values, the widgets named by their fields (in any order)."""
    return args_from_script_args([dict(zip(names, values))], defaults)


@dataclass(frozen=True)
class WidgetSpec:
    name: str
    value: Any
    choices: Optional[List[str]] = None   # for dropdowns whose choices are model files


def widget_specs(defaults: HandRefinerArgs, controlnets: Sequence[str], checkpoints: Sequence[str],
                 samplers: Sequence[str] = (BUILTIN_SAMPLER,), schedulers: Sequence[str] = (AUTOMATIC_SCHEDULER,)
                 ) -> List[WidgetSpec]:
    """What each widget after the accordion shows, in layout order."""
    specs = []
    for name in layout_fields():
        value = to_widget(name, getattr(defaults, name))
        choices = None
        if name == "controlnet":
            choices = sorted(set(controlnets) | {defaults.controlnet})
        elif name == "inpaint_checkpoint":
            choices = [CURRENT_MODEL] + sorted(set(checkpoints) | ({defaults.inpaint_checkpoint} - {""}))
        elif name == "sampler":
            choices = list(samplers) + [n for n in [defaults.sampler] if n not in samplers]
        elif name == "scheduler":
            choices = list(schedulers) + [n for n in [defaults.scheduler] if n not in schedulers]
        specs.append(WidgetSpec(name, value, choices))
    return specs


def setting_spec(name: str) -> Tuple[Any, str, Dict[str, Any]]:
    """(default, label, gradio kwargs) of the settings entry holding field `name`'s default."""
    info = HandRefinerArgs.__fields__[name]
    label = info.field_info.title.replace("HandRefiner ", "Default ")
    kind = info.type_
    kwargs: Dict[str, Any] = {}
    if name in ("mode", "mesh_model"):
        kwargs["choices"] = list(info.outer_type_.__args__)
    elif isinstance(kind, type) and issubclass(kind, (int, float)) and not issubclass(kind, bool):
        kwargs = {"minimum": getattr(kind, "ge", 0), "maximum": getattr(kind, "le", 1),
                  "step": 1 if issubclass(kind, int) else 0.01}
    return info.default, label, kwargs


# ---- model folders -------------------------------------------------------------------------------------------

@dataclass
class ModelFolders:
    controlnet_dirs: List[Path]
    checkpoint_dirs: List[Path]
    mesh_dirs: List[Path]

    def describe(self, kind: str) -> str:
        return ", ".join(str(d) for d in getattr(self, f"{kind}_dirs"))


def model_folders(models_path: Any, handrefiner_models_dir: Any = None, controlnet_dir: Any = None,
                  ckpt_dir: Any = None, extensions_dir: Any = None) -> ModelFolders:
    """Where the WebUI keeps models: --handrefiner-models-dir first, then models/handrefiner; ControlNets also in
    models/ControlNet, sd-webui-controlnet's --controlnet-dir and (when installed) its own models folder;
    checkpoints in --ckpt-dir and models/Stable-diffusion."""
    models = Path(models_path)
    own = [Path(handrefiner_models_dir)] if handrefiner_models_dir else []
    own.append(models / "handrefiner")
    shared_controlnets = [models / "ControlNet"] + ([Path(controlnet_dir)] if controlnet_dir else [])
    if extensions_dir and (Path(extensions_dir) / "sd-webui-controlnet").is_dir():
        shared_controlnets.append(Path(extensions_dir) / "sd-webui-controlnet" / "models")
    return ModelFolders(
        controlnet_dirs=_unique(own + shared_controlnets),
        checkpoint_dirs=_unique(([Path(ckpt_dir)] if ckpt_dir else []) + [models / "Stable-diffusion"] + own),
        mesh_dirs=_unique(own))


def _unique(paths: Sequence[Path]) -> List[Path]:
    seen: List[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen


# ---- the WebUI's model as an SDModel -------------------------------------------------------------------------

class UnsupportedModelError(HandRefinerFailure):
    pass


class WebUISDModel:
    """The WebUI's LatentDiffusion (`shared.sd_model`) behind the `SDModel` protocol, through its own methods
    (get_learned_conditioning, apply_model, encode/decode_first_stage), so its VAE choice, precision casts and
    --lowvram/--medvram module offloading all apply. Its prompts go through prompts.WebUIPromptEncoder."""

    def __init__(self, ldm: Any, device: Any, dtype: torch.dtype, devices: Any = None, opts: Any = None) -> None:
        check_sd1_model(ldm)
        self.ldm = ldm
        self.unet = ldm.model.diffusion_model
        self.in_channels = int(self.unet.in_channels)
        # With "downcast alphas_cumprod" the WebUI keeps the exact schedule aside; the sampler wants the exact one.
        alphas = getattr(ldm, "alphas_cumprod_original", None)
        self.alphas_cumprod = (alphas if alphas is not None else ldm.alphas_cumprod).detach().to("cpu", torch.float64)
        self._device = torch.device(device)
        self._dtype = dtype
        self._devices = devices   # modules.devices: dtype_vae, without_autocast (None: neither)
        self._opts = opts         # shared.opts: the VAE precision fallback settings

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @torch.no_grad()
    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        """The prompts through the WebUI's conditioning as one batch (the sampler uses webui.prompts' encoders,
        which encode each prompt alone)."""
        return self.ldm.get_learned_conditioning(list(prompts)).to(self._device, self._dtype)

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's own precision (as the WebUI decodes: it can change at run time, see upcast_vae_after_nans)."""
        return vae_dtype(self.ldm)

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        def encode() -> torch.Tensor:
            posterior = self.ldm.encode_first_stage(x.to(self._device, self.vae_dtype))
            # The posterior's mode, not a sample: the known region must not depend on the global RNG.
            latent = posterior.mode() if hasattr(posterior, "mode") else posterior
            return self.ldm.get_first_stage_encoding(latent)

        return self._without_vae_nans(encode, "encoding").to(self._device, self._dtype)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        if torch.isnan(z).any():
            raise HandRefinerFailure(
                "the UNet produced NaNs (not enough precision for this picture); try Settings → Stable Diffusion → "
                "\"Upcast cross attention layer to float32\", or start the WebUI with --no-half")
        without_autocast = getattr(self._devices, "without_autocast", contextlib.nullcontext)

        def decode() -> torch.Tensor:
            with without_autocast():  # as the WebUI decodes: unstable VAEs misbehave even in float32 under autocast
                return self.ldm.decode_first_stage(z.to(self._device, self.vae_dtype))

        return self._without_vae_nans(decode, "decoding").clamp(-1, 1)

    def _without_vae_nans(self, run: Callable[[], torch.Tensor], what: str) -> torch.Tensor:
        """`run()`, once more after upcast_vae_after_nans when its result holds NaNs (a half-precision VAE's
        overflow, which would composite a black hand)."""
        out = run()
        if not torch.isnan(out).any():
            return out
        upcast_vae_after_nans(self.ldm, self._devices, self._opts, what)
        out = run()
        if torch.isnan(out).any():
            raise HandRefinerFailure(f"the VAE produced NaNs while {what} in {self.vae_dtype} too")
        return out

    @torch.no_grad()
    def apply_unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                   c_concat: Optional[torch.Tensor] = None) -> torch.Tensor:
        if c_concat is None and self.in_channels != x.shape[1]:
            raise ValueError(f"the UNet takes {self.in_channels} channels: pass c_concat (mask + masked latent)")
        cond = {"c_crossattn": [context]}
        if c_concat is not None:
            cond["c_concat"] = [c_concat]
        return self.ldm.apply_model(x, t, cond)


def upcast_vae_after_nans(ldm: Any, devices: Any, opts: Any, what: str = "decoding") -> torch.dtype:
    """What the WebUI does when its VAE makes NaNs (processing.decode_latent_batch): with "Automatically convert
    VAE to bfloat16" the VAE becomes bfloat16, otherwise with "Automatically revert VAE to 32-bit floats" (on by
    default) float32; `devices.dtype_vae` follows, so the WebUI's own decodes use it from now on too. Returns the
    new dtype; raises HandRefinerFailure (the image is kept) when neither setting applies or the VAE already has
    that precision (e.g. --no-half-vae)."""
    if getattr(opts, "auto_vae_precision_bfloat16", False):
        dtype, setting = torch.bfloat16, "Automatically convert VAE to bfloat16"
    elif getattr(opts, "auto_vae_precision", True):
        dtype, setting = torch.float32, "Automatically revert VAE to 32-bit floats"
    else:
        raise HandRefinerFailure(f"the VAE produced NaNs while {what} (not enough precision); turn on Settings → "
                                 "VAE → \"Automatically revert VAE to 32-bit floats\" or start the WebUI with "
                                 "--no-half-vae")
    current = vae_dtype(ldm)
    if current == dtype:
        raise HandRefinerFailure(f"the VAE produced NaNs while {what} in {current}; try another VAE")
    log.warning("HandRefiner: a tensor with NaNs was produced in the VAE (%s in %s); converting the VAE to %s and "
                "retrying, as the WebUI does (setting \"%s\"; to always start with a 32-bit VAE, use "
                "--no-half-vae)", what, current, dtype, setting)
    if devices is not None:
        devices.dtype_vae = dtype
    ldm.first_stage_model.to(dtype)
    return dtype


def vae_dtype(ldm: Any) -> torch.dtype:
    """The precision of the WebUI model's VAE: its weights' (devices.dtype_vae, which can change at run time)."""
    return next(ldm.first_stage_model.parameters()).dtype


def inpainting_checkpoints(listing: ModelListing) -> List[str]:
    """The checkpoints of the models folders that are SD 1.x inpainting models by name ("inpaint" in it) and, for
    .safetensors, by their header (sd_model.looks_like_sd1_inpainting), sorted."""
    from ..sd_model import looks_like_sd1_inpainting

    return sorted(name for name, path in listing.checkpoints.items()
                  if "inpaint" in name.lower() and looks_like_sd1_inpainting(path))


def sd1_problem(ldm: Any) -> Optional[str]:
    """Why the WebUI's loaded model cannot run (and encode prompts for) HandRefiner's SD 1.x pass; None when it
    can."""
    if ldm is None:
        return "no Stable Diffusion model is loaded"
    for flag, name in (("is_sdxl", "SDXL"), ("is_sd3", "SD3"), ("is_sd2", "SD 2.x")):
        if getattr(ldm, flag, False):
            return f"the loaded model is {name}; HandRefiner's ControlNet is for SD 1.5"
    unet = getattr(getattr(ldm, "model", None), "diffusion_model", None)
    if unet is None or not hasattr(unet, "input_blocks") or not hasattr(ldm, "get_learned_conditioning"):
        return f"the loaded model ({type(ldm).__name__}) is not an ldm LatentDiffusion"
    return None


def check_sd1_model(ldm: Any) -> None:
    problem = sd1_problem(ldm)
    if problem is not None:
        raise UnsupportedModelError(f"{problem}; load an SD 1.5 checkpoint or choose an SD 1.5 inpainting "
                                    "checkpoint in HandRefiner's checkpoint menu")


@dataclass(frozen=True)
class ModelChoice:
    """What refines the hands: `checkpoint` (a name from the models folders; "" = the WebUI's loaded model),
    whether the prompts go through the WebUI's model, and `note`, said in the result when the choice is not the
    plain one the user made (HandRefiner chose the checkpoint, or the model is weaker at this)."""
    checkpoint: str
    webui_prompts: bool
    note: str = ""
    chosen_by_handrefiner: bool = False


def choose_model(inpaint_checkpoint: str, ldm: Any, inpainting_checkpoints: Callable[[], Sequence[str]],
                 webui_model_only: bool = False) -> ModelChoice:
    """The checkpoint the user chose; else the WebUI's model when it is an SD 1.x inpainting model; else (a
    regular 4-channel SD 1.x model, or SDXL/SD 2/SD 3) the first SD 1.x inpainting checkpoint of the models
    folders (`inpainting_checkpoints()`, sorted); else a regular SD 1.x model inpaints by blending only (said);
    else UnsupportedModelError. Prompts go through the WebUI's model whenever it is SD 1.x. `webui_model_only`
    (the WebUI's samplers sample its loaded model): no checkpoint is chosen, and the error says so."""
    problem = sd1_problem(ldm)
    if inpaint_checkpoint:
        return ModelChoice(inpaint_checkpoint, problem is None)
    if problem is None and int(ldm.model.diffusion_model.in_channels) == 9:
        return ModelChoice("", True)
    found = [] if webui_model_only else list(inpainting_checkpoints())
    if found:
        why = "the current model is not an inpainting model" if problem is None else problem
        return ModelChoice(found[0], problem is None, f"{why}; used the inpainting checkpoint {found[0]}", True)
    if problem is None:
        return ModelChoice("", True, "regular model: blend-only inpainting, results are weaker")
    if webui_model_only:
        raise UnsupportedModelError(f"{problem}; the WebUI's samplers sample its loaded model: load an SD 1.5 "
                                    f"checkpoint, or choose the sampler {BUILTIN_SAMPLER}, which refines with an SD 1.5 "
                                    "inpainting checkpoint of the models folders")
    raise UnsupportedModelError(f"{problem}; put an SD 1.5 inpainting checkpoint (a file name with 'inpainting' "
                                "in it) in models/Stable-diffusion or choose one in HandRefiner's checkpoint menu")


# ---- progress, interrupt, skip -------------------------------------------------------------------------------

class WebUIProgress:
    """Counts HandRefiner's sampling steps as one extra job in the WebUI's progress (the bar under the image and
    the console's "Total progress"), as the WebUI does for its hires pass."""

    def __init__(self, state: Any, total_tqdm: Any = None) -> None:
        self.state = state
        self.total_tqdm = total_tqdm
        self._counted_total = False

    def begin(self) -> None:
        self.state.job_count = max(int(self.state.job_count), 0) + 1
        self.state.textinfo = "HandRefiner"
        self.state.sampling_step = 0

    def step(self, done: int, total: int) -> None:
        if not self._counted_total:
            self._counted_total = True
            self._add_to_console_total(total)
        self.state.sampling_steps = total
        self.state.sampling_step = done
        if self.total_tqdm is not None:
            self.total_tqdm.update()

    def end(self) -> None:
        self.state.nextjob()

    def should_stop(self) -> bool:
        """Interrupt, Skip and "Stop generating" (state.stopping_generation: the Interrupt button while more
        images are to come, with "Don't Interrupt in the middle" on) all end the pass before its next step."""
        return bool(self.state.interrupted or self.state.skipped or getattr(self.state, "stopping_generation", False))

    def add_pass(self, steps: int) -> None:
        """A WebUI sampling pass of `steps` steps is about to run: its sampler moves the bars itself
        (state.sampling_step, one console update per step); only the console's total needs the steps."""
        self._add_to_console_total(steps)

    def _add_to_console_total(self, steps: int) -> None:
        bar = getattr(self.total_tqdm, "_tqdm", None)
        if bar is not None and bar.total is not None:
            self.total_tqdm.updateTotal(bar.total + steps)


# ---- the environment the glue hands in -----------------------------------------------------------------------

@dataclass
class WebUIEnv:
    sd_model: Callable[[], Any]               # -> shared.sd_model (read at use: it changes when the user switches)
    device: Any                               # modules.devices.device
    dtype: torch.dtype                        # modules.devices.dtype_unet
    autocast: Callable[[], ContextManager]    # the WebUI's sampling precision context
    torch_gc: Callable[[], None]
    folders: ModelFolders
    state: Any = None                         # shared.state (None: the API, no progress bar)
    total_tqdm: Any = None
    keep_models_on_device: bool = False       # False: HandRefiner's own models go back to the CPU after each image
    offload_to_cpu: bool = False              # --lowvram / --medvram
    devices: Any = None                       # modules.devices (dtype_vae, without_autocast)
    opts: Any = None                          # shared.opts
    sampling: Any = None                      # sampling.WebUIModules: the WebUI's own samplers (None: none)
    prompt_parser: Any = None                 # modules.prompt_parser
    extra_networks: Any = None                # modules.extra_networks (parse_prompt)


@dataclass
class ImageJob:
    """One generated image of a WebUI job."""
    image: Any                                # PIL image
    prompt: str
    negative_prompt: str
    seed: int
    p: Any = None                             # the job's StableDiffusionProcessing


@dataclass
class ImageOutcome:
    image: Any                                # the refined image, or the input when nothing was done
    message: str
    refined: bool
    infotext: Dict[str, Any] = field(default_factory=dict)
    previews: List[Tuple[str, Any]] = field(default_factory=list)   # (suffix, PIL image)


def job_for_image(p: Any, image: Any) -> ImageJob:
    """The prompt, negative prompt and seed of the image `p.batch_index` of the current batch."""
    i = int(getattr(p, "batch_index", 0) or 0)
    seeds = getattr(p, "seeds", None) or []
    if i < len(seeds):
        seed = seeds[i]
    else:
        index = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + i
        all_seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", -1)]
        seed = all_seeds[min(index, len(all_seeds) - 1)]
    return ImageJob(image=image, prompt=_pick(getattr(p, "prompts", None), i, getattr(p, "prompt", "")),
                    negative_prompt=_pick(getattr(p, "negative_prompts", None), i, getattr(p, "negative_prompt", "")),
                    seed=int(seed), p=p)


def _pick(items: Optional[Sequence[str]], i: int, fallback: Any) -> str:
    if items:
        return str(items[min(i, len(items) - 1)])
    return fallback if isinstance(fallback, str) else (fallback[0] if fallback else "")


# ---- the refiner -------------------------------------------------------------------------------------------

class WebUIRefiner:
    """HandRefiner inside the WebUI: the always-on script's per-image work and the REST API's service
    (`service.HandRefinerService`), over the WebUI's loaded model. Holds HandRefiner's own models (one ControlNet,
    at most one chosen checkpoint, the mesh model), on the CPU between images unless asked to keep them."""

    def __init__(self, env_factory: Callable[[], WebUIEnv]) -> None:
        self.env_factory = env_factory
        self._models = ModelSlots()
        self._busy = threading.Lock()

    # -- HandRefinerService ------------------------------------------------------------------------------

    def listing(self) -> ModelListing:
        env = self.env_factory()
        folders = env.folders
        listing = build_listing(folders.controlnet_dirs, folders.checkpoint_dirs, folders.mesh_dirs)
        listing.samplers, listing.schedulers = sampling_names(env)
        return listing

    def default_controlnet(self) -> Optional[str]:
        names = self.listing().controlnets
        preferred = HandRefinerArgs().controlnet
        if preferred in names:
            return preferred
        hand = sorted(n for n in names if "hand" in n.lower())
        return hand[0] if hand else None

    def perceive(self, image: np.ndarray, args: HandRefinerArgs) -> Any:
        from ..perception import perceive

        env = self.env_factory()
        try:
            return perceive(image, args, *self._mesh_model(args, env))
        finally:
            self._release(env)

    def refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any = None,
               prompt: str = "", negative_prompt: Optional[str] = None, progress: Optional[WebUIProgress] = None,
               job: Any = None) -> Any:
        """pipeline.refine_image with the WebUI's model (or a checkpoint: choose_model) on the WebUI's device: the
        built-in sampler, or the WebUI's own sampling for a WebUI sampler (`job`: the job's processing object). A
        job's negative prompt is used as it is; without a job (the API, the editor: None) the official one."""
        return self._refine(image, args, seed, perception, prompt, negative_prompt, progress, job)[0]

    def _refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any, prompt: str,
                negative_prompt: Optional[str], progress: Optional[WebUIProgress], job: Any
                ) -> Tuple[Any, ModelChoice]:
        """refine(), and the model choice; a choice's note is added to the message of a result that refined."""
        from ..pipeline import refine_image

        env = self.env_factory()
        try:
            engine = self._webui_engine(args, env, job, progress)
            mesh_model, mesh_warning = self._mesh_model(args, env)
            # The WebUI's sampling (engine) keeps its own precision, prompt handling and progress.
            builtin = engine is None
            with self._models_on_device(args, env, webui_model_only=not builtin) as (sd, controlnet, choice), \
                    torch.no_grad(), env.autocast() if builtin else contextlib.nullcontext():
                result = refine_image(image, sd, controlnet, args, prompt=prompt, negative_prompt=negative_prompt,
                                      seed=seed, mesh_model=mesh_model, perception=perception,
                                      progress=progress.step if progress and builtin else None,
                                      should_stop=progress.should_stop if progress else None, sample_fn=engine,
                                      mesh_warning=mesh_warning)
            if not builtin and result.hands:
                result.message += f" with the WebUI's {describe_sampler(args)}"
            if choice.note and result.hands:
                result.message = f"{result.message} ({choice.note})"
            return result, choice
        finally:
            self._release(env)

    def _webui_engine(self, args: HandRefinerArgs, env: WebUIEnv, job: Any, progress: Optional[WebUIProgress]
                      ) -> Any:
        """sampling.WebUISampling for a WebUI sampler; None for the built-in one."""
        if args.sampler == BUILTIN_SAMPLER:
            return None
        from .sampling import WebUISampling

        if env.sampling is None:
            raise HandRefinerFailure(f"this WebUI's samplers are not available to HandRefiner; choose the sampler "
                                     f"{BUILTIN_SAMPLER}")
        if args.inpaint_checkpoint:
            raise HandRefinerFailure(f"the WebUI's samplers sample the WebUI's loaded model, not the chosen "
                                     f"checkpoint {args.inpaint_checkpoint!r}: choose the sampler {BUILTIN_SAMPLER} "
                                     f"for it, or load it as the WebUI's model and choose {CURRENT_MODEL}")
        try:
            return WebUISampling(env.sampling, args.sampler, args.scheduler, job=job,
                                 on_pass=progress.add_pass if progress else None)
        except ValueError as e:
            raise HandRefinerFailure(str(e)) from None

    # -- the always-on script ------------------------------------------------------------------------------

    def process_image(self, job: ImageJob, args: HandRefinerArgs) -> ImageOutcome:
        """Refines one generated image. Never raises: on any failure the image is kept and the outcome's message
        says why (also logged). Re-entrant calls (the inner pass reaching the script again) are refused."""
        infotext = args.infotext()
        if not self._busy.acquire(blocking=False):
            message = "skipped: HandRefiner is already running (re-entry)"
            return ImageOutcome(job.image, message, False, {**infotext, RESULT_KEY: message})
        progress = None
        try:
            env = self.env_factory()
            progress = WebUIProgress(env.state, env.total_tqdm) if env.state is not None else None
            if progress is not None:
                progress.begin()
            seed = args.seed if args.seed >= 0 else job.seed
            result, choice = self._refine(np.asarray(job.image.convert("RGB")), args, seed, None, job.prompt,
                                          job.negative_prompt, progress, job.p)
            outcome = outcome_from_result(job, args, result)
            if choice.chosen_by_handrefiner and result.hands:
                outcome.infotext[MODEL_USED_KEY] = choice.checkpoint
            outcome.infotext = {**infotext, **outcome.infotext}
            log.info("HandRefiner: %s", outcome.message)
            return outcome
        except Exception as e:  # the user's image must survive anything HandRefiner does
            message = failure_message(e)
            if isinstance(e, (HandRefinerFailure, ModelNameError, FileNotFoundError, DetectorUnavailable,
                              MeshModelError)):
                log.warning("HandRefiner: %s", message)
            else:
                log.exception("HandRefiner: %s", message)
            return ImageOutcome(job.image, message, False, {**infotext, RESULT_KEY: message})
        finally:
            if progress is not None:
                progress.end()
            self._busy.release()

    # -- models ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _models_on_device(self, args: HandRefinerArgs, env: WebUIEnv, webui_model_only: bool = False
                          ) -> Iterator[Tuple[Any, Any, ModelChoice]]:
        """The SD model (its prompts through prompts' encoders), the ControlNet, and the model choice
        (choose_model; `webui_model_only` for the WebUI's samplers)."""
        from .prompts import OwnPromptEncoder, WebUIPromptEncoder, WithPromptEncoder

        listing = self.listing()
        controlnet = self._controlnet(args.controlnet, listing, env)
        ldm = env.sd_model()
        choice = choose_model(args.inpaint_checkpoint, ldm, lambda: inpainting_checkpoints(listing), webui_model_only)
        scheduling = dict(steps=args.steps, use_old_scheduling=bool(getattr(env.opts, "use_old_scheduling", False)))
        if choice.checkpoint:
            model = self._checkpoint(choice.checkpoint, listing, env)
            model.to(env.device)
        else:
            model = WebUISDModel(ldm, env.device, env.dtype, env.devices, env.opts)
        encoder = WebUIPromptEncoder(ldm, env.prompt_parser, env.extra_networks, **scheduling) \
            if choice.webui_prompts else OwnPromptEncoder(model, env.prompt_parser, env.extra_networks, **scheduling)
        controlnet.to(env.device)
        with _without_controlnet_extension_hook(model.unet):
            yield WithPromptEncoder(model, encoder), controlnet, choice

    def _release(self, env: WebUIEnv) -> None:
        """After each image: HandRefiner's own models back to the CPU (unless kept), the device's cache freed."""
        if not env.keep_models_on_device or env.offload_to_cpu:
            for model in self._models.models():
                if isinstance(model, torch.nn.Module):
                    model.to("cpu")
        env.torch_gc()

    def _controlnet(self, name: str, listing: ModelListing, env: WebUIEnv) -> Any:
        from ..controlnet import load_controlnet

        try:
            path = resolve_name(name, listing.controlnets, "ControlNet")
        except ModelNameError as e:
            raise HandRefinerFailure(f"{e}{_controlnet_hint(name, env.folders)}") from None
        return self._models.get("controlnet", (path, env.dtype), lambda: load_controlnet(path, "cpu", env.dtype))

    def _checkpoint(self, name: str, listing: ModelListing, env: WebUIEnv) -> Any:
        from ..sd_model import find_config, load_sd_checkpoint

        try:
            path = resolve_name(name, listing.checkpoints, "checkpoint")
        except ModelNameError as e:
            raise HandRefinerFailure(f"{e}; the checkpoints HandRefiner can load are in "
                                     f"{env.folders.describe('checkpoint')}") from None
        return self._models.get("checkpoint", (path, env.dtype),
                            lambda: load_sd_checkpoint(path, find_config(path), "cpu", env.dtype))

    def _mesh_model(self, args: HandRefinerArgs, env: WebUIEnv) -> Tuple[Any, str]:
        """(model, warning) for the settings, on the WebUI's device (back to the CPU after the image, like the
        ControlNet) and, on a GPU, in its precision. MeshModelError (the image is kept, the message in the
        infotext) names each missing or wrong file and where to get it."""
        on_gpu = torch.device(env.device).type == "cuda"
        model, warning = self._models.mesh_model(args.mesh_model, env.folders.mesh_dirs, args.mesh_fallback,
                                                 "cpu", env.dtype if on_gpu else torch.float32)
        if isinstance(model, torch.nn.Module):
            model.to(env.device)
        if warning:
            log.warning("HandRefiner: %s", warning)
        return model, warning


def sampling_names(env: WebUIEnv) -> Tuple[List[str], List[str]]:
    """(samplers, schedule types) `sampler` and `scheduler` may name: the built-in sampler, and with the WebUI's
    sampling at hand every sampler and schedule type it lists."""
    if env.sampling is None:
        return [BUILTIN_SAMPLER], [AUTOMATIC_SCHEDULER]
    from .sampling import all_sampler_names, scheduler_choices

    return [BUILTIN_SAMPLER] + all_sampler_names(env.sampling), scheduler_choices(env.sampling)


def describe_sampler(args: HandRefinerArgs) -> str:
    """ "Euler a" or "DPM++ 2M (Karras)": the sampler, and the schedule type when it is not Automatic."""
    return args.sampler + (f" ({args.scheduler})" if args.scheduler != AUTOMATIC_SCHEDULER else "")


def _controlnet_hint(name: Any, folders: ModelFolders) -> str:
    """Where to put the HandRefiner ControlNet, after "not an available model"; nothing after an error about the
    name itself (a path, not a string), which says what to give instead."""
    try:
        check_name_safe(name, "ControlNet")
    except ModelNameError:
        return ""
    return (f". Put the HandRefiner ControlNet (control_sd15_inpaint_depth_hand_fp16, from {DEFAULT_CONTROLNET_URL}) "
            f"in one of: {folders.describe('controlnet')}")


@contextlib.contextmanager
def _without_controlnet_extension_hook(unet: Any) -> Iterator[None]:
    """sd-webui-controlnet replaces `unet.forward` for the whole job when one of its units is on (keeping the
    original as `unet._original_forward`); its control is for the full image, not HandRefiner's hand crop. Our own
    control is hooks on the UNet's modules, which run under either forward; this only sets the original forward
    back for the duration of HandRefiner's pass."""
    patched = unet.__dict__.get("forward")
    original = getattr(unet, "_original_forward", None)
    if patched is None or original is None:
        yield
        return
    unet.forward = original
    try:
        yield
    finally:
        unet.forward = patched


def outcome_from_result(job: ImageJob, args: HandRefinerArgs, result: Any) -> ImageOutcome:
    from PIL import Image

    from ..pipeline import meshes_infotext, tried_infotext

    refined = bool(result.hands)
    strengths = sorted({f"{h.strength:g}" for h in result.hands})
    summary = result.message + (f" (strength {', '.join(strengths)})" if strengths and args.mode == "adaptive" else "")
    previews = []   # only for a refined image: without hands they would be all black
    if args.save_depth and refined:
        previews.append(("-handrefiner-depth", Image.fromarray(result.perception.depth).convert("RGB")))
    if args.save_mask and refined:
        previews.append(("-handrefiner-mask", Image.fromarray(result.perception.mask).convert("RGB")))
    image = Image.fromarray(result.image) if refined else job.image
    return ImageOutcome(image, summary, refined,
                        {RESULT_KEY: summary, **tried_infotext(result.hands), **meshes_infotext(result.hands)},
                        previews)


def failure_message(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__  # one line (a mesh error lists files on lines)
    if "out of memory" in text.lower() or type(error).__name__ == "OutOfMemoryError":
        return ("failed: out of GPU memory; the image is kept. Lower HandRefiner's crop resolution, refine hands "
                "one after another, or start the WebUI with --medvram")
    return f"failed: {text}; the image is kept"


# ---- the script's hooks --------------------------------------------------------------------------------------

SavePreview = Callable[[Any, ImageJob, str], None]   # (PIL image, job, file-name suffix)


def postprocess_image(refiner: WebUIRefiner, p: Any, pp: Any, script_args: Sequence[Any], defaults: HandRefinerArgs,
                      save_preview: Optional[SavePreview] = None) -> Optional[ImageOutcome]:
    """Script.postprocess_image_after_composite: refines `pp.image` (the final image, img2img's original already
    pasted back outside the inpaint mask) in place when enabled, records the settings and the outcome in
    the image's generation parameters, shows the outcome under the gallery (p.comment) and collects the depth/mask
    previews (shown after the job by `add_previews`, saved beside the image when the job saves images)."""
    try:
        args = apply_xyz_overrides(args_from_script_args(script_args, defaults), p)
    except (ValidationError, ValueError, TypeError) as e:
        if _asks_enabled(script_args):
            message = f"invalid settings ({describe_error(e)}); the image is kept"
            log.warning("HandRefiner: %s", message)
            _comment(p, message)
            p.extra_generation_params[RESULT_KEY] = message
        return None
    if not args.enabled:
        return None
    job = job_for_image(p, pp.image)
    outcome = refiner.process_image(job, boxes_on_output(args, p, pp.image.size))
    pp.image = outcome.image
    p.extra_generation_params.update({**outcome.infotext, **args.infotext()})  # the boxes as the user gave them
    _comment(p, outcome.message)
    if outcome.previews:
        previews = getattr(p, PREVIEWS_ATTRIBUTE, None)
        if previews is None:
            previews = []
            setattr(p, PREVIEWS_ATTRIBUTE, previews)
        for suffix, image in outcome.previews:
            previews.append(image)
            if save_preview is not None and _saves_samples(p):
                try:
                    save_preview(image, job, suffix)
                except OSError as e:  # a full disk must not cost the generated image
                    log.warning("HandRefiner: could not save the %s preview: %s", suffix, e)
    return outcome


def boxes_on_output(args: HandRefinerArgs, p: Any, size: Tuple[int, int]) -> HandRefinerArgs:
    """img2img: user boxes are drawn on the input image, which the WebUI resized to the output size (exact for
    "Just resize"); txt2img boxes are already in the output's pixels."""
    init_images = getattr(p, "init_images", None)
    if not args.boxes or not init_images:
        return args
    (in_w, in_h), (out_w, out_h) = init_images[0].size, size
    if (in_w, in_h) == (out_w, out_h):
        return args
    sx, sy = out_w / in_w, out_h / in_h
    return args.copy(update={"boxes": [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in args.boxes]})


def add_previews(p: Any, processed: Any) -> int:
    """Script.postprocess: appends the collected previews to the job's output (gallery and API images)."""
    previews = getattr(p, PREVIEWS_ATTRIBUTE, None) or []
    if not previews:
        return 0
    infotexts = getattr(processed, "infotexts", None)
    info = infotexts[getattr(processed, "index_of_first_image", 0)] if infotexts else getattr(processed, "info", "")
    processed.images.extend(previews)
    if infotexts is not None:
        infotexts.extend([info] * len(previews))
    setattr(p, PREVIEWS_ATTRIBUTE, [])
    return len(previews)


def describe_error(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)


def find_xyz_module(scripts_data: Sequence[Any]) -> Any:
    """The XYZ-grid script's module among the loaded scripts (the WebUI names script modules by file name)."""
    for data in scripts_data:
        if getattr(data.script_class, "__module__", "") == "xyz_grid.py" and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _asks_enabled(script_args: Sequence[Any]) -> bool:
    first = script_args[0] if script_args else None
    return bool(first.get("enabled")) if isinstance(first, dict) else first is True


def _comment(p: Any, message: str) -> None:
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"HandRefiner: {message}")


def _saves_samples(p: Any) -> bool:
    saves = getattr(p, "save_samples", None)
    return bool(saves()) if callable(saves) else not getattr(p, "do_not_save_samples", False)
