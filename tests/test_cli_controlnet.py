"""`python -m lib_handrefiner controlnet init|inspect` on tiny checkpoints in the real single-file layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pickles import write_lightning_checkpoint
from safetensors.torch import load_file, save_file

from lib_handrefiner.cli import main
from lib_handrefiner.controlnet import ControlNetConfig, load_controlnet

SHARED_TINY = (Path(__file__).resolve().parents[2] / "shared" / "models" / "tiny-sd15-inpaint"
               / "tiny-inpaint.safetensors")
TINY_UNET = dict(image_size=8, in_channels=9, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                 num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=64, use_checkpoint=False, legacy=False)


@pytest.fixture(scope="module")
def sd_checkpoint(tmp_path_factory) -> Path:
    """A random tiny 9-channel UNet saved like sd-v1-5-inpainting: model.diffusion_model.* beside other networks."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(**TINY_UNET)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {"model.diffusion_model." + k: v.contiguous() for k, v in unet.state_dict().items()}
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    state["alphas_cumprod"] = torch.linspace(0.999, 0.01, 1000)
    path = tmp_path_factory.mktemp("sd") / "tiny-inpaint.safetensors"
    save_file(state, str(path))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["controlnet", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_init_then_inspect(tmp_path, capsys, sd_checkpoint):
    out = tmp_path / "cn.safetensors"
    rc, stdout, _ = run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(out))
    assert rc == 0 and "zero convolutions zero" in stdout
    file = load_file(str(out))
    assert all(k.startswith("control_model.") for k in file) and len(file) == 154
    unet = load_file(str(sd_checkpoint))
    assert torch.equal(file["control_model.input_blocks.0.0.weight"],
                       unet["model.diffusion_model.input_blocks.0.0.weight"][:, :4])
    assert torch.equal(file["control_model.middle_block.1.proj_in.weight"],
                       unet["model.diffusion_model.middle_block.1.proj_in.weight"])
    assert torch.count_nonzero(file["control_model.zero_convs.2.0.weight"]) == 0
    rc, stdout, _ = run_cli(capsys, "inspect", str(out))
    assert rc == 0
    for part in ("a ControlNet that loads", "model_channels=32", "channel_mult=[1, 2]", "num_heads=2",
                 "context_dim=64", "residuals: 5", "keys: 154 (prefixed control_model.)", "parameters: 926,928",
                 "float32 (154 tensors)"):
        assert part in stdout
    rc, stdout, _ = run_cli(capsys, "inspect", str(out), "--json")
    report = json.loads(stdout)
    assert rc == 0 and report["keys"] == 154 and report["dtype"] == {"float32": 154}
    assert report["configuration"]["attention_resolutions"] == [2, 1]


def test_init_fp16_with_random_zero_convs(tmp_path, capsys, sd_checkpoint):
    out = tmp_path / "cn16.safetensors"
    rc, stdout, _ = run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(out), "--fp16",
                            "--random-zero-convs", "--seed", "3")
    assert rc == 0 and "float16" in stdout and "zero convolutions random" in stdout
    file = load_file(str(out))
    assert {v.dtype for v in file.values()} == {torch.float16}
    assert torch.count_nonzero(file["control_model.zero_convs.2.0.weight"]) > 0
    assert torch.count_nonzero(file["control_model.middle_block_out.0.weight"]) > 0
    controlnet = load_controlnet(out)
    assert controlnet.config == ControlNetConfig.tiny() and controlnet.dtype == torch.float32


def test_init_from_the_shared_tiny_checkpoint(tmp_path, capsys):
    if not SHARED_TINY.is_file():
        pytest.skip("../shared is absent (a user's clone); the fixture checkpoint covers the same path")
    out = tmp_path / "shared-cn.safetensors"
    rc, _, err = run_cli(capsys, "init", "--from", str(SHARED_TINY), "--out", str(out))
    assert rc == 0, err
    assert load_controlnet(out).config == ControlNetConfig.tiny()


def test_inspect_fails_with_the_reason(tmp_path, capsys, sd_checkpoint):
    rc, stdout, err = run_cli(capsys, "inspect", str(sd_checkpoint))
    assert rc == 1 and stdout == ""
    assert str(sd_checkpoint) in err and "full Stable Diffusion checkpoint" in err and "controlnet init" in err
    state = {"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}
    save_file(state, str(tmp_path / "partial.safetensors"))
    rc, _, err = run_cli(capsys, "inspect", str(tmp_path / "partial.safetensors"))
    assert rc == 1 and "partial.safetensors" in err


def test_init_refuses_bad_arguments(tmp_path, capsys, sd_checkpoint):
    out = tmp_path / "cn.safetensors"
    assert run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(out))[0] == 0
    rc, _, err = run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(out))
    assert rc == 1 and "--force" in err
    assert run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(out), "--force")[0] == 0
    rc, _, err = run_cli(capsys, "init", "--from", str(sd_checkpoint), "--out", str(tmp_path / "cn.ckpt"))
    assert rc == 1 and "cn.safetensors" in err
    rc, _, err = run_cli(capsys, "init", "--from", str(out), "--out", str(tmp_path / "again.safetensors"))
    assert rc == 1 and "already a ControlNet" in err


def test_init_never_overwrites_its_source_and_reports_an_unusable_out(tmp_path, capsys, sd_checkpoint):
    source = tmp_path / "model.safetensors"
    source.write_bytes(sd_checkpoint.read_bytes())
    rc, _, err = run_cli(capsys, "init", "--from", str(source), "--out", str(source), "--force")
    assert rc == 1 and "--from" in err and "itself" in err
    assert source.read_bytes() == sd_checkpoint.read_bytes()  # the checkpoint is still there
    taken = tmp_path / "taken"
    taken.write_text("a file where a folder should go")
    rc, _, err = run_cli(capsys, "init", "--from", str(source), "--out", str(taken / "cn.safetensors"))
    assert rc == 1 and "taken" in err and "cannot" in err


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_init_from_a_lightning_ckpt_equals_init_from_its_safetensors(tmp_path, capsys, sd_checkpoint, legacy):
    """`init --from sd-v1-5-inpainting.ckpt`: that file pickles Lightning callbacks, which weights-only loading
    refuses; the restricted unpickler reads its weights."""
    ckpt = write_lightning_checkpoint(tmp_path / "sd.ckpt", load_file(str(sd_checkpoint)), legacy=legacy)
    for source, out in ((sd_checkpoint, "a.safetensors"), (ckpt, "b.safetensors")):
        rc, _, err = run_cli(capsys, "init", "--from", str(source), "--out", str(tmp_path / out))
        assert rc == 0, err
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
