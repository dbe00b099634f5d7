"""reForge's `shared.sd_model` as HandRefiner meets it, from its interface (the old Forge backend keeps A1111's
`LatentDiffusion` shell around ldm_patched models): `forge_objects` (its VAE with its own `vae_dtype`, its UNet
patcher), `model.diffusion_model` a UNet that runs its blocks' layers itself (unets.LayerwiseUNet), an
`encode_first_stage` that returns the scaled latent as a Tensor made under inference mode and a
`get_first_stage_encoding` that passes it through. The networks are the tiny checkpoint's (lib_handrefiner.sd_model).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from unets import LayerwiseUNet


class ForgeVAE(nn.Module):
    """The tiny checkpoint's VAE pieces (`first_stage_model`)."""

    def __init__(self, sd) -> None:
        super().__init__()
        self.encoder, self.decoder = sd.encoder, sd.decoder
        self.quant_conv, self.post_quant_conv = sd.quant_conv, sd.post_quant_conv


class ForgeShapedModel(nn.Module):
    def __init__(self, sd) -> None:
        super().__init__()
        self.sd = sd
        unet = LayerwiseUNet(**sd.config.unet)   # the same architecture, run layer by layer
        unet.load_state_dict(sd.unet.state_dict())
        self.model = nn.Module()
        self.model.diffusion_model = unet.eval()
        self.first_stage_model = ForgeVAE(sd)
        self.forge_objects = SimpleNamespace(unet=SimpleNamespace(kind="unet patcher"),
                                             vae=SimpleNamespace(vae_dtype=torch.float32,
                                                                 first_stage_model=self.first_stage_model))
        self.alphas_cumprod = sd.alphas_cumprod.to(torch.float32)
        self.is_sd1, self.is_sdxl, self.is_sd2, self.is_sd3 = True, False, False, False
        self.get_first_stage_encoding = lambda latent: latent

    def get_learned_conditioning(self, prompts):
        return self.sd.encode_text(list(prompts))

    def apply_model(self, x, t, cond):
        x = torch.cat([x] + cond.get("c_concat", []), dim=1)
        return self.model.diffusion_model(x, t, context=torch.cat(cond["c_crossattn"], 1))

    @torch.inference_mode()
    def encode_first_stage(self, x):
        vae = self.forge_objects.vae
        moments = vae.first_stage_model.quant_conv(vae.first_stage_model.encoder(x.to(vae.vae_dtype)))
        return (moments[:, :moments.shape[1] // 2] * self.sd.scale_factor).to(x)

    @torch.inference_mode()
    def decode_first_stage(self, z):
        vae = self.forge_objects.vae
        z = z.to(vae.vae_dtype) / self.sd.scale_factor
        return vae.first_stage_model.decoder(vae.first_stage_model.post_quant_conv(z)).to(z)


def forge_2_shaped_model():
    """Forge 2's model (its own backend, no LatentDiffusion): forge_objects, no model.diffusion_model."""
    return SimpleNamespace(forge_objects=SimpleNamespace(unet=None, vae=None), is_sd1=True)
