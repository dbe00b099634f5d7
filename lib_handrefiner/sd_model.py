"""Single-file Stable Diffusion 1.x checkpoints (the original ldm layout) as a small `SDModel`.

A checkpoint such as `sd-v1-5-inpainting.ckpt` holds three networks under fixed prefixes:
`model.diffusion_model.*` (the UNet), `first_stage_model.*` (the KL autoencoder) and
`cond_stage_model.transformer.*` (the CLIP text model), plus the DDPM schedule buffers. The architecture comes
from the checkpoint's yaml (the ldm config format) or, without one, is inferred from the tensor shapes.

The sampler and the pipeline only need the `SDModel` protocol, so the WebUI glue can adapt its own
LatentDiffusion object to it instead of loading anything here.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import nn

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TOKENIZER_DIR = Path(__file__).parent / "data" / "clip_tokenizer"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@runtime_checkable
class SDModel(Protocol):
    """What the sampler and pipeline need from a Stable Diffusion model."""

    unet: nn.Module                 # the ldm UNetModel (ControlNet hooks attach to it)
    in_channels: int                # 9: inpainting UNet; 4: regular UNet
    alphas_cumprod: torch.Tensor    # (1000,) float64 or float32, on any device

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode_text(self, prompts: List[str]) -> torch.Tensor: ...

    def encode_image(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor: ...

    def apply_unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                   c_concat: Optional[torch.Tensor] = None) -> torch.Tensor: ...


class CheckpointError(ValueError):
    """A file that is not a loadable SD 1.x single-file checkpoint; the message says why and what to do."""


# ---- configuration ---------------------------------------------------------------------------------------------

SD15_UNET = dict(image_size=32, in_channels=9, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
SD15_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)
# openai/clip-vit-large-patch14's text tower, the text encoder of every SD 1.x model.
CLIP_VIT_L14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
                         num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)


@dataclass
class SDConfig:
    unet: Dict[str, Any]
    vae: Dict[str, Any]                   # the ldm `ddconfig`
    embed_dim: int
    text: Dict[str, Any]                  # transformers CLIPTextConfig kwargs
    scale_factor: float = 0.18215
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000
    tokenizer_dir: Path = field(default=TOKENIZER_DIR)
    source: str = "inferred"              # "yaml:<path>", "sd15" or "inferred"


def config_from_yaml(path: Path) -> SDConfig:
    from omegaconf import OmegaConf

    try:
        root = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        params = root["model"]["params"]
        unet = dict(params["unet_config"]["params"])
        first = params["first_stage_config"]["params"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not an ldm model config (missing {e}); use the yaml that came with the "
                              "checkpoint, e.g. v1-inpainting-inference.yaml") from None
    if params.get("parameterization", "eps") != "eps":
        raise CheckpointError(f"{path}: parameterization {params['parameterization']!r} (SD 2.x v-prediction) "
                              "is not supported; HandRefiner needs an SD 1.x (eps) model")
    unet.pop("use_fp16", None)      # the dtype is chosen at load time
    unet["use_checkpoint"] = False  # gradient checkpointing: training only
    text = dict(CLIP_VIT_L14_TEXT)
    tokenizer_dir = TOKENIZER_DIR
    version = str(((params.get("cond_stage_config") or {}).get("params") or {}).get("version", ""))
    local = path.parent / version if version else None
    if local is not None and (local / "config.json").is_file():
        text = _clip_config_from_folder(local)
        if (local / "vocab.json").is_file():
            tokenizer_dir = local
    return SDConfig(unet=unet, vae=dict(first["ddconfig"]), embed_dim=int(first["embed_dim"]), text=text,
                    scale_factor=float(params.get("scale_factor", 0.18215)),
                    linear_start=float(params.get("linear_start", 0.00085)),
                    linear_end=float(params.get("linear_end", 0.012)),
                    num_timesteps=int(params.get("timesteps", 1000)), tokenizer_dir=tokenizer_dir,
                    source=f"yaml:{path}")


def _clip_config_from_folder(folder: Path) -> Dict[str, Any]:
    import json

    raw = json.loads((folder / "config.json").read_text())
    keys = set(CLIP_VIT_L14_TEXT)
    return {k: raw[k] for k in keys if k in raw}


def infer_config(shapes: Mapping[str, torch.Size]) -> SDConfig:
    """The architecture from tensor shapes. Head counts are not stored in weights: SD 1.x sizes get SD 1.x's
    heads; other sizes get 8 UNet heads and 64-wide CLIP heads (give the yaml when that is wrong)."""
    unet = _infer_unet(shapes)
    vae, embed_dim = _infer_vae(shapes)
    text = _infer_text(shapes)
    sd15_like = (unet["model_channels"] == 320 and unet["context_dim"] == 768)
    if sd15_like:
        unet = {**SD15_UNET, "in_channels": unet["in_channels"]}
    return SDConfig(unet=unet, vae=vae, embed_dim=embed_dim, text=text, source="sd15" if sd15_like else "inferred")


def _shape(shapes: Mapping[str, torch.Size], key: str) -> torch.Size:
    if key not in shapes:
        raise CheckpointError(f"cannot infer the architecture: tensor {key!r} is missing; pass the checkpoint's "
                              "yaml (config_path / a .yaml beside the checkpoint)")
    return shapes[key]


def _infer_unet(shapes: Mapping[str, torch.Size]) -> Dict[str, Any]:
    p = UNET_PREFIX
    conv_in = _shape(shapes, p + "input_blocks.0.0.weight")
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    blocks = sorted({int(m.group(1)) for k in shapes for m in [re.match(re.escape(p) + r"input_blocks\.(\d+)\.", k)]
                     if m})
    # Downsample blocks hold a lone "op" conv; the others hold a ResBlock (index 0) and maybe attention (index 1).
    down = [b for b in blocks if p + f"input_blocks.{b}.0.op.weight" in shapes]
    levels = len(down) + 1
    num_res_blocks = (len(blocks) - 1 - len(down)) // levels
    channel_mult, attention_resolutions = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        out_ch = int(_shape(shapes, p + f"input_blocks.{first}.0.out_layers.3.weight")[0])
        channel_mult.append(out_ch // model_channels)
        if any(k.startswith(p + f"input_blocks.{first}.1.") for k in shapes):
            attention_resolutions.append(2 ** level)
    context_key = next((k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if context_key is None:
        raise CheckpointError("the UNet has no cross-attention (attn2.to_k): not a text-conditioned SD UNet")
    depth = 1 + max(int(m.group(1)) for k in shapes
                    for m in [re.match(re.escape(p) + r"input_blocks\.\d+\.1\.transformer_blocks\.(\d+)\.", k)] if m)
    proj_in = next((shapes[k] for k in shapes if k.startswith(p) and k.endswith(".proj_in.weight")), None)
    return dict(image_size=32, in_channels=in_channels, out_channels=int(_shape(shapes, p + "out.2.weight")[0]),
                model_channels=model_channels, attention_resolutions=attention_resolutions,
                num_res_blocks=num_res_blocks, channel_mult=channel_mult, num_heads=8,
                use_spatial_transformer=True, transformer_depth=depth, context_dim=int(shapes[context_key][1]),
                use_checkpoint=False, legacy=False,
                use_linear_in_transformer=proj_in is not None and len(proj_in) == 2)


def _infer_vae(shapes: Mapping[str, torch.Size]) -> tuple[Dict[str, Any], int]:
    p = VAE_PREFIX + "encoder."
    ch = int(_shape(shapes, p + "conv_in.weight")[0])
    levels = 1 + max(int(m.group(1)) for k in shapes for m in [re.match(re.escape(p) + r"down\.(\d+)\.", k)] if m)
    ch_mult = [int(_shape(shapes, p + f"down.{i}.block.0.conv2.weight")[0]) // ch for i in range(levels)]
    num_res_blocks = 1 + max(int(m.group(1)) for k in shapes
                             for m in [re.match(re.escape(p) + r"down\.0\.block\.(\d+)\.", k)] if m)
    z2 = int(_shape(shapes, p + "conv_out.weight")[0])
    embed_dim = int(_shape(shapes, VAE_PREFIX + "post_quant_conv.weight")[0])
    vae = dict(double_z=True, z_channels=z2 // 2, resolution=256, in_channels=3, out_ch=3, ch=ch, ch_mult=ch_mult,
               num_res_blocks=num_res_blocks, attn_resolutions=[], dropout=0.0)
    return vae, embed_dim


def _infer_text(shapes: Mapping[str, torch.Size]) -> Dict[str, Any]:
    p = TEXT_PREFIX + "text_model."
    vocab, hidden = _shape(shapes, p + "embeddings.token_embedding.weight")
    if hidden == CLIP_VIT_L14_TEXT["hidden_size"]:
        return dict(CLIP_VIT_L14_TEXT)
    layers = 1 + max(int(m.group(1)) for k in shapes
                     for m in [re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k)] if m)
    return {**CLIP_VIT_L14_TEXT, "vocab_size": int(vocab), "hidden_size": int(hidden), "projection_dim": int(hidden),
            "intermediate_size": int(_shape(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0]),
            "num_hidden_layers": layers, "num_attention_heads": max(1, int(hidden) // 64),
            "max_position_embeddings": int(_shape(shapes, p + "embeddings.position_embedding.weight")[0])}


# ---- reading -------------------------------------------------------------------------------------------------

def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file on the CPU: safetensors, or a pickle read by the restricted unpickler (no code
    runs; Lightning callbacks and other objects in a .ckpt become inert placeholders)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors or .ckpt file")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected one of "
                              f"{', '.join(CHECKPOINT_SUFFIXES)}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/garbage files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); re-download it") from None
    from lib_handrefiner.safe_pickle import load_state_dict

    try:
        return load_state_dict(path)
    except Exception as e:  # nothing in the file ran: the restricted unpickler only builds tensors and containers
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); download it "
                              "again, or use its .safetensors release") from None


def looks_like_sd1_inpainting(path: Path) -> bool:
    """Whether a checkpoint file is an SD 1.x inpainting model, without loading it: a .safetensors header with a
    9-channel UNet input and SD 1.x's CLIP text encoder. Other formats cannot be read cheaply and count as one
    (loading checks them)."""
    if Path(path).suffix.lower() != ".safetensors":
        return True
    from safetensors import safe_open

    key = UNET_PREFIX + "input_blocks.0.0.weight"
    try:
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            channels = f.get_slice(key).get_shape()[1] if key in keys else None
    except Exception:  # a truncated or foreign file: not a candidate
        return False
    return channels == 9 and any(k.startswith(TEXT_PREFIX) for k in keys)


def check_layout(state: Mapping[str, torch.Tensor], path: Path) -> None:
    keys = list(state)
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in keys):
        raise CheckpointError(f"{path} is a ControlNet, not a Stable Diffusion checkpoint; pass it as the ControlNet")
    if any(k.startswith(("down_blocks.", "unet.", "mid_block.")) for k in keys):
        raise CheckpointError(f"{path} is in the diffusers layout; HandRefiner loads single-file ldm checkpoints "
                              "(model.diffusion_model.*, like sd-v1-5-inpainting.ckpt)")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise CheckpointError(f"{path} is an SD 2.x checkpoint (OpenCLIP text encoder); HandRefiner needs SD 1.x")
    missing = [p for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX) if not any(k.startswith(p) for k in keys)]
    if missing:
        raise CheckpointError(f"{path} is not a single-file SD 1.x checkpoint: no tensors under "
                              f"{', '.join(m + '*' for m in missing)} (first keys: {keys[:3]})")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _text_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    text = _strip(state, TEXT_PREFIX)
    # position_ids is not a weight but 0..76; some merged checkpoints store it as floats a hair below the integers,
    # which the integer buffer would truncate (shifting every token's position), so the model keeps its own.
    # Checkpoints saved with old transformers lack the "text_model." level.
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.items()
            if not k.endswith("position_ids")}


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, prefix: str,
                 ignore: tuple[str, ...] = ()) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"the {what} has tensors of the wrong shape for its configuration: "
                              f"{str(e).splitlines()[1:3]}; pass the yaml that came with the checkpoint") from None
    missing = [k for k in result.missing_keys if not k.endswith(ignore)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(ignore)]
    if missing or unexpected:
        raise CheckpointError(
            f"the {what} does not match its configuration: {len(missing)} missing tensors "
            f"(e.g. {[prefix + k for k in missing[:3]]}), {len(unexpected)} unexpected (e.g. "
            f"{[prefix + k for k in unexpected[:3]]}); pass the yaml that came with the checkpoint")


# ---- the model ------------------------------------------------------------------------------------------------

def scaled_linear_alphas_cumprod(linear_start: float, linear_end: float, num_timesteps: int = 1000) -> torch.Tensor:
    """ᾱ_t of SD's "scaled linear" schedule: betas linear in sqrt space."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class LdmSDModel(nn.Module):
    """The three ldm networks of a single-file SD 1.x checkpoint behind the `SDModel` protocol."""

    def __init__(self, unet: nn.Module, encoder: nn.Module, decoder: nn.Module, quant_conv: nn.Module,
                 post_quant_conv: nn.Module, text_model: nn.Module, tokenizer: Any, scale_factor: float,
                 alphas_cumprod: torch.Tensor, config: SDConfig):
        super().__init__()
        self.unet, self.encoder, self.decoder = unet, encoder, decoder
        self.quant_conv, self.post_quant_conv, self.text_model = quant_conv, post_quant_conv, text_model
        self.tokenizer = tokenizer
        self.scale_factor = scale_factor
        # A plain attribute, not a buffer: `.to(float16)` must not round the schedule.
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.config = config

    @property
    def in_channels(self) -> int:
        return int(self.unet.in_channels)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), truncation=True, max_length=self.tokenizer.model_max_length,
                                padding="max_length", return_tensors="pt")
        hidden = self.text_model(input_ids=tokens.input_ids.to(self.device)).last_hidden_state
        return hidden.to(self.dtype)

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(x.to(self.device, self.vae_dtype)))
        mean = moments[:, : moments.shape[1] // 2]  # the posterior's mode: deterministic
        return (mean * self.scale_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.device, self.vae_dtype) / self.scale_factor
        return self.decoder(self.post_quant_conv(z)).clamp(-1, 1).to(self.dtype)

    @torch.no_grad()
    def apply_unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                   c_concat: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.in_channels != x.shape[1]:
            if c_concat is None:
                raise ValueError(f"the UNet takes {self.in_channels} channels: pass c_concat (mask + masked latent)")
            x = torch.cat([x, c_concat], dim=1)
        # ldm keeps parts of the UNet (the timestep embedding) in float32; autocast mixes the precisions the way
        # the WebUI does in half precision.
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.unet(x, timesteps=t, context=context).to(self.dtype)


def _sdpa_attention(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ldm CrossAttention.forward through torch's fused scaled-dot-product attention: the same result without
    materialising the (tokens × tokens) matrix (4096² per head at 512 px)."""
    if mask is not None:
        return type(self).forward(self, x, context, mask)
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n = q.shape[:2]
    q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def use_fast_attention(module: nn.Module) -> int:
    """Routes the ldm cross-attention layers of this module instance (UNet or ControlNet) through fused
    attention; the class, and so the WebUI's own models, stay untouched. Returns the number of layers."""
    from ldm.modules.attention import CrossAttention

    count = 0
    for sub in module.modules():
        if type(sub) is CrossAttention:
            sub.forward = _sdpa_attention.__get__(sub)
            count += 1
    return count


@contextlib.contextmanager
def quiet_ldm() -> Iterator[None]:
    """ldm prints a line per attention layer it builds (and on importing some modules); keep the user's console
    readable. Also the ControlNet's builder's."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build_model(config: SDConfig) -> LdmSDModel:
    """Randomly initialised networks for a configuration (loading fills them)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with quiet_ldm():
        from ldm.modules.diffusionmodules.model import Decoder, Encoder
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        unet = UNetModel(**config.unet)
        encoder, decoder = Encoder(**config.vae), Decoder(**config.vae)
    z = config.vae["z_channels"]
    quant_conv = nn.Conv2d(2 * z, 2 * config.embed_dim, 1)
    post_quant_conv = nn.Conv2d(config.embed_dim, z, 1)
    text_model = CLIPTextModel(CLIPTextConfig(**config.text))
    tokenizer = CLIPTokenizer.from_pretrained(str(config.tokenizer_dir))
    alphas = scaled_linear_alphas_cumprod(config.linear_start, config.linear_end, config.num_timesteps)
    model = LdmSDModel(unet, encoder, decoder, quant_conv, post_quant_conv, text_model, tokenizer,
                       config.scale_factor, alphas, config)
    return model.eval().requires_grad_(False)


def ldm_state_dict(model: LdmSDModel) -> Dict[str, torch.Tensor]:
    """The model's tensors under the single-file checkpoint's key names (the inverse of loading)."""
    out: Dict[str, torch.Tensor] = {}
    for prefix, module in ((UNET_PREFIX, model.unet), (VAE_PREFIX + "encoder.", model.encoder),
                           (VAE_PREFIX + "decoder.", model.decoder), (VAE_PREFIX + "quant_conv.", model.quant_conv),
                           (VAE_PREFIX + "post_quant_conv.", model.post_quant_conv),
                           (TEXT_PREFIX, model.text_model)):
        out.update({prefix + k: v for k, v in module.state_dict().items()})
    out["alphas_cumprod"] = model.alphas_cumprod.to(torch.float32)
    return out


def find_config(path: Path) -> Optional[Path]:
    """The yaml beside a checkpoint, named like it (the WebUI's convention)."""
    candidate = path.with_suffix(".yaml")
    return candidate if candidate.is_file() else None


def load_sd_checkpoint(path, config_path=None, device="cpu", dtype: torch.dtype = torch.float32) -> LdmSDModel:
    """Loads a single-file SD 1.x checkpoint (inpainting: 9-channel UNet, or regular: 4-channel)."""
    path = Path(path)
    state = read_state_dict(path)
    check_layout(state, path)
    config_file = Path(config_path) if config_path is not None else find_config(path)
    if config_file is not None and not config_file.is_file():
        raise CheckpointError(f"config {config_file} does not exist; pass the yaml that came with the checkpoint")
    config = config_from_yaml(config_file) if config_file else infer_config({k: v.shape for k, v in state.items()})
    model = build_model(config)
    _load_strict(model.unet, _strip(state, UNET_PREFIX), "UNet", UNET_PREFIX)
    _load_strict(model.encoder, _strip(state, VAE_PREFIX + "encoder."), "VAE encoder", VAE_PREFIX + "encoder.")
    _load_strict(model.decoder, _strip(state, VAE_PREFIX + "decoder."), "VAE decoder", VAE_PREFIX + "decoder.")
    _load_strict(model.quant_conv, _strip(state, VAE_PREFIX + "quant_conv."), "VAE quant_conv", VAE_PREFIX)
    _load_strict(model.post_quant_conv, _strip(state, VAE_PREFIX + "post_quant_conv."), "VAE post_quant_conv",
                 VAE_PREFIX)
    # position_ids is a buffer some transformers versions save and others do not.
    _load_strict(model.text_model, _text_state(state), "text encoder", TEXT_PREFIX, ignore=("position_ids",))
    use_fast_attention(model.unet)
    if "alphas_cumprod" in state:  # the checkpoint's own schedule wins over the config's
        model.alphas_cumprod = state["alphas_cumprod"].to(torch.float64)
    return place(model, device, dtype)


def place(model: LdmSDModel, device, dtype: torch.dtype) -> LdmSDModel:
    """The model on `device`: UNet and text encoder in `dtype`, the VAE in float32."""
    model.to(device=device, dtype=dtype)
    model.unet.dtype = dtype  # ldm's UNet casts its input to this attribute
    for vae_part in (model.encoder, model.decoder, model.quant_conv, model.post_quant_conv):
        vae_part.float()  # SD 1.x's VAE overflows in half precision (black or NaN images)
    return model
