"""What the REST API and the hand-box editor drive: perception and refinement with named models.

`HandRefinerService` is the interface; `StandaloneService` implements it with files on disk (the `serve`
command and the tests). The WebUI glue implements the same interface over the WebUI's loaded model and its
model folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple

import numpy as np

from lib_handrefiner.models_registry import ModelListing, ModelSlots, build_listing, resolve_name
from lib_handrefiner.settings import HandRefinerArgs


class ModelLoadError(RuntimeError):
    """A listed model file could not be loaded (a server-side problem, not the request's)."""


class HandRefinerService(Protocol):
    def listing(self) -> ModelListing: ...

    def default_controlnet(self) -> Optional[str]:
        """The ControlNet used when a request names none (None: the settings model's default name)."""

    def perceive(self, image: np.ndarray, args: HandRefinerArgs) -> Any:
        """-> perception.PerceptionResult"""

    def refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any = None) -> Any:
        """-> pipeline.RefineResult"""


@dataclass
class StandaloneFolders:
    controlnet_dirs: Sequence[Path]
    checkpoint_dirs: Sequence[Path]
    mesh_dirs: Sequence[Path]


def standard_folders(models_dir: Optional[Path]) -> StandaloneFolders:
    """The WebUI's layout under `models_dir` (ControlNet/, Stable-diffusion/, handrefiner/) plus the folder
    itself."""
    base = [Path(models_dir)] if models_dir else []
    return StandaloneFolders(controlnet_dirs=[b / "ControlNet" for b in base] + base,
                             checkpoint_dirs=[b / "Stable-diffusion" for b in base] + base,
                             mesh_dirs=[b / "handrefiner" for b in base] + base)


class StandaloneService:
    """Loads the checkpoint and ControlNet named by a request (cached, one of each at a time)."""

    def __init__(self, checkpoint: Path, controlnet: Path, models_dir: Optional[Path] = None,
                 device: str = "cpu", mesh_model: str = "auto", mesh_fallback: bool = False) -> None:
        self.checkpoint = Path(checkpoint)
        self.controlnet = Path(controlnet)
        self.folders = standard_folders(models_dir)
        self.device = device
        # The mesh model for requests that leave mesh_model at "auto" (serve --mesh), and whether every request falls
        # back to the landmark mesh when Mesh Graphormer cannot be made (serve --mesh-fallback).
        self.mesh_model, self.mesh_fallback = mesh_model, mesh_fallback
        self._models = ModelSlots()

    def listing(self) -> ModelListing:
        listing = build_listing(self.folders.controlnet_dirs, self.folders.checkpoint_dirs, self.folders.mesh_dirs,
                                controlnet_files=[self.controlnet], checkpoint_files=[self.checkpoint])
        listing.mesh_fallback = self.mesh_fallback
        return listing

    def default_controlnet(self) -> Optional[str]:
        return self.controlnet.stem

    def perceive(self, image: np.ndarray, args: HandRefinerArgs) -> Any:
        from lib_handrefiner.perception import perceive
        return perceive(image, args, *self._mesh_model(args))

    def refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any = None) -> Any:
        from lib_handrefiner.pipeline import refine_image
        listing = self.listing()
        controlnet_path = resolve_name(args.controlnet, listing.controlnets, "controlnet")
        checkpoint_path = (resolve_name(args.inpaint_checkpoint, listing.checkpoints, "inpaint_checkpoint")
                           if args.inpaint_checkpoint else self.checkpoint)
        sd = self._load("sd", checkpoint_path, self._load_sd)
        controlnet = self._load("controlnet", controlnet_path, self._load_controlnet)
        mesh_model, mesh_warning = self._mesh_model(args)
        return refine_image(image, sd, controlnet, args, prompt=args.prompt, seed=seed, mesh_model=mesh_model,
                            perception=perception, mesh_warning=mesh_warning)

    def _mesh_model(self, args: Any) -> Tuple[Any, str]:
        """(model, warning); MeshModelError when it cannot be made (the API answers 503)."""
        import torch

        requested = self.mesh_model if args.mesh_model == "auto" else args.mesh_model
        on_gpu = torch.device(self.device).type == "cuda"
        return self._models.mesh_model(requested, self.folders.mesh_dirs, args.mesh_fallback or self.mesh_fallback,
                                       self.device, torch.float16 if on_gpu else torch.float32)

    def _load_sd(self, path: Path) -> Any:
        from lib_handrefiner.sd_model import load_sd_checkpoint
        config = path.with_suffix(".yaml")
        return load_sd_checkpoint(path, config_path=config if config.is_file() else None, device=self.device)

    def _load_controlnet(self, path: Path) -> Any:
        from lib_handrefiner.controlnet import load_controlnet
        return load_controlnet(path, device=self.device, fused_attention=True)

    def _load(self, kind: str, path: Path, loader: Callable[[Path], Any]) -> Any:
        def load() -> Any:
            try:
                return loader(path)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise ModelLoadError(f"could not load the {kind} model {path.name}: {e}") from e

        return self._models.get(kind, path, load)
