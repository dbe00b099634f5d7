"""Resumable training state: one folder per saved step under OUT/checkpoints/.

    step-000500/controlnet.safetensors   the ControlNet (float32, the extension's own file format)
    step-000500/optimizer.pt             AdamW's state (plain tensors and numbers: read with weights_only)
    step-000500/scaler.pt                the fp16 gradient scaler's state
    step-000500/rng.pt                   the global RNG states (torch CPU and CUDA, Python, NumPy)
    step-000500/state.json               the step and the settings the rest of the run must keep
    step-000500/manifest.json            the size and SHA-256 of each file above, written last

A folder is written under a temporary name (`.step-000500.PID.tmp`), every file flushed to the disk, and renamed
when complete, so an interrupted save leaves the previous checkpoint the newest. Resuming checks each file against
the manifest: a truncated, missing or overwritten file makes the checkpoint damaged, and `--resume` takes the newest
intact one, saying which and why the newer ones were skipped. The final export OUT/controlnet.safetensors is written
atomically with its SHA-256 beside it (`controlnet.safetensors.sha256`, `sha256sum -c` format); a resume past the
last step re-makes it from the last checkpoint when it is missing or damaged. One run at a time holds OUT (a lock
file); it removes the temporary folders and files that a killed run left.

The sample stream and every sample's noise derive from (seed, step) alone (see `dataset`), so the step, the weights
and the optimizer determine the rest of the run; the global RNG states are kept too, for anything else that draws
from them.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from lib_handrefiner.controlnet import ControlNet, read_controlnet_file, save_controlnet
from lib_handrefiner.safe_write import OutputFolder, remove_stale_temporaries, sync_folder, write_file

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILES = ("controlnet.safetensors", "optimizer.pt", "scaler.pt", "rng.pt", STATE_FILE)
LOCK_FILE = ".handrefiner-train.lock"
CHECKSUM_SUFFIX = ".sha256"
_STEP_NAME = re.compile(r"step-(\d+)")
_TEMP_NAME = re.compile(r"\.step-\d+\.\d+\.tmp")
# Settings that decide which samples each step sees and with what noise: a resumed run must keep them.
STREAM_SETTINGS = ("seed", "effective_batch", "train_samples", "resolution", "prompt_dropout", "masked_loss")


@dataclass
class SavedState:
    path: Path
    step: int
    settings: Dict[str, Any]


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, and what was said about the ones skipped on the way."""
    saved: SavedState
    skipped: Dict[Path, str] = field(default_factory=dict)   # newer checkpoint → why it is damaged

    def message(self) -> str:
        text = f"resuming from {self.saved.path} (step {self.saved.step})"
        if self.skipped:
            text += "; skipped the newer damaged " + "; ".join(f"{p.name}: {why}" for p, why in self.skipped.items())
        return text


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"step-{step:06d}"


def saved_checkpoints(out: Path) -> List[Path]:
    """Checkpoint folders (intact or not), oldest first."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(_STEP_NAME.fullmatch(p.name).group(1)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: Path) -> Optional[str]:
    """Why the checkpoint folder `path` cannot be resumed from (a file missing, truncated or changed since it was
    saved), else None."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (saved without checksums, by an older HandRefiner, or damaged)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST_FILE} is unreadable ({e})"
    for name in CHECKPOINT_FILES:
        entry = files.get(name) if isinstance(files, dict) else None
        if not isinstance(entry, dict):
            return f"{MANIFEST_FILE} does not list {name}"
        file = path / name
        if not file.is_file() or file.is_symlink():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry.get("bytes"):
            return f"{name} has {size} bytes, {entry.get('bytes')} were saved (truncated or replaced)"
        if sha256_of(file) != entry.get("sha256"):
            return f"{name} differs from its SHA-256 checksum (bytes overwritten)"
    return None


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
    """Writes step `step`'s folder (atomically, each file flushed, the manifest last) and deletes all but the newest
    `keep` ones up to this step (keep ≤ 0: none)."""
    root = OutputFolder(out).mkdir(CHECKPOINTS_DIR)
    final = OutputFolder(root, create=False).path(f"step-{step:06d}", folder=True)   # refuses a link in its place
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        folder = OutputFolder(tmp)
        save_controlnet(controlnet, tmp / "controlnet.safetensors")
        folder.write("optimizer.pt", lambda f: torch.save(optimizer.state_dict(), f))
        folder.write("scaler.pt", lambda f: torch.save(scaler.state_dict(), f))
        folder.write("rng.pt", lambda f: torch.save(_rng_state(), f))
        folder.write(STATE_FILE, json.dumps({"step": step, "settings": settings}, indent=1, sort_keys=True))
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name)}
                 for name in CHECKPOINT_FILES}
        folder.write(MANIFEST_FILE, json.dumps({"step": step, "files": files}, indent=1, sort_keys=True))
    except BaseException:  # Ctrl-C, a full disk: no half-written folder stays behind (a kill's is removed later)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    sync_folder(root)
    if keep > 0:
        done = [p for p in saved_checkpoints(out) if _step_of(p) <= step]
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(path: Path) -> int:
    return int(_STEP_NAME.fullmatch(path.name).group(1))


def find_checkpoint(out: Path, which: str) -> ResumePoint:
    """`which`: "latest" (the newest intact one under OUT/checkpoints) or a checkpoint folder's path (which must be
    intact). Raises ValueError naming each damaged checkpoint and what to do."""
    if which != "latest":
        path = Path(which)
        if not path.is_dir():
            raise ValueError(f"--resume {path}: not a checkpoint folder; pass one of {Path(out) / CHECKPOINTS_DIR}"
                             "/step-*, or --resume alone for the newest intact one")
        why = damage(path)
        if why:
            raise ValueError(f"--resume {path}: the checkpoint is damaged: {why}; pass an older one, or --resume "
                             "alone for the newest intact one")
        return ResumePoint(read_checkpoint_state(path))
    skipped: Dict[Path, str] = {}
    for path in reversed(saved_checkpoints(out)):
        why = damage(path)
        if why is None:
            try:
                return ResumePoint(read_checkpoint_state(path), skipped)
            except (ValueError, KeyError, TypeError) as e:  # checksummed, so written so by a foreign program
                why = f"{STATE_FILE} is unreadable ({e})"
        skipped[path] = why
    if skipped:
        raise ValueError(f"--resume: no intact checkpoint under {Path(out) / CHECKPOINTS_DIR}: "
                         + "; ".join(f"{p.name}: {why}" for p, why in skipped.items())
                         + ". Train again into a new --out (or delete that folder's checkpoints/)")
    raise ValueError(f"--resume: no checkpoint under {Path(out) / CHECKPOINTS_DIR}; train without --resume "
                     "to start, or pass the --out of the run to continue")


def read_checkpoint_state(path: Path) -> SavedState:
    state = json.loads((Path(path) / STATE_FILE).read_text())
    return SavedState(Path(path), int(state["step"]), dict(state["settings"]))


def discard(paths: List[Path]) -> None:
    """Deletes damaged checkpoint folders (a resumed run re-makes their steps)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


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


# ---- the output folder: one run at a time, leftovers of killed runs, the final export ---------------------------

class OutputLock:
    """OUT held by one training run (an OS lock on OUT/.handrefiner-train.lock, released when the process ends, also
    by a kill), so that the run may delete what a killed one left there."""

    def __init__(self, out: Path) -> None:
        path = OutputFolder(out).path(LOCK_FILE)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            _lock(self.fd)
        except OSError:
            holder = os.read(self.fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            raise ValueError(f"--out {out} is in use by another training (PID {holder}); wait until it ends or "
                             "choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_leftovers(out: Path) -> List[Path]:
    """Deletes the temporary checkpoint folders (`.step-N.PID.tmp`) and temporary files that killed runs left in
    OUT; call it only while holding OUT (`OutputLock`). Returns what was removed."""
    out = Path(out)
    removed = []
    root = out / CHECKPOINTS_DIR
    if root.is_dir() and not root.is_symlink():
        for entry in root.iterdir():
            if _TEMP_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    for folder in (out, root, out / "validation"):
        if folder.is_dir() and not folder.is_symlink():
            removed += remove_stale_temporaries(folder)
    return removed


def write_export(controlnet: ControlNet, path: Path, fp16: bool) -> Path:
    """The final ControlNet, written atomically, then its SHA-256 beside it (`sha256sum -c` reads it)."""
    save_controlnet(controlnet, path, fp16=fp16)
    write_file(path.with_name(path.name + CHECKSUM_SUFFIX), f"{sha256_of(path)}  {path.name}\n")
    return path


def export_damage(path: Path) -> Optional[str]:
    """Why the final export `path` must be re-made (missing, no checksum, content changed), else None."""
    if not path.is_file():
        return "it is missing"
    try:
        expected = path.with_name(path.name + CHECKSUM_SUFFIX).read_text().split()[0]
    except (OSError, IndexError):
        return f"its checksum file {path.name}{CHECKSUM_SUFFIX} is missing (an interrupted export)"
    if sha256_of(path) != expected:
        return "its content differs from its SHA-256 checksum (truncated or overwritten)"
    return None


def remake_export(saved: SavedState, path: Path, fp16: bool) -> Path:
    """The final export again from the checkpoint of the last step: the same bytes the run wrote."""
    from lib_handrefiner.controlnet import load_controlnet

    return write_export(load_controlnet(saved.path / "controlnet.safetensors"), path, fp16)


def training_output_advice(path: Path) -> Optional[str]:
    """What to do about an unreadable ControlNet file that a training run wrote (its export or a checkpoint's
    copy), else None."""
    path = Path(path)
    if path.parent.parent.name == CHECKPOINTS_DIR and _STEP_NAME.fullmatch(path.parent.name):
        return (f"it is the ControlNet of the training checkpoint {path.parent}: resume with `python -m "
                f"lib_handrefiner train … --out {path.parent.parent.parent} --resume` (it takes the newest intact "
                "checkpoint), or train again")
    if (path.parent / CHECKPOINTS_DIR).is_dir():
        return (f"it is the export of the training run in {path.parent}: re-make it with `python -m lib_handrefiner "
                f"train … --out {path.parent} --resume` (the run's options; it is rebuilt from the last checkpoint), "
                "or train again")
    return None
