"""One adapter per WebUI backend: everything HandRefiner does with the WebUI's loaded model goes through one.

- `LdmBackend`: AUTOMATIC1111 1.9/1.10 (and forks that keep its backend): the model is ldm's `LatentDiffusion`,
  its VAE encode returns a posterior (`DiagonalGaussianDistribution`) that the model then scales, the UNet is
  ldm's `UNetModel` at `model.diffusion_model`, and --lowvram/--medvram move modules by their own hooks.
- `ForgeBackend`: reForge and the old Forge backend (Forge before its 2024-08 rewrite): A1111's `LatentDiffusion`
  shell around `ldm_patched` models (`sd_model.forge_objects`): its encode returns the scaled latent itself (a
  Tensor, whose `.mode()` would be the statistical mode), the UNet at `model.diffusion_model` is ldm_patched's
  (it runs its blocks' layers itself; control_injection reaches it), the VAE keeps its precision in
  `forge_objects.vae.vae_dtype`, and models come onto the device through its model management.
- Forge 2's backend (Forge since 2024-08, Forge Neo: no ldm, no LatentDiffusion) has no adapter:
  `backend_for` names it, and the README says what blocks it.

The glue picks one per loaded model (`backend_for`); the model-management module is handed in (it is the WebUI's).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch


class UnsupportedBackendError(RuntimeError):
    """A WebUI backend HandRefiner has no adapter for; the message names it and what to use instead."""


class LdmBackend:
    """AUTOMATIC1111's ldm backend."""

    name = "AUTOMATIC1111 (ldm)"

    def unet(self, sd_model: Any) -> torch.nn.Module:
        return sd_model.model.diffusion_model

    def vae(self, sd_model: Any) -> torch.nn.Module:
        return sd_model.first_stage_model

    def vae_dtype(self, sd_model: Any) -> torch.dtype:
        """The VAE's own precision: its weights' (devices.dtype_vae, which can change at run time)."""
        return next(self.vae(sd_model).parameters()).dtype

    def set_vae_dtype(self, sd_model: Any, dtype: torch.dtype) -> None:
        self.vae(sd_model).to(dtype)

    def encode_first_stage(self, sd_model: Any, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] → the scaled latent, the posterior's mode (not a sample: the known region must not depend on
        the global RNG)."""
        posterior = sd_model.encode_first_stage(x)
        latent = posterior if isinstance(posterior, torch.Tensor) else posterior.mode()
        return sd_model.get_first_stage_encoding(latent)

    @contextlib.contextmanager
    def unet_ready(self, sd_model: Any) -> Iterator[None]:
        """The UNet where the WebUI samples it, for HandRefiner's own sampling loop (A1111: already there, or moved
        by --lowvram/--medvram's hooks when called)."""
        yield


class ForgeBackend(LdmBackend):
    """reForge / the old Forge backend (ldm_patched models in an A1111 LatentDiffusion shell)."""

    name = "reForge / Forge (ldm_patched)"

    def __init__(self, model_management: Any = None) -> None:
        self.model_management = model_management   # ldm_patched.modules.model_management (None: nothing to load)

    def set_vae_dtype(self, sd_model: Any, dtype: torch.dtype) -> None:
        vae = sd_model.forge_objects.vae
        vae.vae_dtype = dtype          # its encode/decode cast their input to this
        vae.first_stage_model.to(dtype)

    def encode_first_stage(self, sd_model: Any, x: torch.Tensor) -> torch.Tensor:
        latent = sd_model.encode_first_stage(x)   # already the scaled latent (its VAE's own encode)
        if not isinstance(latent, torch.Tensor):
            return super().encode_first_stage(sd_model, x)
        return latent.clone()   # made under inference_mode: a plain tensor can be used in autograd-free code

    @contextlib.contextmanager
    def unet_ready(self, sd_model: Any) -> Iterator[None]:
        """Its model management loads the UNet (with its LoRA patches) onto the device, as before its samplers."""
        if self.model_management is not None:
            self.model_management.load_models_gpu([sd_model.forge_objects.unet])
        yield


def is_forge_model(sd_model: Any) -> bool:
    return getattr(sd_model, "forge_objects", None) is not None


def backend_for(sd_model: Any, model_management: Optional[Any] = None) -> LdmBackend:
    """The adapter for the WebUI's loaded model: ForgeBackend for a Forge-family LatentDiffusion, LdmBackend for
    ldm's; UnsupportedBackendError for Forge 2's models (no `model.diffusion_model`: no LatentDiffusion)."""
    if sd_model is None or not is_forge_model(sd_model):
        return LdmBackend()
    if getattr(getattr(sd_model, "model", None), "diffusion_model", None) is None:
        raise UnsupportedBackendError(
            f"this WebUI's model ({type(sd_model).__module__}.{type(sd_model).__name__}) is Forge 2's backend (Forge "
            "since August 2024, Forge Neo), which HandRefiner does not support yet; use reForge or AUTOMATIC1111 "
            "1.10 (README: WebUI forks)")
    return ForgeBackend(model_management)
