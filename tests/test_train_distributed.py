"""Many processes: `torchrun --nproc_per_node 2` (gloo on the CPU) trains what one process trains with the same
effective batch, to float tolerance, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT
from train_data import write_training_folder

from lib_handrefiner.controlnet import controlnet_from_unet, load_controlnet, read_unet_state, save_controlnet
from lib_handrefiner.sd_model import load_sd_checkpoint
from lib_handrefiner.train.loop import TrainConfig, train

STEPS = 2


def _files(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "config.json"}


def _update(path: Path, init: dict) -> torch.Tensor:
    trained = load_controlnet(path).state_dict()
    return torch.cat([(trained[k] - init[k]).flatten() for k in init])


def test_two_gloo_processes_train_what_one_process_trains(tiny_models, tmp_path):
    data = write_training_folder(tmp_path / "data", count=6, size=64)
    init = tmp_path / "init.safetensors"
    save_controlnet(controlnet_from_unet(read_unet_state(tiny_models.checkpoint)), init)
    common = ["--data", str(data), "--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(init),
              "--steps", str(STEPS), "--effective-batch", "4", "--resolution", "64", "--val-samples", "0",
              "--save-every", "1", "--lr", "1e-3", "--workers", "0", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lib_handrefiner", "train", *common, "--batch-size", "1", "--out",
                           str(tmp_path / "two")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1                       # one report: rank 0's

    one = TrainConfig(data=data, checkpoint=tiny_models.checkpoint, controlnet=init, out=tmp_path / "one",
                      steps=STEPS, batch_size=2, effective_batch=4, resolution=64, val_samples=0, save_every=1,
                      lr=1e-3, num_workers=0, progress=False, device="cpu")
    sd = load_sd_checkpoint(tiny_models.checkpoint)
    single = train(one, models=(sd, load_controlnet(init)))

    two_losses = [json.loads(line)["loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(two_losses) == STEPS
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(single.losses, two_losses)), (single.losses, two_losses)
    start = load_controlnet(init).state_dict()
    a = _update(tmp_path / "one" / "controlnet.safetensors", start)
    b = _update(tmp_path / "two" / "controlnet.safetensors", start)
    assert a.norm() > 0 and (a - b).norm() <= 1e-3 * a.norm()
    assert _files(tmp_path / "two") == _files(tmp_path / "one")   # rank 1 wrote nothing of its own
