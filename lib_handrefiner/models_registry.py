"""Which model files are available, by name only.

API clients and the UI pick models by name (a file name without extension, as the WebUI shows them); a name
resolves to a path only if it is one of the listed files. Nothing a client sends is ever joined to a path, so
`../`, absolute paths and NUL bytes cannot reach the file system.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from lib_handrefiner.settings import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")

# The WebUI (and sd-webui-controlnet) show model names as "name [hash]"; the hash is not part of the file name.
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")


class ModelNameError(ValueError):
    """A model name that is not a listed file; the message says which names are."""


@dataclass(frozen=True)
class MeshModelStatus:
    name: str
    available: bool
    missing: List[str]
    reason: str = ""      # why it is not available, for people
    uses: str = ""        # the model it stands for now ("auto": graphormer or landmarks; the others: themselves)


@dataclass
class ModelListing:
    controlnets: Dict[str, Path] = field(default_factory=dict)   # name (stem) -> file
    checkpoints: Dict[str, Path] = field(default_factory=dict)
    mesh_models: List[MeshModelStatus] = field(default_factory=list)
    # What `sampler` and `scheduler` may name: outside the WebUI only the built-in sampler.
    samplers: List[str] = field(default_factory=lambda: [BUILTIN_SAMPLER])
    schedulers: List[str] = field(default_factory=lambda: [AUTOMATIC_SCHEDULER])
    # The server uses the landmark mesh where Mesh Graphormer cannot be made, whatever a request's mesh_fallback
    # says (serve --mesh-fallback).
    mesh_fallback: bool = False

    def mesh_status(self, name: str) -> Optional[MeshModelStatus]:
        return next((m for m in self.mesh_models if m.name == name), None)


def check_name_safe(name: object, what: str) -> str:
    """The name as a plain file name, or ModelNameError for anything that could address another path."""
    if not isinstance(name, str):
        raise ModelNameError(f"{what} must be a string (a model name), got {type(name).__name__}")
    if "\x00" in name:
        raise ModelNameError(f"{what} contains a NUL byte; give a model name from GET /handrefiner/models")
    if "/" in name or "\\" in name or name.strip() in (".", "..") or re.match(r"^[A-Za-z]:", name):
        raise ModelNameError(f"{what} {name!r} is a path; give a model name from GET /handrefiner/models, "
                             "not a path")
    return _HASH_SUFFIX.sub("", name.strip())


def list_model_files(folders: Iterable[Path | str | None], files: Iterable[Path | str] = ()) -> Dict[str, Path]:
    """The given files and the model files directly inside the folders, by name (stem); the first wins on a
    clash."""
    found: Dict[str, Path] = {Path(f).stem: Path(f) for f in files if Path(f).is_file()}
    for folder in folders:
        if not folder:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS:
                found.setdefault(path.stem, path)
    return found


def mesh_model_status(folders: Iterable[Path | str | None]) -> List[MeshModelStatus]:
    """auto, graphormer and landmarks: whether each can be used with the files in `folders`; for Mesh Graphormer
    the missing files and, as the reason, what each is and where to get it."""
    from lib_handrefiner.mesh.graphormer.files import missing_files, missing_message

    folders = [Path(f) for f in folders if f]
    missing = missing_files(folders)
    return [MeshModelStatus(name="auto", available=True, missing=[], uses="landmarks" if missing else "graphormer"),
            MeshModelStatus(name="graphormer", available=not missing, missing=missing,
                            reason=missing_message(missing, folders) if missing else "", uses="graphormer"),
            MeshModelStatus(name="landmarks", available=True, missing=[], uses="landmarks")]


def build_listing(controlnet_dirs: Sequence[Path | str | None] = (), checkpoint_dirs: Sequence[Path | str | None] = (),
                  mesh_dirs: Sequence[Path | str | None] = (), controlnet_files: Sequence[Path | str] = (),
                  checkpoint_files: Sequence[Path | str] = ()) -> ModelListing:
    return ModelListing(controlnets=list_model_files(controlnet_dirs, controlnet_files),
                        checkpoints=list_model_files(checkpoint_dirs, checkpoint_files),
                        mesh_models=mesh_model_status(mesh_dirs))


def resolve_name(name: object, available: Dict[str, Path], what: str) -> Path:
    """The listed file called `name` (with or without its extension or a " [hash]" suffix)."""
    clean = check_name_safe(name, what)
    if clean in available:
        return available[clean]
    stem = Path(clean).stem if Path(clean).suffix.lower() in MODEL_EXTENSIONS else None
    if stem is not None and stem in available:
        return available[stem]
    names = ", ".join(sorted(available)) or "none are installed"
    raise ModelNameError(f"{what} {clean!r} is not an available model; available: {names}")


class ModelSlots:
    """One loaded model per kind (checkpoint, ControlNet, mesh): asking for another key frees the previous model
    before loading the next, so two multi-GB checkpoints are never held at once."""

    def __init__(self) -> None:
        self._slots: Dict[str, Tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, key: Any, load: Callable[[], Any]) -> Any:
        with self._lock:
            held = self._slots.get(kind)
            if held is not None and held[0] == key:
                return held[1]
            self._slots.pop(kind, None)
            model = load()
            self._slots[kind] = (key, model)
            return model

    def mesh_model(self, requested: str, folders: Sequence[Path | str], fallback: bool = False, device: Any = "cpu",
                   dtype: Any = None) -> Tuple[Any, str]:
        """(model, warning) for the `mesh_model` setting `requested` (mesh.resolve_mesh_model), the model held in
        the "mesh" slot: Mesh Graphormer loads once per folders, device and dtype."""
        from lib_handrefiner.mesh import get_mesh_model, resolve_mesh_model

        folders = [Path(f) for f in folders]

        def load(name: str) -> Any:
            key = (name, tuple(str(f) for f in folders), str(device), dtype)
            return self.get("mesh", key, lambda: get_mesh_model(name, folders, device=device, dtype=dtype))

        return resolve_mesh_model(requested, folders, fallback, load)

    def models(self) -> List[Any]:
        with self._lock:
            return [model for _, model in self._slots.values()]
