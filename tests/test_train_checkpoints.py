"""Training checkpoints (issue 20, item 8): checksummed, resumed from the newest intact one (bit-identically), their
temporary leftovers removed, the final export atomic and re-made on resume when missing or damaged."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from train_data import write_training_folder

from lib_handrefiner.controlnet import ControlNetLoadError, controlnet_from_unet, load_controlnet, read_unet_state
from lib_handrefiner.train import checkpoint as ckpt
from lib_handrefiner.train.loop import TrainConfig, TrainError, train

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_training_folder(tmp_path_factory.mktemp("ckpt-data"), count=8, size=64)


@pytest.fixture(scope="module")
def unet_state(tiny_models):
    return read_unet_state(tiny_models.checkpoint)


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=data, checkpoint=Path("tiny"), controlnet=Path("init"), out=out, resolution=64,
                    batch_size=2, effective_batch=4, lr=1e-3, val_samples=2, val_every=0, save_every=1,
                    keep_checkpoints=0, num_workers=0, progress=False, steps=STEPS)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def whole(tiny_sd, unet_state, data, tmp_path_factory):
    """A run of STEPS steps, checkpointed at every step: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("whole")
    result = train(config(data, out), models=(tiny_sd, controlnet_from_unet(unet_state)))
    return out, result


