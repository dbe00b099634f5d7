"""The HandRefiner ControlNet: an ldm-layout ControlNet, its files, and its creation from a UNet.

The network is the encoder half of an SD UNet (time embedding, input blocks, middle block) plus a hint encoder that
turns the 3-channel depth map (image size, values in [0, 1]) into a latent-size feature, and one 1×1 "zero
convolution" per encoder output. Its forward returns one residual per UNet skip connection plus one for the middle
block (13 for SD 1.5); `control_injection.inject_control` adds them, scaled by the control strength, to any SD
UNet the extension meets.

Files: `.safetensors` (preferred) or `.pth`/`.ckpt` read by the restricted unpickler (`safe_pickle`); keys with or
without the `control_model.` prefix (a full HandRefiner training checkpoint works too: only `control_model.*` is
taken).
The architecture is read from the tensor shapes. Head counts leave no trace in weights: files written by
`save_controlnet` record the configuration in their metadata; otherwise 8 heads for SD 1.x width (320) and
`model_channels // 16` heads (at most 8) for other widths, which gives the project's tiny models their 2 heads.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lib_handrefiner.sd_model import quiet_ldm

CONTROL_PREFIX = "control_model."
UNET_PREFIX = "model.diffusion_model."
HINT_DOWNSCALE = 8
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
METADATA_KEY = "handrefiner_controlnet_config"


class ControlNetLoadError(ValueError):
    """A file that is not a loadable ControlNet; the message names the file, what does not fit and the fix."""


# ---- configuration ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ControlNetConfig:
    in_channels: int = 4
    hint_channels: int = 3
    model_channels: int = 320
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768

    def __post_init__(self) -> None:
        # One spelling per architecture, so configurations compare equal however they were written.
        object.__setattr__(self, "attention_resolutions", tuple(sorted(self.attention_resolutions, reverse=True)))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))

    @staticmethod
    def sd15() -> "ControlNetConfig":
        """The released HandRefiner ControlNet (and every SD 1.5 ControlNet)."""
        return ControlNetConfig()

    @staticmethod
    def tiny() -> "ControlNetConfig":
        """Pairs with the project's tiny SD models (../shared/models/tiny-sd15-inpaint, lib_handrefiner.tiny)."""
        return ControlNetConfig(in_channels=4, hint_channels=3, model_channels=32, attention_resolutions=(1, 2),
                                num_res_blocks=1, channel_mult=(1, 2), num_heads=2, transformer_depth=1,
                                context_dim=64)

    @staticmethod
    def from_state_dict(state: Mapping[str, Any]) -> "ControlNetConfig":
        """The configuration from tensor shapes of a ControlNet or of a UNet (keys with or without the
        `control_model.` / `model.diffusion_model.` prefix). From a 9-channel inpainting UNet the ControlNet gets
        4 input channels: it sees only the noisy latent."""
        shapes = {k: tuple(v.shape) for k, v in _strip_known_prefix(state).items()}
        return infer_config(shapes)

    @property
    def num_residuals(self) -> int:
        """Outputs of forward: input conv + res blocks + downsamples, plus the middle block."""
        levels = len(self.channel_mult)
        return 1 + levels * self.num_res_blocks + (levels - 1) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "ControlNetConfig":
        return ControlNetConfig(**json.loads(text))


