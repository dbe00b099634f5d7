"""Putting the ControlNet's residuals into a UNet, whoever runs that UNet, and proving at run time that they got in.

A ControlNet adds residual k < n (n = 12 for SD 1.5) to the skip connection of input block k, which output block
n-1-k concatenates after the upsampled path, and its last residual to the middle block's output (ldm's
`ControlledUnetModel`). The UNets the extension meets run those blocks differently:

- ldm's `UNetModel` (A1111) calls each block, a `TimestepEmbedSequential`, which calls its layers;
- the old Forge backend's `ldm_patched` `UNetModel` (reForge) never calls a block: `forward_timestep_embed`
  iterates a block's layers and calls each;
- another extension may replace the UNet's `forward` (sd-webui-controlnet, tiling extensions), usually calling
  the blocks or their layers again.

What all of them do is call the layers, as modules. So the residuals go in through hooks on two kinds of layer:
a pre-hook on the first layer of each output block (its input is cat([h, skip]): the residual is added to the skip
part) and a hook on the middle block's last layer (added to its output). A pre-hook on the UNet computes the
residuals for each call from that call's input; a hook after the call checks that every residual was added
exactly once. Nothing is subclassed or replaced: the hooks come off on exit and leave the UNet as it was.

Run-time check (`ControlNotAppliedError`, never a silent no-op): a UNet call that did not add every residual
once; the UNet's layers running outside a call of the UNet module (its pre-hook bypassed); a context with
non-zero strength in which the UNet was never called (the sampler ran another UNet), unless the sampler stopped
early (`ControlHandle.stopped`). `ControlHandle.added` counts the residuals added.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lib_handrefiner.controlnet import HINT_DOWNSCALE, ControlNet

Strength = Union[float, int, torch.Tensor, Sequence[float]]


class ControlNotAppliedError(RuntimeError):
    """The ControlNet's residuals did not reach the UNet the hand pass sampled; the message says which and why."""


@dataclass
class ControlHandle:
    """Live control settings of an `inject_control` context; `strength` and `hint` may be reassigned inside it."""
    controlnet: ControlNet
    hint: torch.Tensor
    strength: Strength
    residuals: Optional[List[torch.Tensor]] = None   # of the UNet call in progress (None between calls, at strength 0)
    calls: int = 0                                    # UNet calls that computed control and added all of it
    unet_calls: int = 0                               # UNet calls, with or without control
    added: int = 0                                    # residuals added to the UNet, over all calls
    hint_encodings: int = 0                           # times the hint encoder ran (once per hint)
    stopped: bool = False                             # the sampler stopped before calling the UNet: not an error
    _in_call: bool = field(default=False, repr=False)
    _pending: set = field(default_factory=set, repr=False)   # residual indices not yet added in this call
    _encoded: Optional[Tuple[torch.Tensor, tuple, Optional[torch.Tensor], torch.Tensor]] = field(default=None,
                                                                                                 repr=False)

    def encoded_hint(self) -> torch.Tensor:
        """The hint encoder's output for the current hint (not yet tiled to the UNet batch), cached until the hint
        is reassigned or modified in place. The cache holds the hint itself: identity, not id(), decides. An
        in-place change shows in the tensor's version counter; an inference tensor (made under
        `torch.inference_mode`, as reForge runs its jobs) has none, so its cached copy is compared instead."""
        controlnet, hint = self.controlnet, self.hint
        inference = hint.is_inference()
        key = (None if inference else hint._version, controlnet.device, controlnet.dtype)
        cached = self._encoded
        if (cached is None or cached[0] is not hint or cached[1] != key
                or (inference and not torch.equal(cached[2], hint))):
            batch = hint if hint.dim() == 4 else hint.unsqueeze(0)
            encoded = controlnet.encode_hint(batch.to(controlnet.device, controlnet.dtype))
            self._encoded = (hint, key, hint.clone() if inference else None, encoded)
            self.hint_encodings += 1
        return self._encoded[3]


# ---- the residuals of one call -------------------------------------------------------------------------------

def _per_block_scales(strength: Strength, count: int) -> Optional[List[float]]:
    if isinstance(strength, (list, tuple)):
        if len(strength) != count:
            raise ValueError(f"per-block control strengths: got {len(strength)} values, this ControlNet has {count} "
                             "residuals (13 for SD 1.5); pass one float, a per-sample tensor, or one value per block")
        return [float(s) for s in strength]
    return None


