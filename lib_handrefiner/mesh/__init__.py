"""Pluggable hand mesh models.

A mesh model turns a detected `Hand` (and the image, for models that look at pixels) into a `HandMesh` in the
image camera (orthographic pixels, z away from the viewer; see dev/ARCHITECTURE.md "Coordinates"), so a mesh's
2D projection is `vertices[:, :2]`. Models are looked up by name with `get_mesh_model`; `landmarks` (built from
the 21 MediaPipe landmarks, no weights) needs no files; `graphormer` (Mesh Graphormer, the paper's model) needs
three the user supplies (mesh/graphormer/files.py). A new model is an entry of `_REGISTRY` (a factory taking the
models folders, device and dtype) and a value of the `mesh_model` setting's Literal.

A mesh may carry a `PerspectiveView`: the pinhole camera the official HandRefiner preprocessor renders Mesh
Graphormer's hands with. depth.py then casts that camera's rays (one per pixel centre of its crop window) instead
of the image camera's orthographic ones, so the depth is the official depth.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from lib_handrefiner.detection import Hand


@dataclass(frozen=True)
class PerspectiveView:
    """A pinhole camera at `origin` looking along +z at `vertices` (the mesh in the model's own frame, with the
    same faces as the HandMesh). The ray of image pixel (u, v) has direction ((u + 0.5 − cx)/f, (v + 0.5 − cy)/f,
    1); only the pixels of `window` [x0, x1) × [y0, y1) are rendered (it may reach past the image). `order`
    decides which hand is drawn over which: hands are pasted in decreasing `order`, each over the earlier ones
    wherever it has depth."""
    vertices: np.ndarray              # (N, 3) float64
    origin: np.ndarray                # (3,) float64
    focal: float                      # pixels
    principal: Tuple[float, float]    # (cx, cy), image pixels
    window: Tuple[int, int, int, int]
    order: float


@dataclass(frozen=True)
class HandMesh:
    vertices: np.ndarray  # (N, 3) float32, image camera pixels
    faces: np.ndarray     # (F, 3) int32, counter-clockwise seen from outside (outward normals)
    joints: np.ndarray    # (21, 3) float32, MediaPipe landmark order, image camera pixels
    model: str            # name of the mesh model that made it
    view: Optional[PerspectiveView] = None  # set: render with this camera (see PerspectiveView)


class MeshModel(Protocol):
    name: str

    # `box` (image px x0, y0, x1, y1): the user's box of a hand that only the landmark model found there
    # (found_by "user_box"), whose landmarks may not be trusted: a model that reads the image takes its crop from
    # the box, as the paper does; the landmark mesh has nothing else to go by.
    def fit(self, hand: Hand, rgb: np.ndarray, box: Optional[Sequence[float]] = None) -> HandMesh: ...


class MeshModelError(ValueError):
    """A mesh model is unknown or cannot be loaded; the message says which ones exist or what file is missing."""


ModelsDir = Union[None, str, Path, Sequence[Union[str, Path]]]
# A factory takes the models folder(s) (None, a folder, or a list of folders; see graphormer.files.search_folders),
# the torch device and dtype its network runs in (models without one ignore them).
MeshFactory = Callable[..., MeshModel]

# name -> "module:attribute" of a factory (imported on first use), or the factory itself.
_REGISTRY: Dict[str, Union[str, MeshFactory]] = {
    "landmarks": "lib_handrefiner.mesh.landmarks:LandmarkMeshModel",
    "graphormer": "lib_handrefiner.mesh.graphormer.model:load_graphormer",
}


def mesh_model_names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


AUTO = "auto"  # the setting that picks graphormer when its files are found, else landmarks
MODELS_DIR_ENV = "HANDREFINER_MODELS_DIR"  # the models folder when none is given


def auto_mesh_name(models_dir: ModelsDir = None) -> str:
    from lib_handrefiner.mesh.graphormer.files import missing_files, search_folders

    return "landmarks" if missing_files(search_folders(models_dir)) else "graphormer"


def get_mesh_model(name: str = "landmarks", models_dir: ModelsDir = None, device: Any = "cpu",
                   dtype: Any = None) -> MeshModel:
    """The mesh model called `name` ("auto": see auto_mesh_name), its files from `models_dir`, its network (if
    any) on `device` in `dtype` (None: float32); MeshModelError (for Mesh Graphormer: naming each missing or
    wrong file) when it cannot be made."""
    if name == AUTO:
        name = auto_mesh_name(models_dir)
    if name not in _REGISTRY:
        raise MeshModelError(f"unknown mesh model {name!r}; available: {', '.join((AUTO, *_REGISTRY))}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(models_dir, device=device, dtype=dtype)


def resolve_mesh_model(requested: str, models_dir: ModelsDir = None, fallback: bool = False,
                       load: Optional[Callable[[str], MeshModel]] = None) -> Tuple[MeshModel, str]:
    """(model, warning) for the `mesh_model` setting: "auto" is graphormer when its files are found, else
    landmarks; a model that cannot be made raises its MeshModelError, or with `fallback` gives the landmark mesh
    and a warning saying why. `load(name)` makes a model (default: get_mesh_model with `models_dir`; callers that
    cache models or choose the device pass their own)."""
    load = load or (lambda name: get_mesh_model(name, models_dir))
    name = auto_mesh_name(models_dir) if requested == AUTO else requested
    try:
        return load(name), ""
    except MeshModelError as e:
        if not fallback or name == "landmarks":
            raise
        return load("landmarks"), f"used the landmark mesh instead of Mesh Graphormer (mesh_fallback): {e}"


def transform_mesh(mesh: HandMesh, scale: float, offset_xy: Tuple[float, float]) -> HandMesh:
    """The mesh in the camera of a crop cut at `offset_xy` and resized by `scale`: v' = (v - [ox, oy, 0]) * scale
    (z scales like x, so the orthographic camera stays in pixels)."""
    offset = np.array([offset_xy[0], offset_xy[1], 0.0], dtype=np.float32)
    view = mesh.view
    if view is not None:
        # The same rays through the crop's pixels: principal point and focal length in the crop's pixels.
        ox, oy = offset_xy
        x0, y0, x1, y1 = view.window
        view = replace(view, focal=view.focal * scale,
                       principal=((view.principal[0] - ox) * scale, (view.principal[1] - oy) * scale),
                       window=(round((x0 - ox) * scale), round((y0 - oy) * scale), round((x1 - ox) * scale),
                               round((y1 - oy) * scale)))
    return HandMesh(vertices=((mesh.vertices - offset) * np.float32(scale)).astype(np.float32),
                    faces=mesh.faces, joints=((mesh.joints - offset) * np.float32(scale)).astype(np.float32),
                    model=mesh.model, view=view)