def _overwrite_weights(path: Path) -> None:
    """Four bytes inside the first tensor become 3.4e38: still a readable safetensors file."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[start + 16:start + 20] = struct.pack("<f", 3.4e38)
    path.write_bytes(bytes(raw))


def _contents(path: Path):
    """The tensors and metadata of a safetensors file (the byte order of its metadata varies between writes)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _same_contents(a: Path, b: Path) -> bool:
    (tensors_a, meta_a), (tensors_b, meta_b) = _contents(a), _contents(b)
    return meta_a == meta_b and tensors_a.keys() == tensors_b.keys() and all(
        tensors_a[k].dtype == tensors_b[k].dtype and torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "truncated optimizer": (lambda p: _truncate(p / "optimizer.pt", 999), "optimizer.pt has 999 bytes"),
    "missing rng": (lambda p: p.joinpath("rng.pt").unlink(), "rng.pt is missing"),
    "overwritten weights": (lambda p: _overwrite_weights(p / "controlnet.safetensors"),
                            "controlnet.safetensors differs from its SHA-256"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_skips_damaged_checkpoints_and_continues_bit_identically(whole, tiny_sd, unet_state, data, tmp_path,
                                                                         kind):
    whole_out, reference = whole
    out = tmp_path / "run"
    shutil.copytree(whole_out, out)
    damage, reason = DAMAGE[kind]
    for step in (3, 4):  # the newest two are damaged: resume must go back to step 2
        damage(ckpt.checkpoint_dir(out, step))
    # What a kill -9 leaves: a half-written checkpoint folder, a temporary file, a metrics line cut short.
    (out / "checkpoints" / ".step-000005.4242.tmp").mkdir()
    (out / "checkpoints" / ".step-000005.4242.tmp" / "optimizer.pt").write_bytes(b"half")
    (out / ".handrefiner-0123abcd.tmp").write_bytes(b"half an export")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    resumed_net = controlnet_from_unet(unet_state)
    result = train(config(data, out, resume="latest"), models=(tiny_sd, resumed_net))
    assert result.start_step == 2 and result.losses == reference.losses[2:]
    said = "\n".join(result.notes)
    assert "resuming from" in said and "step-000002" in said and reason in said
    assert "step-000004" in said and "step-000003" in said
    assert ".step-000005.4242.tmp" in said and ".handrefiner-0123abcd.tmp" in said
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s:06d}" for s in range(1, STEPS + 1)]
    assert not list(out.glob(".handrefiner-*.tmp"))
    final = load_controlnet(whole_out / "controlnet.safetensors").state_dict()
    assert all(torch.equal(v, final[k]) for k, v in resumed_net.state_dict().items())
    assert _same_contents(out / "controlnet.safetensors", whole_out / "controlnet.safetensors")
    curve = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert curve == reference.losses
    assert all(ckpt.damage(p) is None for p in ckpt.saved_checkpoints(out))


def test_no_intact_checkpoint_and_a_damaged_explicit_one_are_one_line_errors(whole, tiny_sd, unet_state, data,
                                                                             tmp_path):
    out = tmp_path / "run"
    shutil.copytree(whole[0], out)
    (ckpt.checkpoint_dir(out, 2) / "rng.pt").write_bytes(b"")
    with pytest.raises(TrainError, match=r"--resume .*step-000002: the checkpoint is damaged: rng.pt has 0 bytes"):
        train(config(data, out, resume=str(ckpt.checkpoint_dir(out, 2)), steps=6),
              models=(tiny_sd, controlnet_from_unet(unet_state)))
    for step in range(1, STEPS + 1):
        (ckpt.checkpoint_dir(out, step) / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(TrainError, match="no intact checkpoint.*step-000004: no manifest.json.*new --out"):
        train(config(data, out, resume="latest", steps=6), models=(tiny_sd, controlnet_from_unet(unet_state)))


@pytest.mark.parametrize("fp16", [False, True])
def test_the_export_is_remade_on_resume_when_missing_or_damaged(tiny_sd, unet_state, data, tmp_path, capsys, fp16):
    out = tmp_path / "run"
    result = train(config(data, out, steps=2, save_every=0, fp16_output=fp16),
                   models=(tiny_sd, controlnet_from_unet(unet_state)))
    export = result.output
    kept = tmp_path / "as-written.safetensors"
    shutil.copy(export, kept)
    written = export.read_bytes()
    checksum = export.with_name("controlnet.safetensors.sha256").read_text()
    assert checksum == f"{ckpt.sha256_of(export)}  controlnet.safetensors\n"
    # A truncated export: loading it says what it is and to resume, not to download it.
    export.write_bytes(written[:len(written) // 2])
    with pytest.raises(ControlNetLoadError) as error:
        load_controlnet(export)
    assert "export of the training run" in str(error.value) and "--resume" in str(error.value)
    assert "download" not in str(error.value)
    for damage in (lambda: None, lambda: _overwrite_weights(export), export.unlink):
        damage()
        again = train(config(data, out, steps=2, save_every=0, fp16_output=fp16, resume="latest"),
                      models=(tiny_sd, controlnet_from_unet(unet_state)))
        assert again.output == export and again.losses == [] and _same_contents(export, kept)
        assert ckpt.export_damage(export) is None
        assert any(f"re-made {export}" in note for note in again.notes)
    with pytest.raises(TrainError, match="nothing to train"):
        train(config(data, out, steps=2, save_every=0, fp16_output=fp16, resume="latest"),
              models=(tiny_sd, controlnet_from_unet(unet_state)))


def test_a_truncated_checkpoint_controlnet_says_to_resume(whole, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(whole[0], out)
    weights = ckpt.checkpoint_dir(out, 2) / "controlnet.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ControlNetLoadError, match="training checkpoint.*--resume"):
        load_controlnet(weights)


def test_one_run_at_a_time_holds_the_output_folder(tiny_sd, unet_state, data, tmp_path):
    holder = ckpt.OutputLock(tmp_path / "run")
    try:
        with pytest.raises(TrainError, match="in use by another training"):
            train(config(data, tmp_path / "run", steps=1), models=(tiny_sd, controlnet_from_unet(unet_state)))
    finally:
        holder.release()
    assert train(config(data, tmp_path / "run", steps=1), models=(tiny_sd, controlnet_from_unet(unet_state))).output


def test_under_torchrun_every_process_resumes_from_the_checkpoint_rank_0_picks(whole, tiny_models, data, tmp_path):
    from lib_handrefiner.controlnet import save_controlnet

    out = tmp_path / "run"
    shutil.copytree(whole[0], out)
    for step in (3, 4):
        _truncate(ckpt.checkpoint_dir(out, step) / "optimizer.pt", 999)
    init = tmp_path / "init.safetensors"
    save_controlnet(controlnet_from_unet(read_unet_state(tiny_models.checkpoint)), init)
    args = ["--data", str(data), "--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(init), "--out",
            str(out), "--steps", str(STEPS), "--batch-size", "1", "--effective-batch", "4", "--resolution", "64",
            "--val-samples", "2", "--val-every", "0", "--save-every", "1", "--keep-checkpoints", "0", "--lr", "1e-3",
            "--workers", "0", "--no-progress", "--device", "cpu", "--resume"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lib_handrefiner", "train", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("note: resuming from") == 1 and "step-000002 (step 2)" in done.stderr
    assert "trained steps 3–4" in done.stdout
    start = controlnet_from_unet(read_unet_state(tiny_models.checkpoint)).state_dict()
    one, two = (load_controlnet(path).state_dict() for path in (whole[0] / "controlnet.safetensors",
                                                                out / "controlnet.safetensors"))
    update = torch.cat([(one[k] - start[k]).flatten() for k in start])
    difference = torch.cat([(one[k] - two[k]).flatten() for k in start])
    assert update.norm() > 0 and difference.norm() <= 1e-3 * update.norm()


def test_ctrl_c_while_saving_a_checkpoint_leaves_no_folder_behind(tiny_sd, unet_state, data, tmp_path, monkeypatch):
    calls = []

    def interrupted(obj, f, *args, **kwargs):
        calls.append(f)
        f.write(b"PK half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "run", steps=1), models=(tiny_sd, controlnet_from_unet(unet_state)))
    assert calls and list((tmp_path / "run" / "checkpoints").iterdir()) == []
    assert not (tmp_path / "run" / "controlnet.safetensors").exists()
