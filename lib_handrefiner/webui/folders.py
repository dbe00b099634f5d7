"""Where the WebUI keeps the models HandRefiner lists and loads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence


@dataclass
class ModelFolders:
    controlnet_dirs: List[Path]
    checkpoint_dirs: List[Path]
    mesh_dirs: List[Path]

    def describe(self, kind: str) -> str:
        return ", ".join(str(d) for d in getattr(self, f"{kind}_dirs"))


def model_folders(models_path: Any, handrefiner_models_dir: Any = None, controlnet_dir: Any = None,
                  ckpt_dir: Any = None, extensions_dir: Any = None) -> ModelFolders:
    """Where the WebUI keeps models: --handrefiner-models-dir first, then models/handrefiner; ControlNets also in
    models/ControlNet, sd-webui-controlnet's --controlnet-dir and (when installed) its own models folder;
    checkpoints in --ckpt-dir and models/Stable-diffusion."""
    models = Path(models_path)
    own = [Path(handrefiner_models_dir)] if handrefiner_models_dir else []
    own.append(models / "handrefiner")
    shared_controlnets = [models / "ControlNet"] + ([Path(controlnet_dir)] if controlnet_dir else [])
    if extensions_dir and (Path(extensions_dir) / "sd-webui-controlnet").is_dir():
        shared_controlnets.append(Path(extensions_dir) / "sd-webui-controlnet" / "models")
    return ModelFolders(
        controlnet_dirs=_unique(own + shared_controlnets),
        checkpoint_dirs=_unique(([Path(ckpt_dir)] if ckpt_dir else []) + [models / "Stable-diffusion"] + own),
        mesh_dirs=_unique(own))


def _unique(paths: Sequence[Path]) -> List[Path]:
    seen: List[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen
