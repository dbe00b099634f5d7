"""Loading single-file SD 1.x checkpoints: yaml and inferred configs, formats, layouts, clear errors."""
from __future__ import annotations

import shutil

import pytest
import torch
from conftest import SHARED
from pickles import write_lightning_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lib_handrefiner.sd_model import (
    SD15_UNET,
    CheckpointError,
    infer_config,
    load_sd_checkpoint,
    scaled_linear_alphas_cumprod,
)

SHARED_TINY = SHARED / "models" / "tiny-sd15-inpaint"


def test_tiny_checkpoint_loads_with_its_yaml(tiny_models, tiny_sd, tiny_sd_regular):
    assert tiny_sd.config.source == f"yaml:{tiny_models.config}"
    assert tiny_sd.in_channels == 9 and tiny_sd_regular.in_channels == 4
    assert tiny_sd.config.text["num_attention_heads"] == 2  # from the clip-tiny folder the yaml names
    state = load_file(str(tiny_models.checkpoint))
    torch.testing.assert_close(tiny_sd.unet.out[2].weight, state["model.diffusion_model.out.2.weight"])
    torch.testing.assert_close(tiny_sd.text_model.text_model.final_layer_norm.bias,
                               state["cond_stage_model.transformer.text_model.final_layer_norm.bias"])
    # Non-degenerate: a zero output conv would make every sampler test pass vacuously.
    assert tiny_sd.unet.out[2].weight.abs().sum() > 0
    assert not torch.allclose(tiny_sd.encoder.norm_out.weight, torch.ones_like(tiny_sd.encoder.norm_out.weight))
    torch.testing.assert_close(tiny_sd.alphas_cumprod, scaled_linear_alphas_cumprod(0.00085, 0.012))


def test_tiny_model_runs_and_vae_downscales_by_8(tiny_sd):
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    z = tiny_sd.encode_image(x)
    assert z.shape == (2, 4, 8, 6)
    assert tiny_sd.decode_latent(z).shape == (2, 3, 64, 48)
    ctx = tiny_sd.encode_text(["a hand", ""])
    assert ctx.shape == (2, 77, 64) and not torch.allclose(ctx[0], ctx[1])
    eps = tiny_sd.apply_unet(z, torch.tensor([10, 900]), ctx, torch.cat([torch.ones(2, 1, 8, 6), z], 1))
    assert eps.shape == z.shape and eps.abs().mean() > 0
    with pytest.raises(ValueError, match="c_concat"):
        tiny_sd.apply_unet(z, torch.tensor([10, 900]), ctx)


def test_fast_attention_matches_ldms(tiny_sd):
    import copy

    from ldm.modules.attention import CrossAttention

    plain = copy.deepcopy(tiny_sd.unet)
    layers = [m for m in plain.modules() if type(m) is CrossAttention]
    assert layers and all("forward" in vars(m) for m in layers)  # loading routed them through fused attention
    for m in layers:
        del m.forward  # back to ldm's own einsum attention
    x, ctx = torch.randn(2, 9, 16, 8), torch.randn(2, 77, 64)
    t = torch.tensor([3, 700])
    torch.testing.assert_close(tiny_sd.unet(x, timesteps=t, context=ctx), plain(x, timesteps=t, context=ctx),
                               atol=1e-5, rtol=1e-4)


def test_inferred_config_without_yaml(tiny_models, tiny_sd, tmp_path):
    lone = tmp_path / "model.safetensors"
    shutil.copyfile(tiny_models.checkpoint, lone)
    model = load_sd_checkpoint(lone)
    assert model.config.source == "inferred"
    for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "context_dim",
                "in_channels"):
        assert model.config.unet[key] == tiny_sd.config.unet[key], key
    assert model.config.vae["ch_mult"] == [1, 1, 1, 1]
    # The VAE has no ambiguous hyper-parameter: identical to the yaml-configured one.
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(model.encode_image(x), tiny_sd.encode_image(x))


