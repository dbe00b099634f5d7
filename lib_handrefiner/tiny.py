"""Tiny random models with the real architectures and file layouts, for tests, benchmarks and `serve` without
weights. Outputs are noise; the code paths (loading, hooks, sampling, compositing) are the real ones.

`ensure_tiny_models(dir)` writes, once (later calls reuse the files):
- `tiny-inpaint.safetensors` + `.yaml`: an SD 1.x inpainting checkpoint (9-channel UNet) in the single-file ldm
  layout, the same architecture as ../shared/models/tiny-sd15-inpaint;
- `tiny-sd15.safetensors` + `.yaml`: the same with a regular 4-channel UNet;
- `clip-tiny/`: the tiny CLIP text config and the shipped tokenizer (the yamls name it);
- `tiny-controlnet.safetensors`: a ControlNet initialised from the inpainting UNet, with random zero convs.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_handrefiner.safe_write import write_file
from lib_handrefiner.sd_model import TOKENIZER_DIR, SDConfig, build_model, ldm_state_dict

TINY_SEED = 1234
TINY_UNET = dict(image_size=8, in_channels=9, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                 num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=64, use_checkpoint=False, legacy=False)
TINY_VAE = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)
TINY_TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_FOLDER = "clip-tiny"

YAML_TEMPLATE = """model:
  target: ldm.models.diffusion.ddpm.{target}
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 8
    channels: 4
    conditioning_key: {conditioning_key}
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
{unet}
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
{vae}
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        version: {clip}
"""


@dataclass(frozen=True)
class TinyModelPaths:
    checkpoint: Path           # 9-channel inpainting checkpoint (.safetensors, yaml beside it)
    config: Path
    controlnet: Path
    regular_checkpoint: Path   # 4-channel checkpoint (yaml beside it)
    regular_config: Path


def tiny_config(in_channels: int = 9) -> SDConfig:
    return SDConfig(unet={**TINY_UNET, "in_channels": in_channels}, vae=dict(TINY_VAE), embed_dim=4,
                    text=dict(TINY_TEXT), source="tiny")


def make_non_degenerate(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fresh ldm networks have zero output convs and identity norms, which would hide bugs (a zero UNet output
    makes every sampler look right). Give them small random values instead."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, norms) and sub.weight is not None:
                sub.weight.copy_(1.0 + 0.1 * torch.randn(sub.weight.shape, generator=generator))
                sub.bias.copy_(0.1 * torch.randn(sub.bias.shape, generator=generator))
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


def _yaml(in_channels: int) -> str:
    def block(d: dict, indent: int) -> str:
        return "\n".join(" " * indent + f"{k}: {json.dumps(v)}" for k, v in d.items())

    unet = {**TINY_UNET, "in_channels": in_channels}
    inpaint = in_channels == 9
    return YAML_TEMPLATE.format(target="LatentInpaintDiffusion" if inpaint else "LatentDiffusion",
                                conditioning_key="hybrid" if inpaint else "crossattn",
                                unet=block(unet, 8), vae=block(TINY_VAE, 10), clip=CLIP_FOLDER)


def _write_clip_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_DIR.iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copyfile(f, folder / f.name)
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **TINY_TEXT}
    write_file(folder / "config.json", json.dumps(config, indent=2))  # last: the folder is complete


def _write_checkpoint(path: Path, in_channels: int, seed: int) -> dict:
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(tiny_config(in_channels))
    make_non_degenerate(model, generator)
    state = {k: v.contiguous() for k, v in ldm_state_dict(model).items()}
    write_file(path, save(state))
    write_file(path.with_suffix(".yaml"), _yaml(in_channels))
    return {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}


def _write_controlnet(path: Path, unet_state: dict, seed: int) -> None:
    from lib_handrefiner.controlnet import ControlNetConfig, controlnet_from_unet, save_controlnet

    config = ControlNetConfig.from_state_dict(unet_state)
    controlnet = controlnet_from_unet(unet_state, config, random_zero_convs=True, seed=seed)
    save_controlnet(controlnet, path)  # atomic


def ensure_tiny_models(directory) -> TinyModelPaths:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = TinyModelPaths(checkpoint=directory / "tiny-inpaint.safetensors",
                           config=directory / "tiny-inpaint.yaml",
                           controlnet=directory / "tiny-controlnet.safetensors",
                           regular_checkpoint=directory / "tiny-sd15.safetensors",
                           regular_config=directory / "tiny-sd15.yaml")
    if not (directory / CLIP_FOLDER / "config.json").is_file():
        _write_clip_folder(directory / CLIP_FOLDER)
    unet_state = None
    if not (paths.checkpoint.is_file() and paths.config.is_file()):
        unet_state = _write_checkpoint(paths.checkpoint, 9, TINY_SEED)
    if not (paths.regular_checkpoint.is_file() and paths.regular_config.is_file()):
        _write_checkpoint(paths.regular_checkpoint, 4, TINY_SEED + 1)
    if not paths.controlnet.is_file():
        if unet_state is None:
            from safetensors.torch import load_file

            prefix = "model.diffusion_model."
            unet_state = {k[len(prefix):]: v for k, v in load_file(str(paths.checkpoint)).items()
                          if k.startswith(prefix)}
        _write_controlnet(paths.controlnet, unet_state, TINY_SEED + 2)
    return paths
