"""Pickled checkpoints as released models ship them, written by the tests: a PyTorch Lightning `.ckpt` (a state
dict beside a pickled `ModelCheckpoint` callback) without pytorch_lightning installed."""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch

LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


@contextmanager
def fake_lightning() -> Iterator[type]:
    """A `ModelCheckpoint` class that pickles as pytorch_lightning's (its module registered only while inside),
    so torch.save writes the same globals as a Lightning checkpoint does."""
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_MODULE)
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor = "val/loss_simple_ema"
            self.best_model_score = torch.tensor(0.123)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = LIGHTNING_MODULE, "ModelCheckpoint"
    modules[LIGHTNING_MODULE].ModelCheckpoint = ModelCheckpoint
    sys.modules.update(modules)
    try:
        yield ModelCheckpoint
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_lightning_checkpoint(path: Path, state_dict: Mapping[str, torch.Tensor], legacy: bool = False) -> Path:
    """`path` in the layout of RunwayML's sd-v1-5-inpainting.ckpt: the weights under "state_dict", the training
    step, and Lightning's callback state keyed by the callback class, plus a callback object itself."""
    with fake_lightning() as ModelCheckpoint:
        torch.save({"state_dict": dict(state_dict), "global_step": 440000, "epoch": 3,
                    "callbacks": {ModelCheckpoint: {"best_model_path": "logs/last.ckpt"}},
                    "trainer_callback": ModelCheckpoint()},
                   path, _use_new_zipfile_serialization=not legacy)
    return path


def tiny_lightning_checkpoint(tiny_models, directory: Path, name: str = "tiny-inpaint-lightning") -> Path:
    """The tiny inpainting checkpoint as a Lightning `.ckpt` in `directory`, with its yaml (and the CLIP folder the
    yaml names) beside it."""
    from safetensors.torch import load_file

    directory.mkdir(parents=True, exist_ok=True)
    path = write_lightning_checkpoint(directory / f"{name}.ckpt", load_file(str(tiny_models.checkpoint)))
    (directory / f"{name}.yaml").write_bytes(tiny_models.config.read_bytes())
    clip = directory / "clip-tiny"
    if not clip.exists():
        clip.symlink_to(tiny_models.config.parent / "clip-tiny")
    return path
