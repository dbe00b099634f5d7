"""Pluggable hand mesh models.

A mesh model turns a detected `Hand` (and the image, for models that look at pixels) into a `HandMesh` in the
image camera (orthographic pixels, z away from the viewer; see dev/ARCHITECTURE.md "Coordinates"), so a mesh's
2D projection is `vertices[:, :2]`. Models are looked up by name with `get_mesh_model`; `landmarks` (built from
the 21 MediaPipe landmarks, no weights) is the default. Another model registers itself with
`register_mesh_model(name, factory)`, where `factory(models_dir)` returns the model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Protocol, Tuple, Union

import numpy as np

from lib_handrefiner.detection import Hand


@dataclass(frozen=True)
class HandMesh:
    vertices: np.ndarray  # (N, 3) float32, image camera pixels
    faces: np.ndarray     # (F, 3) int32, counter-clockwise seen from outside (outward normals)
    joints: np.ndarray    # (21, 3) float32, MediaPipe landmark order, image camera pixels
    model: str            # name of the mesh model that made it


class MeshModel(Protocol):
    name: str

    def fit(self, hand: Hand, rgb: np.ndarray) -> HandMesh: ...


class MeshModelError(ValueError):
    """A mesh model is unknown or cannot be loaded; the message says which ones exist or what file is missing."""


MeshFactory = Callable[[Optional[Path]], MeshModel]

# name -> "module:attribute" of a factory taking models_dir (imported on first use), or the factory itself.
_REGISTRY: Dict[str, Union[str, MeshFactory]] = {
    "landmarks": "lib_handrefiner.mesh.landmarks:LandmarkMeshModel",
}


def register_mesh_model(name: str, factory: Union[str, MeshFactory]) -> None:
    _REGISTRY[name] = factory


def mesh_model_names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get_mesh_model(name: str = "landmarks", models_dir: Optional[Union[str, Path]] = None) -> MeshModel:
    if name not in _REGISTRY:
        raise MeshModelError(f"unknown mesh model {name!r}; available: {', '.join(_REGISTRY)}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(Path(models_dir) if models_dir is not None else None)


def transform_mesh(mesh: HandMesh, scale: float, offset_xy: Tuple[float, float]) -> HandMesh:
    """The mesh in the camera of a crop cut at `offset_xy` and resized by `scale`: v' = (v - [ox, oy, 0]) * scale
    (z scales like x, so the orthographic camera stays in pixels)."""
    offset = np.array([offset_xy[0], offset_xy[1], 0.0], dtype=np.float32)
    return HandMesh(vertices=((mesh.vertices - offset) * np.float32(scale)).astype(np.float32),
                    faces=mesh.faces, joints=((mesh.joints - offset) * np.float32(scale)).astype(np.float32),
                    model=mesh.model)
