"""The tiny test checkpoint in the shape of the WebUI's `shared.sd_model` (an ldm LatentDiffusion), as far as
HandRefiner uses it: `model.diffusion_model` (the UNet), `apply_model(x, t, cond)` with ldm's cond dict,
`get_learned_conditioning`, `encode_first_stage` (a DiagonalGaussianDistribution), `get_first_stage_encoding`,
`decode_first_stage`, `alphas_cumprod`, `scale_factor`, and the attributes the WebUI's samplers and processing
read (`cond_stage_key`, `parameterization`, `is_sdxl_inpaint`, `dtype`, `first_stage_model.dtype`). The networks
are lib_handrefiner.sd_model's real ldm ones; the VAE decodes to NaNs in float16 (the SD 1.x VAE's half-precision
overflow, always here).
"""
from __future__ import annotations

import torch
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from torch import nn


class DiffusionWrapper(nn.Module):
    def __init__(self, unet: nn.Module, conditioning_key: str) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat: list = None, c_crossattn: list = None):
        context = torch.cat(c_crossattn, 1)
        if self.conditioning_key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=context)
        return self.diffusion_model(x, t, context=context)


class FirstStage(nn.Module):
    def __init__(self, sd) -> None:
        super().__init__()
        self.encoder, self.decoder = sd.encoder, sd.decoder
        self.quant_conv, self.post_quant_conv = sd.quant_conv, sd.post_quant_conv

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        if self.post_quant_conv.weight.dtype == torch.float16:
            # The SD 1.x VAE overflows in half precision on some pictures (NaNs: a black image unless the WebUI
            # upcasts and decodes again); this stand-in always does.
            return torch.full((z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8), float("nan"), dtype=torch.float16)
        return self.decoder(self.post_quant_conv(z))

    @property
    def dtype(self):
        return next(self.parameters()).dtype


class TinyLatentDiffusion(nn.Module):
    """Wraps a lib_handrefiner.sd_model.LdmSDModel (loaded from the tiny checkpoint)."""

    def __init__(self, sd) -> None:
        super().__init__()
        self.model = DiffusionWrapper(sd.unet, "hybrid" if sd.in_channels == 9 else "crossattn")
        self.first_stage_model = FirstStage(sd)
        self.text = sd
        self.scale_factor = sd.scale_factor
        self.register_buffer("alphas_cumprod", sd.alphas_cumprod.to(torch.float32))
        self.is_sdxl = False
        self.is_sdxl_inpaint = False
        self.cond_stage_key = "txt"
        self.parameterization = "eps"
        self.conditioning_calls = []   # the batches of prompts encoded

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def get_learned_conditioning(self, c):
        self.conditioning_calls.append(list(c))
        return self.text.encode_text(list(c))

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        else:
            z = encoder_posterior
        return self.scale_factor * z

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)
