"""ControlNet: released layout, shapes, files (save/load, refusal, errors), creation from a UNet (injection:
test_control_injection.py)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from pickles import write_lightning_checkpoint
from unets import build_unet, inputs, randomise

from lib_handrefiner.control_injection import inject_control
from lib_handrefiner.controlnet import (
    CONTROL_PREFIX,
    ControlNet,
    ControlNetConfig,
    ControlNetLoadError,
    controlnet_from_unet,
    load_controlnet,
    read_controlnet_file,
    save_controlnet,
)

DATA = Path(__file__).parent / "data"
SHARED_MANIFEST = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "checkpoints"
                   / "controlnet_sd15_inpaint_depth_hand.json")
# ---- the released layout -----------------------------------------------------------------------------------------

def test_sd15_state_dict_matches_the_released_manifest_key_for_key():
    manifest = json.loads((DATA / "controlnet_manifest_sd15.json").read_text())
    with torch.device("meta"):
        model = ControlNet.from_config(ControlNetConfig.sd15())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == manifest["num_keys"] == 340
    assert list(shapes) == list(manifest["keys"])          # same names, same order
    assert shapes == manifest["keys"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["total_parameters"]
    assert model.config.num_residuals == 13
    assert ControlNetConfig.from_state_dict(model.state_dict()) == ControlNetConfig.sd15()
    prefixed = {CONTROL_PREFIX + k: v for k, v in model.state_dict().items()}
    assert ControlNetConfig.from_state_dict(prefixed) == ControlNetConfig.sd15()


def test_trimmed_manifest_copy_equals_the_shared_manifest():
    if not SHARED_MANIFEST.is_file():
        pytest.skip("../shared is absent (a user's clone): nothing to cross-check the trimmed copy against")
    shared = json.loads(SHARED_MANIFEST.read_text())
    trimmed = json.loads((DATA / "controlnet_manifest_sd15.json").read_text())
    assert trimmed["keys"] == {e["key"]: e["shape"] for e in shared["keys"]}
    assert trimmed["constructor_params"] == shared["module"]["constructor_params"]


def test_sd15_from_the_matching_unet_infers_the_controlnet_configuration():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    params = json.loads((DATA / "controlnet_manifest_sd15.json").read_text())["constructor_params"]
    params = {k: v for k, v in params.items() if k != "hint_channels"}
    with torch.device("meta"):
        unet = UNetModel(**{**params, "in_channels": 9, "out_channels": 4, "use_checkpoint": False})
    assert ControlNetConfig.from_state_dict(unet.state_dict()) == ControlNetConfig.sd15()


def test_tiny_configuration_and_residual_shapes_for_a_non_square_image():
    model = ControlNet.from_config(ControlNetConfig.tiny()).eval()
    assert ControlNetConfig.from_state_dict(model.state_dict()) == ControlNetConfig.tiny()
    x, t, context, hint = inputs(4, batch=2, h=8, w=12)  # a 64×96 image
    with torch.no_grad():
        residuals = model(x, hint, t, context)
    assert [tuple(r.shape) for r in residuals] == [(2, 32, 8, 12), (2, 32, 8, 12), (2, 32, 4, 6), (2, 64, 4, 6),
                                                    (2, 64, 4, 6)]
    assert len(residuals) == model.config.num_residuals == 5
    # Fresh: every output passes a zero convolution, the training start.
    assert all(torch.count_nonzero(r) == 0 for r in residuals)


def test_hint_reaches_every_residual():
    model = randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=3)
    x, t, context, hint = inputs(4)
    with torch.no_grad():
        a = model(x, hint, t, context)
        b = model(x, 1.0 - hint, t, context)
    assert all(not torch.allclose(ra, rb) for ra, rb in zip(a, b))


# ---- files -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_net():
    return randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=21)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.allclose(sa[k], sb[k].to(sa[k].dtype), rtol=0, atol=atol) for k in sa)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_save_load_round_trip(tmp_path, tiny_net, fp16):
    path = tmp_path / "cn.safetensors"
    save_controlnet(tiny_net, path, fp16=fp16)
    found = read_controlnet_file(path)
    assert found.prefixed and found.config == ControlNetConfig.tiny() and found.config_source == "metadata"
    assert found.dtypes == {"float16" if fp16 else "float32": len(tiny_net.state_dict())}
    loaded = load_controlnet(path)  # the run's dtype: fp32
    assert loaded.dtype == torch.float32 and not loaded.training
    assert same_weights(tiny_net, loaded, atol=1e-3 if fp16 else 0.0)
    if fp16:
        assert load_controlnet(path, dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("prefix", ["", CONTROL_PREFIX], ids=["bare-keys", "control_model-keys"])
def test_files_from_other_tools_load_with_the_configuration_inferred_from_shapes(tmp_path, tiny_net, prefix):
    from safetensors.torch import save_file

    state = {prefix + k: v.half().contiguous() for k, v in tiny_net.state_dict().items()}
    save_file(state, str(tmp_path / "cn.safetensors"))  # no metadata: the architecture comes from the shapes
    torch.save(state, tmp_path / "cn.pth")
    for name in ("cn.safetensors", "cn.pth"):
        found = read_controlnet_file(tmp_path / name)
        assert found.config == ControlNetConfig.tiny() and found.config_source == "inferred"
        assert found.prefixed == bool(prefix)
        assert same_weights(tiny_net, load_controlnet(tmp_path / name), atol=1e-3)


def test_a_full_handrefiner_checkpoint_gives_only_its_controlnet(tmp_path, tiny_net):
    unet = build_unet(9)
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    state.update({CONTROL_PREFIX + k: v for k, v in tiny_net.state_dict().items()})
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "inpaint_depth_control.ckpt")
    assert same_weights(tiny_net, load_controlnet(tmp_path / "inpaint_depth_control.ckpt"))


class Malicious:
    """Unpickling this creates a file: a stand-in for any code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name, writer", [("evil.ckpt", "torch"), ("evil.pth", "pickle"),
                                          ("lightning.ckpt", "lightning"), ("lightning-legacy.pth", "legacy")])