def _batch_repeat(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Tile a batch to the UNet's batch when that is a multiple (CFG runs [cond; uncond] in one call)."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 0 or batch % tensor.shape[0]:
        raise ValueError(f"{what} batch {tensor.shape[0]} does not divide the UNet batch {batch}")
    return tensor.repeat(batch // tensor.shape[0], *([1] * (tensor.dim() - 1)))


def is_zero(strength: Strength) -> bool:
    if isinstance(strength, torch.Tensor):
        return bool((strength == 0).all())
    if isinstance(strength, (list, tuple)):
        return all(float(s) == 0 for s in strength)
    return float(strength) == 0


def compute_control(handle: ControlHandle, x: torch.Tensor, timesteps: torch.Tensor,
                    context: Optional[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    """The scaled residuals for one UNet call (x: the UNet's input; its first channels are the noisy latent),
    in the ControlNet's device and dtype; None at strength 0, so the UNet then runs exactly as without control."""
    if is_zero(handle.strength):
        return None
    controlnet = handle.controlnet
    batch, latent_h, latent_w = x.shape[0], x.shape[-2], x.shape[-1]
    hint = handle.hint
    if hint.dim() == 3:
        hint = hint.unsqueeze(0)
    if tuple(hint.shape[-2:]) != (latent_h * HINT_DOWNSCALE, latent_w * HINT_DOWNSCALE):
        raise ValueError(f"control hint is {tuple(hint.shape[-2:])} pixels but the latent is {latent_h}×{latent_w}: "
                         f"the hint must be the image size, {latent_h * HINT_DOWNSCALE}×{latent_w * HINT_DOWNSCALE}")
    device, dtype = controlnet.device, controlnet.dtype
    guided_hint = _batch_repeat(handle.encoded_hint(), batch, "control hint")
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.dim() == 0:
        timesteps = timesteps.expand(batch)
    context = None if context is None else context.to(device, dtype)
    residuals = controlnet(x[:, :controlnet.config.in_channels].to(device, dtype), None, timesteps, context,
                           guided_hint=guided_hint)
    blocks = _per_block_scales(handle.strength, len(residuals))
    if blocks is not None:
        return [r * s for r, s in zip(residuals, blocks)]
    if isinstance(handle.strength, torch.Tensor) and handle.strength.dim() > 0:
        per_sample = _batch_repeat(handle.strength.reshape(-1).to(device, dtype), batch, "control strength")
        return [r * per_sample.view(-1, 1, 1, 1) for r in residuals]
    scale = float(handle.strength)
    return [r * scale for r in residuals]


# ---- where the residuals go --------------------------------------------------------------------------------------

def _split_unet_call(args: tuple, kwargs: dict) -> Tuple[torch.Tensor, Any, Any]:
    """x, timesteps, context of a call UNetModel.forward(x, timesteps=None, context=None, ...): ldm's and
    ldm_patched's share these first three parameters."""
    x = args[0] if args else kwargs["x"]
    timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps")
    context = args[2] if len(args) > 2 else kwargs.get("context")
    return x, timesteps, context


def _first_layer(block: nn.Module) -> nn.Module:
    """A block's first layer (ldm's and ldm_patched's TimestepEmbedSequential are Sequentials)."""
    return block[0] if isinstance(block, nn.Sequential) else block


def _last_layer(block: nn.Module) -> nn.Module:
    return block[-1] if isinstance(block, nn.Sequential) else block


def _check_pairing(unet: nn.Module, controlnet: ControlNet) -> None:
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if getattr(unet, name, None) is None:
            raise TypeError(f"{type(unet).__name__} has no {name}: it is not an SD UNet (ldm or ldm_patched "
                            "UNetModel), which HandRefiner's ControlNet needs")
    count = controlnet.config.num_residuals
    if len(unet.input_blocks) != count - 1 or len(unet.output_blocks) != count - 1:
        raise ValueError(f"this ControlNet ({count - 1} encoder blocks, {controlnet.config.model_channels} channels) "
                         f"does not pair with this UNet ({len(unet.input_blocks)} input blocks): use a ControlNet "
                         "made for the same base model (SD 1.5 for HandRefiner)")


def _describe(unet: nn.Module) -> str:
    return f"{type(unet).__module__}.{type(unet).__qualname__}"


def _where(index: int, count: int) -> str:
    return "the middle block" if index == count - 1 else f"the skip of input block {index}"


@contextlib.contextmanager
def inject_control(unet: nn.Module, controlnet: ControlNet, hint: torch.Tensor,
                   strength: Strength = 1.0) -> Iterator[ControlHandle]:
    """Adds the ControlNet's residuals to every call of `unet` inside the context, and checks that they got in.

    hint: (B,3,H,W) in [0, 1] at image size (B divides the UNet batch: it is tiled, e.g. for CFG).
    strength: a float; a (B,) tensor of per-sample scales (tiled like the hint); or a list of per-block scales
    (one per residual, 13 for SD 1.5). Works with any UNet that runs its blocks' layers as modules (module
    docstring); raises ControlNotAppliedError when the residuals did not all reach it.
    """
    _check_pairing(unet, controlnet)
    handle = ControlHandle(controlnet=controlnet, hint=hint, strength=strength)
    count = controlnet.config.num_residuals
    skips = count - 1

    def take(index: int) -> Optional[torch.Tensor]:
        """Residual `index` of the call in progress, counted as added; None when this call has no control."""
        if handle.residuals is None:
            if not handle._in_call and not is_zero(handle.strength):
                raise ControlNotAppliedError(
                    f"the layers of the UNet ({_describe(unet)}) ran without a call of the UNet module, so "
                    "HandRefiner's ControlNet could not compute its residuals: something calls its forward "
                    "directly (bypassing its hooks); the hand pass would have sampled without control")
            return None
        if index not in handle._pending:
            raise ControlNotAppliedError(f"HandRefiner's ControlNet residual for {_where(index, count)} would be "
                                         f"added twice in one call of the UNet ({_describe(unet)}): a layer ran "
                                         "twice; the result would be wrong")
        handle._pending.discard(index)
        handle.added += 1
        return handle.residuals[index]

    def before_unet(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x, timesteps, context = _split_unet_call(args, kwargs)
        handle.unet_calls += 1
        handle._in_call = True
        handle.residuals = compute_control(handle, x, timesteps, context)
        handle._pending = set(range(count)) if handle.residuals is not None else set()

    def after_unet(module: nn.Module, args: tuple, output: Any) -> None:
        handle._in_call = False
        if handle.residuals is None:
            return
        missing = sorted(handle._pending)
        handle.residuals, handle._pending = None, set()
        if missing:
            raise ControlNotAppliedError(
                f"HandRefiner's ControlNet did not reach the UNet ({_describe(unet)}): {count - len(missing)} of "
                f"{count} residuals were added in this call; missing: {', '.join(_where(i, count) for i in missing)}."
                " This UNet does not run the first layer of each output block and the last layer of the middle "
                "block as modules (another extension may have replaced its forward); the hand pass is stopped "
                "instead of sampling without control. Disable that extension for the hand pass, or report it")
        handle.calls += 1

    def after_middle(module: nn.Module, args: tuple, output: torch.Tensor) -> Optional[torch.Tensor]:
        residual = take(count - 1)
        return None if residual is None else output + residual.to(output.device, output.dtype)

    def before_output_block(index: int):
        skip_index = skips - 1 - index

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Optional[Tuple[tuple, dict]]:
            residual = take(skip_index)
            if residual is None:
                return None
            positional = bool(args)
            h = args[0] if positional else kwargs["x"]
            width = residual.shape[1]  # the skip is the second part of cat([h, skip], dim=1)
            h = torch.cat([h[:, :-width], h[:, -width:] + residual.to(h.device, h.dtype)], dim=1)
            return ((h, *args[1:]), kwargs) if positional else (args, {**kwargs, "x": h})
        return hook

    removers = [unet.register_forward_pre_hook(before_unet, with_kwargs=True),
                unet.register_forward_hook(after_unet),
                _last_layer(unet.middle_block).register_forward_hook(after_middle)]
    removers += [_first_layer(block).register_forward_pre_hook(before_output_block(i), with_kwargs=True)
                 for i, block in enumerate(unet.output_blocks)]
    try:
        yield handle
    finally:
        for remover in removers:
            remover.remove()
        handle.residuals, handle._pending, handle._in_call = None, set(), False
    if handle.unet_calls == 0 and not handle.stopped and not is_zero(handle.strength):
        raise ControlNotAppliedError(
            f"the hand pass never called the UNet HandRefiner's ControlNet is attached to ({_describe(unet)}): the "
            "sampler ran another UNet (this WebUI keeps its UNet elsewhere), so the hands were sampled without "
            "control")
