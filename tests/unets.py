"""Tiny SD UNets for the ControlNet tests: ldm's own `UNetModel`, and UNets that run it otherwise.

`LayerwiseUNet` is the shape of the old Forge backend's (reForge's `ldm_patched`) UNet, written here from its
interface: the same modules and weights as ldm's, but its forward never calls a block; it iterates each block's
layers and calls each (as `forward_timestep_embed` does), and it takes a `control` dict ({"middle": [...],
"output": [...]}, popped from the end, as that backend's `apply_control` does) and a `transformer_options` dict.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel

TINY_UNET = dict(image_size=8, out_channels=4, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
                 channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, transformer_depth=1,
                 context_dim=64, use_checkpoint=False, legacy=False)


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh ldm networks output exactly zero (zero-initialised output convs); that would hide every bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def build_unet(in_channels: int, seed: int = 0, cls=UNetModel) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise(cls(in_channels=in_channels, **TINY_UNET), seed)


def inputs(in_channels: int, batch: int = 2, h: int = 8, w: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, h, w, generator=g)
    t = torch.tensor([999, 37, 500, 1][:batch])
    context = torch.randn(batch, 77, 64, generator=g)
    hint = torch.rand(batch, 3, h * 8, w * 8, generator=g)
    return x, t, context, hint


def controlled_unet_reference(unet, residuals, x, t, context):
    """ldm's UNetModel.forward written out, with control added as ControlledUnetModel does: the middle residual
    to the middle block's output, residual k to the skip of input block k."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    residuals = list(residuals)
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    hs, h = [], x
    for block in unet.input_blocks:
        h = block(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context) + residuals.pop()
    for block in unet.output_blocks:
        h = block(torch.cat([h, hs.pop() + residuals.pop()], dim=1), emb, context)
    return unet.out(h)


def as_control(residuals: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    """A ControlNet's residuals in the old Forge backend's `control` layout: the skips' in input-block order (the
    UNet pops the last first), the middle one alone."""
    return {"input": [], "middle": [residuals[-1]], "output": list(residuals[:-1])}


def _run_layers(block, h, emb, context, transformer_options, call=lambda layer, *a: layer(*a)):
    """One block, layer by layer, each by its kind (what the block's own forward would do, without calling it)."""
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import TimestepBlock

    for layer in block:
        if isinstance(layer, TimestepBlock):
            h = call(layer, h, emb)
        elif isinstance(layer, SpatialTransformer):
            h = call(layer, h, context)
        else:
            h = call(layer, h)
        transformer_options["layers"] = transformer_options.get("layers", 0) + 1
    return h


def _add_control(h: torch.Tensor, control: Optional[dict], name: str) -> torch.Tensor:
    if control and control.get(name):
        h = h + control[name].pop().to(h)
    return h


class LayerwiseUNet(UNetModel):
    """ldm's UNetModel, run as the old Forge backend runs its own: layer by layer, with a `control` argument."""

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        from ldm.modules.diffusionmodules.util import timestep_embedding

        options = {} if transformer_options is None else transformer_options
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = _add_control(self._run(block, h, emb, context, options), control, "input")
            hs.append(h)
        h = _add_control(self._run(self.middle_block, h, emb, context, options), control, "middle")
        for block in self.output_blocks:
            skip = _add_control(hs.pop(), control, "output")
            h = self._run(block, torch.cat([h, skip], dim=1), emb, context, options)
        return self.out(h.type(x.dtype))

    def _run(self, block, h, emb, context, options):
        return _run_layers(block, h, emb, context, options)


class BypassingUNet(LayerwiseUNet):
    """Runs its output blocks' layers through `layer.forward` (no module call, so no hook fires): a UNet the
    ControlNet cannot reach there."""

    def _run(self, block, h, emb, context, options):
        if any(block is b for b in self.output_blocks):
            return _run_layers(block, h, emb, context, options, call=lambda layer, *a: layer.forward(*a))
        return super()._run(block, h, emb, context, options)