def default_num_heads(model_channels: int) -> int:
    """Head count for a width that carries no head information: SD 1.x's 8 at 320, else one head per 16
    channels (2 for the tiny 32-wide models), at most 8."""
    return 8 if model_channels == 320 else max(1, min(8, model_channels // 16))


def infer_config(shapes: Mapping[str, Tuple[int, ...]]) -> ControlNetConfig:
    """ControlNetConfig from unprefixed key → shape (ControlNet or UNet encoder keys)."""
    conv_in = shapes.get("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ValueError("no input convolution 'input_blocks.0.0.weight' (4-D) to infer the architecture from")
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    is_unet = "input_hint_block.0.weight" not in shapes and any(k.startswith("output_blocks.") for k in shapes)
    if is_unet and in_channels == 9:  # inpainting UNet: latent + mask + masked-image latent; control sees the latent
        in_channels = 4
    blocks = sorted({int(m.group(1)) for k in shapes for m in [re.match(r"input_blocks\.(\d+)\.", k)] if m})
    levels: List[List[int]] = [[]]
    for b in blocks[1:]:
        if f"input_blocks.{b}.0.op.weight" in shapes:  # a Downsample closes a level
            levels.append([])
        else:
            levels[-1].append(b)
    res_counts = {len(level) for level in levels}
    if len(res_counts) != 1 or 0 in res_counts:
        raise ValueError(f"input blocks {blocks} do not form levels of equal size (res blocks per level: "
                         f"{[len(level) for level in levels]})")
    channel_mult, attention = [], []
    for depth, level in enumerate(levels):
        out = shapes.get(f"input_blocks.{level[0]}.0.out_layers.3.weight")
        if out is None:
            raise ValueError(f"input block {level[0]} has no ResBlock output convolution")
        channel_mult.append(int(out[0]) // model_channels)
        if f"input_blocks.{level[0]}.1.proj_in.weight" in shapes:
            attention.append(2 ** depth)
    to_k = [v for k, v in shapes.items() if re.search(r"attn2\.to_k\.weight$", k)]
    if not to_k:
        raise ValueError("no cross-attention (attn2.to_k) to read the text context width from")
    depth_keys = {int(m.group(1)) for k in shapes
                  for m in [re.match(r"middle_block\.1\.transformer_blocks\.(\d+)\.", k)] if m}
    hint = shapes.get("input_hint_block.0.weight")
    return ControlNetConfig(in_channels=in_channels, hint_channels=int(hint[1]) if hint else 3,
                            model_channels=model_channels, attention_resolutions=tuple(attention),
                            num_res_blocks=res_counts.pop(), channel_mult=tuple(channel_mult),
                            num_heads=default_num_heads(model_channels),
                            transformer_depth=max(1, len(depth_keys)), context_dim=int(to_k[0][1]))


# ---- the network -----------------------------------------------------------------------------------------------

class ControlNet(nn.Module):
    """ldm-layout ControlNet (state_dict keys as in the released HandRefiner file, without `control_model.`)."""

    def __init__(self, in_channels: int = 4, hint_channels: int = 3, model_channels: int = 320,
                 attention_resolutions: Sequence[int] = (4, 2, 1), num_res_blocks: int = 2,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_heads: int = 8, transformer_depth: int = 1,
                 context_dim: int = 768, dropout: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        with quiet_ldm():
            from ldm.modules.attention import SpatialTransformer
            from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepEmbedSequential
            from ldm.modules.diffusionmodules.util import conv_nd, linear, zero_module

        self.config = ControlNetConfig(in_channels, hint_channels, model_channels, tuple(attention_resolutions),
                                       num_res_blocks, tuple(channel_mult), num_heads, transformer_depth,
                                       context_dim)
        self.model_channels = model_channels
        emb_dim = model_channels * 4

        def zero_conv(channels: int) -> nn.Module:
            return TimestepEmbedSequential(zero_module(conv_nd(2, channels, channels, 1, padding=0)))

        def transformer(channels: int) -> nn.Module:
            # legacy=False: the head width follows the channels (ch // heads); proj_in/out are 1×1 convs.
            return SpatialTransformer(channels, num_heads, channels // num_heads, depth=transformer_depth,
                                      context_dim=context_dim, use_linear=False, use_checkpoint=use_checkpoint)

        def resblock(channels: int, out_channels: int) -> nn.Module:
            return ResBlock(channels, emb_dim, dropout, out_channels=out_channels, dims=2,
                            use_checkpoint=use_checkpoint)

        self.time_embed = nn.Sequential(linear(model_channels, emb_dim), nn.SiLU(), linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(2, in_channels, model_channels, 3,
                                                                           padding=1))])
        self.zero_convs = nn.ModuleList([zero_conv(model_channels)])
        channels, scale = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(channels, mult * model_channels)]
                channels = mult * model_channels
                if scale in attention_resolutions:
                    layers.append(transformer(channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(zero_conv(channels))
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(channels, True, dims=2,
                                                                            out_channels=channels)))
                self.zero_convs.append(zero_conv(channels))
                scale *= 2
        # Image size → latent size: three stride-2 convolutions (×8), widening 16 → 32 → 96 → 256 channels.
        hint_layers: List[nn.Module] = []
        widths = [(hint_channels, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1),
                  (96, 256, 2)]
        for cin, cout, stride in widths:
            hint_layers += [conv_nd(2, cin, cout, 3, padding=1, stride=stride), nn.SiLU()]
        hint_layers.append(zero_module(conv_nd(2, 256, model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*hint_layers)

        self.middle_block = TimestepEmbedSequential(resblock(channels, channels), transformer(channels),
                                                    resblock(channels, channels))
        self.middle_block_out = zero_conv(channels)

    @classmethod
    def from_config(cls, config: ControlNetConfig) -> "ControlNet":
        return cls(**asdict(config))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.input_blocks[0][0].weight.device

    def encode_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The hint as a latent-size feature. It depends on neither timestep nor text (plain convolutions), so a
        sampler computes it once, not once per step: at image resolution it costs more than the rest on small
        models."""
        return self.input_hint_block(hint, None, None)

    def forward(self, x: torch.Tensor, hint: Optional[torch.Tensor], timesteps: torch.Tensor,
                context: Optional[torch.Tensor], *, guided_hint: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Residuals for the UNet: one per input block (the skip connections, in order), then the middle one.
        `guided_hint` (from `encode_hint`) replaces `hint` when given."""
        from ldm.modules.diffusionmodules.util import timestep_embedding

        t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(self.dtype)
        emb = self.time_embed(t_emb)
        if guided_hint is None:
            guided_hint = self.encode_hint(hint)
        residuals = []
        h = x
        for index, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if index == 0:  # the hint enters once, right after the input convolution
                h = h + guided_hint
            residuals.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h, emb, context))
        return residuals


# ---- files -----------------------------------------------------------------------------------------------------

def _strip_known_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Unprefixed ControlNet keys if any `control_model.*` exist (full HandRefiner checkpoints hold both the
    ControlNet and the UNet), else unprefixed UNet keys if `model.diffusion_model.*` exist, else the keys as is."""
    for prefix in (CONTROL_PREFIX, UNET_PREFIX):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


class _ShapeOnly:
    """A stand-in with just `.shape`, for naming files whose tensors need not be read."""

    def __init__(self, shape: Sequence[int]):
        self.shape = torch.Size(shape)


def _control_keys(keys: Sequence[str]) -> List[str]:
    """The keys worth reading for a ControlNet: `control_model.*` when present (a full HandRefiner checkpoint also
    holds a UNet), none from files with other networks' prefixes, else all (an unprefixed ControlNet)."""
    if any(k.startswith(CONTROL_PREFIX) for k in keys):
        return [k for k in keys if k.startswith(CONTROL_PREFIX)]
    if any(k.startswith((UNET_PREFIX, "first_stage_model.", "cond_stage_model.")) for k in keys):
        return []
    return list(keys)


def _unet_keys(keys: Sequence[str]) -> List[str]:
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return [k for k in keys if k.startswith(UNET_PREFIX)]
    return list(keys)


def _remedy_for_unreadable(path: Path) -> str:
    """A training run's own file is re-made by resuming it; any other file is downloaded again."""
    from lib_handrefiner.train.checkpoint import training_output_advice

    return training_output_advice(path) or "download it again"


def read_tensors(path, pick=_control_keys) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(key → tensor, safetensors metadata) of a checkpoint on the CPU. Keys that `pick` leaves out are listed
    with their shape only (enough to say what a file is) and, from safetensors files, never read."""
    path = Path(path)
    if not path.is_file():
        raise ControlNetLoadError(f"{path} does not exist; pass the path of a .safetensors (or .pth/.ckpt) file, "
                                  "e.g. control_sd15_inpaint_depth_hand_fp16.safetensors")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                wanted = set(pick(keys))
                tensors = {k: f.get_tensor(k) if k in wanted else _ShapeOnly(f.get_slice(k).get_shape())
                           for k in keys}
                return tensors, dict(f.metadata() or {})
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise ControlNetLoadError(f"{path}: not a readable safetensors file ({e}); "
                                      f"{_remedy_for_unreadable(path)}") from None
    if suffix not in PICKLE_SUFFIXES:
        raise ControlNetLoadError(f"{path}: unknown file type {path.suffix!r}; expected .safetensors "
                                  f"(or {', '.join(PICKLE_SUFFIXES)})")
    from lib_handrefiner.safe_pickle import load_state_dict

    try:
        tensors = load_state_dict(path)
    except Exception as e:  # nothing in the file ran: the restricted unpickler only builds tensors and containers
        raise ControlNetLoadError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); download it "
                                  "again, or use the .safetensors release of this model") from None
    wanted = set(pick(list(tensors)))
    return {k: v if k in wanted else _ShapeOnly(v.shape) for k, v in tensors.items()}, {}


def identify_foreign(keys: Sequence[str]) -> Optional[str]:
    """What a file that is not a ControlNet probably is, with the fix; None when it looks like a ControlNet."""
    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has(CONTROL_PREFIX, "input_hint_block."):
        return None
    if has(UNET_PREFIX) and has("first_stage_model.", "cond_stage_model."):
        return ("this looks like a full Stable Diffusion checkpoint (model.diffusion_model.*, first_stage_model.*), "
                "not a ControlNet: select it as the SD checkpoint, or create a ControlNet from it with "
                "`python -m lib_handrefiner controlnet init --from FILE --out NEW.safetensors`")
    if has(UNET_PREFIX, "output_blocks.", "out.0."):
        return ("this looks like a UNet (it has output blocks) without a hint encoder, not a ControlNet: "
                "the HandRefiner ControlNet is control_sd15_inpaint_depth_hand_fp16.safetensors")
    if has("backbone.", "trans_encoder.", "cam_param_fc"):
        return ("this looks like the Mesh Graphormer hand model (backbone.*, trans_encoder.*), not a ControlNet: "
                "put it in the mesh models folder")
    if has("controlnet_cond_embedding.", "down_blocks.", "controlnet_down_blocks."):
        return ("this looks like a diffusers-format ControlNet; use the single-file ldm release "
                "(control_sd15_inpaint_depth_hand_fp16.safetensors)")
    if has("lora_", "lora_unet_", "lora_te_") or any(".lora_" in k for k in keys):
        return "this looks like a LoRA, not a ControlNet"
    if has("encoder.down.", "decoder.up.", "first_stage_model."):
        return "this looks like a VAE, not a ControlNet"
    if has("text_model.", "cond_stage_model.", "transformer.text_model."):
        return "this looks like a text encoder, not a ControlNet"
    return "it holds none of a ControlNet's tensors (input_hint_block.*, zero_convs.*)"


def _examples(keys: Sequence[str], n: int = 3) -> str:
    """A few keys, from different top-level groups where there are several (they say most about a file)."""
    by_group: Dict[str, str] = {}
    for key in keys:
        by_group.setdefault(key.split(".")[0], key)
    picked = list(by_group.values())[:n]
    picked += [k for k in keys if k not in picked][:n - len(picked)]
    return ", ".join(picked) + (", …" if len(keys) > n else "")


def check_fits(found: "ControlNetFile", config: Optional[ControlNetConfig] = None) -> ControlNet:
    """An empty (meta-device) ControlNet of the file's configuration, after checking that every tensor fits it."""
    with torch.device("meta"):
        model = ControlNet.from_config(config or found.config)
    _check_fits(found.path, model, found.state)
    return model


def _check_fits(path: Path, model: ControlNet, state: Mapping[str, Any]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
                 if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or misshaped:
        hint = identify_foreign(list(state)) or ("it may be a ControlNet for another base model (SD 2.x/SDXL); "
                                                 "HandRefiner needs an SD 1.5 ControlNet")
        raise ControlNetLoadError(
            f"{path} does not fit a ControlNet of the configuration inferred from it ({model.config}): "
            f"{len(missing)} missing tensors (e.g. {_examples(missing)}), {len(unexpected)} unexpected "
            f"(e.g. {_examples(unexpected)}), {len(misshaped)} of the wrong shape (e.g. {_examples(misshaped)}); "
            f"{hint}")


@dataclass
class ControlNetFile:
    """What `read_controlnet_file` found: the unprefixed tensors, their configuration and how they were stored."""
    path: Path
    state: Dict[str, torch.Tensor]
    config: ControlNetConfig
    prefixed: bool
    dtypes: Dict[str, int] = field(default_factory=dict)   # dtype name → tensor count
    config_source: str = "inferred"                        # "metadata" or "inferred"


def read_controlnet_file(path) -> ControlNetFile:
    """Reads and checks a ControlNet file without building the network."""
    path = Path(path)
    raw, metadata = read_tensors(path)
    foreign = identify_foreign(list(raw))
    if foreign is not None:
        raise ControlNetLoadError(f"{path} is not a ControlNet ({len(raw)} tensors, e.g. "
                                  f"{_examples(list(raw))}): {foreign}")
    prefixed = any(k.startswith(CONTROL_PREFIX) for k in raw)
    state = {k[len(CONTROL_PREFIX):]: v for k, v in raw.items() if k.startswith(CONTROL_PREFIX)} if prefixed else raw
    try:
        config = (ControlNetConfig.from_json(metadata[METADATA_KEY]) if METADATA_KEY in metadata
                  else ControlNetConfig.from_state_dict(state))
    except (ValueError, KeyError, TypeError) as e:
        raise ControlNetLoadError(f"{path}: cannot infer the ControlNet's architecture: {e}") from None
    dtypes: Dict[str, int] = {}
    for v in state.values():
        name = str(v.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + 1
    return ControlNetFile(path, state, config, prefixed, dtypes,
                          "metadata" if METADATA_KEY in metadata else "inferred")


def load_controlnet(path, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                    config: Optional[ControlNetConfig] = None, fused_attention: bool = False) -> ControlNet:
    """A ControlNet from a file, cast to `dtype` (the released file is fp16) on `device`, in eval mode.
    `config` overrides the stored/inferred configuration (e.g. another head count). `fused_attention` routes its
    cross-attention through fused attention, as load_sd_checkpoint does for its UNet: for the standalone programs;
    in the WebUI the WebUI's own attention optimisation (it patches the class) reaches the ControlNet instead."""
    found = read_controlnet_file(path)
    model = check_fits(found, config)
    model.load_state_dict(found.state, assign=True)
    if fused_attention:
        from lib_handrefiner.sd_model import use_fast_attention
        use_fast_attention(model)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_controlnet(controlnet: ControlNet, path, fp16: bool = False) -> None:
    """Safetensors with the `control_model.` prefix (the released layout) and the configuration as metadata, written
    atomically (never a half-written file under `path`, never through a link)."""
    from safetensors.torch import save

    from lib_handrefiner.safe_write import write_file

    dtype = torch.float16 if fp16 else None
    state = {CONTROL_PREFIX + k: (v.to(dtype) if dtype else v).detach().cpu().contiguous()
             for k, v in controlnet.state_dict().items()}
    write_file(path, save(state, metadata={"format": "pt", METADATA_KEY: controlnet.config.to_json()}))


# ---- creation from a UNet --------------------------------------------------------------------------------------

def read_unet_state(path) -> Dict[str, torch.Tensor]:
    """The UNet's tensors (unprefixed) of a single-file SD checkpoint or of a bare UNet state dict."""
    path = Path(path)
    raw, _ = read_tensors(path, pick=_unet_keys)
    state = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    unet = _strip_known_prefix({k: v for k, v in state.items() if not k.startswith(CONTROL_PREFIX)})
    if "input_blocks.0.0.weight" not in unet or not any(k.startswith("output_blocks.") for k in unet):
        what = ("it is already a ControlNet" if any(k.startswith((CONTROL_PREFIX, "input_hint_block.")) for k in raw)
                else identify_foreign(list(raw)) or "it holds no UNet")
        raise ControlNetLoadError(f"{path} has no UNet (model.diffusion_model.* or input/output_blocks.*): {what}; "
                                  "pass an SD 1.x checkpoint such as sd-v1-5-inpainting.ckpt")
    return unet


def _zero_initialised(controlnet: ControlNet) -> List[nn.Module]:
    """The convolutions that start at zero: the zero convs, the middle one and the hint encoder's last one."""
    return [*(zc[0] for zc in controlnet.zero_convs), controlnet.middle_block_out[0], controlnet.input_hint_block[-1]]


def controlnet_from_unet(unet_state_dict: Mapping[str, torch.Tensor], config: Optional[ControlNetConfig] = None,
                         random_zero_convs: bool = False, seed: int = 0) -> ControlNet:
    """A ControlNet whose encoder copies a UNet's (time_embed, input_blocks, middle_block; of a 9-channel input
    convolution the first 4 input channels, the noisy latent's). The hint encoder is randomly initialised
    (seeded); the zero convolutions are zero, the training start, or random with `random_zero_convs` (tests).
    Accepts a UNet state dict or a full single-file SD checkpoint (`model.diffusion_model.*`)."""
    unet = _strip_known_prefix(unet_state_dict)
    if "input_blocks.0.0.weight" not in unet or not any(k.startswith("middle_block.") for k in unet):
        raise ValueError(f"not a UNet state dict: no input_blocks.0.0.weight/middle_block.* among {len(unet)} "
                         f"tensors (e.g. {_examples(list(unet))}); pass an SD 1.x checkpoint or its UNet")
    config = config or ControlNetConfig.from_state_dict(unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNet.from_config(config)
        if random_zero_convs:
            for conv in _zero_initialised(controlnet):
                conv.reset_parameters()
    copied = {}
    for key, target in controlnet.state_dict().items():
        if not key.startswith(("time_embed.", "input_blocks.", "middle_block.")):
            continue
        source = unet.get(key)
        if source is None:
            raise ValueError(f"the UNet has no tensor {key!r} for this ControlNet configuration ({config})")
        if key == "input_blocks.0.0.weight":
            source = source[:, :config.in_channels]
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"UNet tensor {key!r} has shape {tuple(source.shape)}, the ControlNet needs "
                             f"{tuple(target.shape)}: the configuration ({config}) does not match the UNet")
        copied[key] = source.to(target.dtype)
    controlnet.load_state_dict(copied, strict=False)
    return controlnet.eval()