def test_pickled_controlnets_load_and_run_nothing(tmp_path, tiny_net, name, writer):
    """A hostile object beside the weights, or Lightning's callbacks (a training checkpoint): the weights load,
    the objects are left out, nothing runs."""
    marker = tmp_path / "pwned"
    payload = {CONTROL_PREFIX + k: v for k, v in tiny_net.state_dict().items()}
    path = tmp_path / name
    if writer == "torch":
        torch.save({**payload, "evil": Malicious(marker)}, path)
    elif writer == "pickle":
        path.write_bytes(pickle.dumps({**payload, "evil": Malicious(marker)}, protocol=2))
    else:
        write_lightning_checkpoint(path, payload, legacy=writer == "legacy")
    assert same_weights(tiny_net, load_controlnet(path))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Malicious(marker)))  # the payload is live: a plain unpickler runs it
    assert marker.exists()


def test_wrong_files_say_what_they_probably_are(tmp_path, tiny_net):
    from safetensors.torch import save_file

    unet = {k: v.contiguous() for k, v in build_unet(9).state_dict().items()}
    cases = {
        "sd.safetensors": ({"model.diffusion_model." + k: v for k, v in unet.items()}
                           | {"first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)},
                           "full Stable Diffusion checkpoint"),
        "unet.safetensors": (unet, "UNet"),
        "graphormer.safetensors": ({"backbone.conv1.weight": torch.zeros(64, 3, 3, 3),
                                    "trans_encoder.0.bert.embeddings.position_embeddings.weight": torch.zeros(4, 2)},
                                   "Graphormer"),
    }
    for name, (state, probably) in cases.items():
        save_file(state, str(tmp_path / name))
        with pytest.raises(ControlNetLoadError, match=probably) as err:
            load_controlnet(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    # Right names, but a tensor of the wrong shape and one missing, one foreign: counts and examples.
    state = {k: v.contiguous() for k, v in tiny_net.state_dict().items()}
    state["zero_convs.1.0.weight"] = torch.zeros(32, 32, 3, 3)
    del state["middle_block_out.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ControlNetLoadError) as err:
        load_controlnet(tmp_path / "broken.safetensors")
    message = str(err.value)
    for part in ("1 missing tensors (e.g. middle_block_out.0.bias)", "1 unexpected (e.g. extra.weight)",
                 "1 of the wrong shape (e.g. zero_convs.1.0.weight (32, 32, 3, 3) (expected (32, 32, 1, 1)))",
                 "broken.safetensors"):
        assert part in message
    for bad, why in (("missing.safetensors", "does not exist"), ("cn.onnx", "unknown file type")):
        if why == "unknown file type":
            (tmp_path / bad).write_bytes(b"x")
        with pytest.raises(ControlNetLoadError, match=why):
            load_controlnet(tmp_path / bad)
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ControlNetLoadError, match="not a readable safetensors file"):
        load_controlnet(tmp_path / "truncated.safetensors")


# ---- creation from a UNet ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels", [9, 4])
def test_controlnet_from_unet_copies_the_encoder(in_channels):
    unet = build_unet(in_channels, seed=5).state_dict()
    full = {"model.diffusion_model." + k: v for k, v in unet.items()}
    full["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 32, 3, 3)
    controlnet = controlnet_from_unet(full, seed=1)
    assert controlnet.config == ControlNetConfig.tiny()
    state = controlnet.state_dict()
    assert torch.equal(state["input_blocks.0.0.weight"], unet["input_blocks.0.0.weight"][:, :4])
    copied = [k for k in state if k.startswith(("time_embed.", "input_blocks.", "middle_block."))
              and k != "input_blocks.0.0.weight"]
    assert len(copied) > 50 and all(torch.equal(state[k], unet[k]) for k in copied)
    zero = [k for k in state if k.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14."))]
    assert len(zero) == 2 * (5 + 1) and all(torch.count_nonzero(state[k]) == 0 for k in zero)
    assert torch.count_nonzero(state["input_hint_block.0.weight"]) > 0
    again = controlnet_from_unet(unet, ControlNetConfig.tiny(), seed=1)  # seeded: same hint encoder
    assert same_weights(controlnet, again)


@torch.no_grad()
def test_a_fresh_controlnet_changes_nothing_and_random_zero_convs_do(tmp_path):
    unet = build_unet(9, seed=6)
    x, t, context, hint = inputs(9)
    bare = unet(x, t, context)
    fresh = controlnet_from_unet(unet.state_dict())
    with inject_control(unet, fresh, hint, strength=1.0):
        assert torch.equal(unet(x, t, context), bare)  # zero convs: training starts from the plain UNet
    noisy = controlnet_from_unet(unet.state_dict(), random_zero_convs=True, seed=2)
    with inject_control(unet, noisy, hint, strength=1.0):
        assert (unet(x, t, context) - bare).abs().max() > 1e-3
    save_controlnet(noisy, tmp_path / "noisy.safetensors", fp16=True)
    assert same_weights(noisy, load_controlnet(tmp_path / "noisy.safetensors"), atol=1e-3)


def test_controlnet_from_unet_refuses_what_is_not_a_unet():
    with pytest.raises(ValueError, match="not a UNet state dict"):
        controlnet_from_unet({"backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="does not match the UNet"):
        controlnet_from_unet(build_unet(9).state_dict(), ControlNetConfig.tiny().__class__(
            model_channels=32, channel_mult=(1, 4), num_res_blocks=1, attention_resolutions=(1, 2), num_heads=2,
            context_dim=64))


def _fused(module) -> bool:
    from ldm.modules.attention import CrossAttention

    layers = [m for m in module.modules() if type(m) is CrossAttention]
    return bool(layers) and all("forward" in vars(m) for m in layers)  # use_fast_attention sets it per instance


def test_fused_attention_on_loading_changes_only_the_speed(tiny_models, tiny_controlnet):
    fused = load_controlnet(tiny_models.controlnet, fused_attention=True)
    assert _fused(fused) and not any("forward" in vars(m) for m in tiny_controlnet.modules())
    x, hint, ctx = torch.randn(1, 4, 16, 16), torch.rand(1, 3, 128, 128), torch.randn(1, 77, 64)
    t = torch.tensor([500])
    for ours, theirs in zip(fused(x, hint, t, ctx), tiny_controlnet(x, hint, t, ctx)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("program", ["refine", "sweep", "serve"])
def test_the_standalone_programs_sample_with_a_fused_attention_controlnet(program, tiny_models, tmp_path,
                                                                          monkeypatch):
    from conftest import EXAMPLES

    from lib_handrefiner import pipeline
    from lib_handrefiner.cli import main
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.settings import HandRefinerArgs

    sampled = []
    refine_image = pipeline.refine_image
    monkeypatch.setattr(pipeline, "refine_image", lambda image, sd, controlnet, *a, **k: (
        sampled.append(controlnet), refine_image(image, sd, controlnet, *a, **k))[1])
    image = EXAMPLES / "malformed_1.jpg"
    models = ["--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(tiny_models.controlnet)]
    if program == "serve":
        service = StandaloneService(tiny_models.checkpoint, tiny_models.controlnet)
        service.refine(load_image(image), HandRefinerArgs(enabled=True, steps=1, crop_resolution=64,
                                                          controlnet=service.default_controlnet()), seed=1)
    else:
        size = ["--crop-resolution", "64"] if program == "sweep" else ["--set", "crop_resolution=64"]
        out = tmp_path / ("grid.png" if program == "sweep" else "out")
        assert main([program, str(image), *models, "--steps", "1", *size, "--out", str(out)]) == 0
    assert sampled and all(_fused(controlnet) for controlnet in sampled)
