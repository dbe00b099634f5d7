"""Resumable training state: one folder per saved step under OUT/checkpoints/.

    step-000500/controlnet.safetensors   the ControlNet (float32, the extension's own file format)
    step-000500/optimizer.pt             AdamW's state (plain tensors and numbers: read with weights_only)
    step-000500/scaler.pt                the fp16 gradient scaler's state
    step-000500/rng.pt                   the global RNG states (torch CPU and CUDA, Python, NumPy)
    step-000500/state.json               the step and the settings the rest of the run must keep

A folder is written under a temporary name and renamed when complete, so an interrupted save leaves the previous
checkpoint the newest. The sample stream and every sample's noise derive from (seed, step) alone (see
`dataset`), so the step, the weights and the optimizer determine the rest of the run; the global RNG states are
kept too, for anything else that draws from them.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from lib_handrefiner.controlnet import ControlNet, read_controlnet_file, save_controlnet

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
# Settings that decide which samples each step sees and with what noise: a resumed run must keep them.
STREAM_SETTINGS = ("seed", "effective_batch", "train_samples", "resolution", "prompt_dropout", "masked_loss")


@dataclass
class SavedState:
    path: Path
    step: int
    settings: Dict[str, Any]


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"step-{step:06d}"


def saved_checkpoints(out: Path) -> List[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file())


def _rng_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                      "has_gauss": has_gauss, "gauss": gauss}}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))


def save_checkpoint(out: Path, step: int, controlnet: ControlNet, optimizer: torch.optim.Optimizer,
                    scaler: Any, settings: Dict[str, Any], keep: int = 2) -> Path:
    """Writes step `step`'s folder (atomically) and deletes all but the newest `keep` ones (keep ≤ 0: none)."""
    final = checkpoint_dir(out, step)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_controlnet(controlnet, tmp / "controlnet.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scaler.state_dict(), tmp / "scaler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "settings": settings}, indent=1, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in saved_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path, which: str) -> Path:
    """`which`: "latest" (the newest under OUT/checkpoints) or a checkpoint folder's path."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE_FILE).is_file():
            raise ValueError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE}); pass one of "
                             f"{Path(out) / CHECKPOINTS_DIR}/step-*, or --resume alone for the newest")
        return path
    found = saved_checkpoints(out)
    if not found:
        raise ValueError(f"--resume: no checkpoint under {Path(out) / CHECKPOINTS_DIR}; train without --resume "
                         "to start, or pass the --out of the run to continue")
    return found[-1]


def read_checkpoint_state(path: Path) -> SavedState:
    state = json.loads((Path(path) / STATE_FILE).read_text())
    return SavedState(Path(path), int(state["step"]), dict(state["settings"]))


def check_resumable(saved: SavedState, settings: Dict[str, Any]) -> None:
    """The resumed run must see the same stream of samples and noise as the saved one."""
    changed = [f"{k}: {saved.settings.get(k)!r} → {settings.get(k)!r}" for k in STREAM_SETTINGS
               if saved.settings.get(k) != settings.get(k)]
    if changed:
        raise ValueError(f"--resume {saved.path}: these settings differ from the saved run's, so it would not "
                         f"continue the same training: {'; '.join(changed)}. Use the saved settings, or train "
                         "into a new --out")


def load_checkpoint(saved: SavedState, controlnet: ControlNet, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
    """Restores weights, optimizer, scaler and RNG states in place (every file read without running code)."""
    found = read_controlnet_file(saved.path / "controlnet.safetensors")
    with torch.no_grad():
        for name, tensor in controlnet.state_dict().items():
            tensor.copy_(found.state[name])
    optimizer.load_state_dict(torch.load(saved.path / "optimizer.pt", map_location="cpu", weights_only=True))
    scaler.load_state_dict(torch.load(saved.path / "scaler.pt", map_location="cpu", weights_only=True))
    _set_rng_state(torch.load(saved.path / "rng.pt", map_location="cpu", weights_only=True))
