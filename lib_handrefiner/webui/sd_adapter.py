"""The WebUI's loaded model behind the `SDModel` protocol (its VAE's precision fallback included), and which model
refines the hands (the WebUI's, or an SD 1.x inpainting checkpoint of the models folders)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

from lib_handrefiner.models_registry import ModelListing
from lib_handrefiner.settings import BUILTIN_SAMPLER
from lib_handrefiner.webui.backend import LdmBackend, UnsupportedBackendError, backend_for
from lib_handrefiner.webui.env import HandRefinerFailure

log = logging.getLogger("handrefiner")


class UnsupportedModelError(HandRefinerFailure):
    pass


class WebUISDModel:
    """The WebUI's LatentDiffusion (`shared.sd_model`) behind the `SDModel` protocol, through its own methods
    (get_learned_conditioning, apply_model, encode/decode_first_stage), so its VAE choice, precision casts and
    --lowvram/--medvram module offloading all apply. Its prompts go through prompts.WebUIPromptEncoder. What differs
    between WebUI backends (VAE encode, VAE precision, where the UNet is) goes through `backend`."""

    def __init__(self, ldm: Any, device: Any, dtype: torch.dtype, devices: Any = None, opts: Any = None,
                 backend: Optional[LdmBackend] = None) -> None:
        check_sd1_model(ldm)
        self.ldm = ldm
        self.backend = backend or backend_for(ldm)
        self.unet = self.backend.unet(ldm)
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
        return self.backend.vae_dtype(self.ldm)

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        def encode() -> torch.Tensor:
            return self.backend.encode_first_stage(self.ldm, x.to(self._device, self.vae_dtype))

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
        upcast_vae_after_nans(self.ldm, self._devices, self._opts, what, self.backend)
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


def upcast_vae_after_nans(ldm: Any, devices: Any, opts: Any, what: str = "decoding",
                          backend: Optional[LdmBackend] = None) -> torch.dtype:
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
    backend = backend or backend_for(ldm)
    current = backend.vae_dtype(ldm)
    if current == dtype:
        raise HandRefinerFailure(f"the VAE produced NaNs while {what} in {current}; try another VAE")
    log.warning("HandRefiner: a tensor with NaNs was produced in the VAE (%s in %s); converting the VAE to %s and "
                "retrying, as the WebUI does (setting \"%s\"; to always start with a 32-bit VAE, use "
                "--no-half-vae)", what, current, dtype, setting)
    if devices is not None:
        devices.dtype_vae = dtype
    backend.set_vae_dtype(ldm, dtype)
    return dtype


def vae_dtype(ldm: Any) -> torch.dtype:
    """The precision of the WebUI model's VAE: its weights' (devices.dtype_vae, which can change at run time)."""
    return backend_for(ldm).vae_dtype(ldm)


def inpainting_checkpoints(listing: ModelListing) -> List[str]:
    """The checkpoints of the models folders that are SD 1.x inpainting models by name ("inpaint" in it) and, for
    .safetensors, by their header (sd_model.looks_like_sd1_inpainting), sorted."""
    from lib_handrefiner.sd_model import looks_like_sd1_inpainting

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
    try:
        backend = backend_for(ldm)
    except UnsupportedBackendError as e:
        return str(e)
    unet = getattr(getattr(ldm, "model", None), "diffusion_model", None) and backend.unet(ldm)
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
    if problem is None and int(backend_for(ldm).unet(ldm).in_channels) == 9:
        return ModelChoice("", True)
    found = [] if webui_model_only else list(inpainting_checkpoints())
    if found:
        why = "the current model is not an inpainting model" if problem is None else problem
        return ModelChoice(found[0], problem is None, f"{why}; used the inpainting checkpoint {found[0]}", True)
    if problem is None:
        return ModelChoice("", True, "regular model: blend-only inpainting, results are weaker")
    if webui_model_only:
        raise UnsupportedModelError(f"{problem}; the WebUI's samplers sample its loaded model: load an SD 1.5 "
                                    f"checkpoint, or choose the sampler {BUILTIN_SAMPLER}, which refines with an SD "
                                    "1.5 inpainting checkpoint of the models folders")
    raise UnsupportedModelError(f"{problem}; put an SD 1.5 inpainting checkpoint (a file name with 'inpainting' "
                                "in it) in models/Stable-diffusion or choose one in HandRefiner's checkpoint menu")