def test_sd15_shapes_infer_the_sd15_config():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SD15_UNET)
    shapes = {"model.diffusion_model." + k: v.shape for k, v in unet.state_dict().items()}
    shapes.update({"first_stage_model.encoder.conv_in.weight": torch.Size([128, 3, 3, 3]),
                   "first_stage_model.encoder.down.0.block.0.conv2.weight": torch.Size([128, 128, 3, 3]),
                   "first_stage_model.encoder.down.0.block.1.conv2.weight": torch.Size([128, 128, 3, 3]),
                   "first_stage_model.encoder.down.3.block.0.conv2.weight": torch.Size([512, 512, 3, 3]),
                   "first_stage_model.encoder.down.1.block.0.conv2.weight": torch.Size([256, 256, 3, 3]),
                   "first_stage_model.encoder.down.2.block.0.conv2.weight": torch.Size([512, 512, 3, 3]),
                   "first_stage_model.encoder.conv_out.weight": torch.Size([8, 512, 3, 3]),
                   "first_stage_model.post_quant_conv.weight": torch.Size([4, 4, 1, 1]),
                   "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":
                       torch.Size([49408, 768])})
    config = infer_config(shapes)
    assert config.source == "sd15" and config.unet == SD15_UNET
    assert config.vae["ch_mult"] == [1, 2, 4, 4] and config.vae["num_res_blocks"] == 2
    assert config.text["num_attention_heads"] == 12 and config.text["num_hidden_layers"] == 12


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_lightning_ckpt_loads_and_its_objects_run_nothing(tiny_models, tiny_sd, tmp_path, legacy):
    """sd-v1-5-inpainting.ckpt pickles Lightning callbacks (torch.load(weights_only=True) refuses it); a hostile
    .ckpt pickles a payload. Both load their weights and run nothing."""
    ckpt = write_lightning_checkpoint(tmp_path / "model.ckpt", load_file(str(tiny_models.checkpoint)), legacy)
    shutil.copyfile(tiny_models.config, tmp_path / "model.yaml")
    shutil.copytree(tiny_models.config.parent / "clip-tiny", tmp_path / "clip-tiny")
    model = load_sd_checkpoint(ckpt)
    torch.testing.assert_close(model.unet.out[2].bias, tiny_sd.unet.out[2].bias)
    marker = tmp_path / "pwned"
    state = {**load_file(str(tiny_models.checkpoint)), "evil": _Payload(marker)}
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    model = load_sd_checkpoint(ckpt)
    assert not marker.exists()
    torch.testing.assert_close(model.unet.out[2].bias, tiny_sd.unet.out[2].bias)


def test_float_position_ids_of_merged_checkpoints_do_not_shift_the_text_positions(tiny_models, tiny_sd, tmp_path):
    """Some merged checkpoints store CLIP's position_ids as floats a hair below the integers (75.99998); copied
    into the integer buffer they truncate to the previous position. The loader keeps its own 0..76."""
    state = load_file(str(tiny_models.checkpoint))
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    count = tiny_sd.text_model.config.max_position_embeddings
    state[key] = torch.arange(count, dtype=torch.float32)[None] - 2e-5
    path = tmp_path / "merged.safetensors"
    save_file(state, str(path))
    shutil.copyfile(tiny_models.config, tmp_path / "merged.yaml")
    shutil.copytree(tiny_models.config.parent / "clip-tiny", tmp_path / "clip-tiny")
    model = load_sd_checkpoint(path)
    assert model.text_model.text_model.embeddings.position_ids.tolist() == [list(range(count))]
    torch.testing.assert_close(model.encode_text(["a hand"]), tiny_sd.encode_text(["a hand"]))


class _Payload:  # a pickle that would run code on load: it creates a file
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_clear_errors(tiny_models, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sd_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="ControlNet"):
        load_sd_checkpoint(tiny_models.controlnet)
    torch.save({"state_dict": {"x": torch.ones(100)}}, tmp_path / "whole.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.ckpt: cannot be read as a checkpoint .*truncated"):
        load_sd_checkpoint(tmp_path / "truncated.ckpt")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_sd_checkpoint(tmp_path / "notes.txt")
    state = load_file(str(tiny_models.checkpoint))
    vae_only = {k: v for k, v in state.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model"):
        load_sd_checkpoint(tmp_path / "vae.safetensors")
    missing = {k: v for k, v in state.items() if "input_blocks.1.0." not in k}
    save_file(missing, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors .*input_blocks\.1\.0\."):
        load_sd_checkpoint(tmp_path / "broken.safetensors", config_path=tiny_models.config)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_sd_checkpoint(tiny_models.regular_checkpoint, config_path=tiny_models.config)  # 4-ch file, 9-ch yaml


@pytest.mark.skipif(not SHARED_TINY.is_dir(), reason="../shared (the shared tiny checkpoint) is not present")
def test_shared_tiny_checkpoint_has_our_layout_and_loads(tiny_models):
    shared = SHARED_TINY / "tiny-inpaint.safetensors"
    with safe_open(str(shared), "pt") as f:
        theirs = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    with safe_open(str(tiny_models.checkpoint), "pt") as f:
        ours = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    networks = ("model.", "first_stage_model.", "cond_stage_model.")
    def pick(d):
        return {k: v for k, v in d.items() if k.startswith(networks) and not k.endswith("position_ids")}
    assert pick(ours) == pick(theirs)
    model = load_sd_checkpoint(shared)  # its yaml is beside it
    assert model.in_channels == 9 and model.config.source.startswith("yaml:")
    z = model.encode_image(torch.zeros(1, 3, 64, 64))
    ctx = model.encode_text(["a hand"])
    assert model.apply_unet(z, torch.tensor([500]), ctx, torch.cat([torch.ones(1, 1, 8, 8), z], 1)).shape == z.shape
