"""The three files Mesh Graphormer needs, which the user supplies (none is shipped or downloaded): where they are
looked for, what a missing or wrong one is told, and how each is read without running anything in it.

- graphormer_hand_state_dict.bin: a legacy, non-zip `torch.save` of a state dict, through
  `safe_pickle.load_torch_file(unknown="refuse")` (tensors and containers only, as torch.load(weights_only=True),
  with safe_pickle's bounds on declared sizes).
- MANO_RIGHT.pkl: a Python 2 pickle referencing chumpy and scipy.sparse, through `safe_pickle` (chumpy and scipy
  objects become inert placeholders, turned into arrays by `safe_pickle.plain_data`; nothing is imported or run).
- mano_downsampling.npz: an npz of pickled scipy.sparse matrices, through `safe_pickle.load_npz` (never
  `np.load(allow_pickle=True)`).

A hostile or damaged file is a `GraphormerFileError` (a MeshModelError: with mesh_fallback the landmark mesh is
used) with one line saying why: safe_pickle bounds its depth, objects and array sizes, and no sparse matrix is
made dense before its shape is checked.
"""
from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch

from lib_handrefiner import safe_pickle
from lib_handrefiner.mesh import MODELS_DIR_ENV, MeshModelError
from lib_handrefiner.mesh.graphormer.mano import (
    NUM_FACES,
    NUM_SKELETON_JOINTS,
    NUM_SUB_VERTICES,
    NUM_VERTICES,
    Mano,
    MeshSampling,
)


@dataclass(frozen=True)
class RequiredFile:
    name: str
    what: str
    where: str


NETWORK = RequiredFile(
    "graphormer_hand_state_dict.bin",
    "Mesh Graphormer's hand network (HRNet-W64 backbone included, 855,658,184 bytes)",
    "MeshGraphormer's release: https://datarelease.blob.core.windows.net/metro/models/graphormer_hand_state_dict.bin "
    "(microsoft/MeshGraphormer scripts/download_models.sh), also in hr16/ControlNet-HandRefiner-pruned on Hugging Face")
MANO_MODEL = RequiredFile(
    "MANO_RIGHT.pkl",
    "the MANO hand model (right hand: template, faces, joint regressor, skinning)",
    "https://mano.is.tue.mpg.de: register, accept the MANO licence (non-commercial research only) and download "
    "\"Models & Code\"; the file is mano_v1_2/models/MANO_RIGHT.pkl. The licence does not allow passing the file "
    "on, so it must be your own download")
SAMPLING = RequiredFile(
    "mano_downsampling.npz",
    "the 778 → 195 vertex sampling of the MANO mesh the network was trained with",
    "the microsoft/MeshGraphormer repository, src/modeling/data/mano_downsampling.npz")
REQUIRED_FILES = (NETWORK, MANO_MODEL, SAMPLING)
FILE_NAMES = tuple(f.name for f in REQUIRED_FILES)


class GraphormerFileError(MeshModelError):
    """A Mesh Graphormer file is missing or is not what it should be; the message names it, says what it is and
    where to get it."""


def search_folders(models_dir: Union[None, str, Path, Sequence[Union[str, Path]]] = None) -> List[Path]:
    """The folders the files are looked for in, in order: a list is taken as given; one folder means its
    handrefiner/ subfolder, then itself (the WebUI's models/ layout or a plain folder); none means the folder of
    the HANDREFINER_MODELS_DIR environment variable, the same way (or no folder at all)."""
    if models_dir is None:
        models_dir = os.environ.get(MODELS_DIR_ENV) or None
        if models_dir is None:
            return []
    if isinstance(models_dir, (str, Path)):
        return [Path(models_dir) / "handrefiner", Path(models_dir)]
    return [Path(p) for p in models_dir]


def find_files(folders: Sequence[Path]) -> Dict[str, Path]:
    """The required files found (name → path, the first folder that has one wins)."""
    found: Dict[str, Path] = {}
    for folder in folders:
        for name in FILE_NAMES:
            if name not in found and (Path(folder) / name).is_file():
                found[name] = Path(folder) / name
    return found


def missing_files(folders: Sequence[Path]) -> List[str]:
    found = find_files(folders)
    return [name for name in FILE_NAMES if name not in found]


def _where_to_put(folders: Sequence[Path]) -> str:
    if folders:
        return "put it in " + (str(folders[0]) if len(folders) == 1 else
                               f"one of: {', '.join(str(f) for f in folders)}")
    return (f"put it in a folder and give that folder with --models-dir (or the {MODELS_DIR_ENV} environment "
            "variable)")


def missing_message(missing: Sequence[str], folders: Sequence[Path]) -> str:
    """One sentence per missing file: its name, what it is, where to get it, where to put it."""
    lines = [f"Mesh Graphormer needs {len(missing)} file(s) that are not there:"]
    for required in REQUIRED_FILES:
        if required.name in missing:
            lines.append(f"- {required.name}: {required.what}. Get it from {required.where}; "
                         f"{_where_to_put(folders)}.")
    return "\n".join(lines)


def _wrong(required: RequiredFile, path: Path, problem: str) -> GraphormerFileError:
    return GraphormerFileError(f"{path} is not {required.what}: {problem}. Get the right file from "
                               f"{required.where}.")


# The real files are 3.8 MB (MANO_RIGHT.pkl) and 2.3 MB: a thousandth of the default limits is plenty.
MANO_LIMITS = safe_pickle.Limits(max_operations=1_000_000, max_objects=1_000_000, max_bytes=256 << 20)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _dense(value: Any, shape: tuple) -> Any:
    """A scipy.sparse matrix of `shape` as a dense array; one of another shape is left sparse (the shape check
    that follows names it) instead of being made dense at whatever size it declares."""
    if hasattr(value, "toarray") and hasattr(value, "shape"):
        return value.toarray() if tuple(value.shape) == tuple(shape) else value
    return value


# ---- MANO_RIGHT.pkl -------------------------------------------------------------------------------------------

_MANO_SHAPES = {
    "v_template": (NUM_VERTICES, 3), "f": (NUM_FACES, 3), "J_regressor": (NUM_SKELETON_JOINTS, NUM_VERTICES),
    "weights": (NUM_VERTICES, NUM_SKELETON_JOINTS), "posedirs": (NUM_VERTICES, 3, 9 * (NUM_SKELETON_JOINTS - 1)),
    "hands_mean": (9 * (NUM_SKELETON_JOINTS - 1) // 3,), "kintree_table": (2, NUM_SKELETON_JOINTS),
}


def read_mano(path: Union[str, Path]) -> Mano:
    """MANO_RIGHT.pkl as the arrays the network needs; GraphormerFileError for anything that is not MANO's right
    hand model (a hostile pickle only ever yields inert placeholders, which fail these checks)."""
    path = Path(path)
    try:
        content = safe_pickle.plain_data(safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS, encoding="latin1",
                                                          limits=MANO_LIMITS))
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise _wrong(MANO_MODEL, path, f"it cannot be read as a pickle ({_one_line(e)})") from None
    except OSError as e:
        raise _wrong(MANO_MODEL, path, f"it cannot be read ({e.strerror or e})") from None
    if not isinstance(content, dict):
        raise _wrong(MANO_MODEL, path, f"it holds a {type(content).__name__}, not MANO's dictionary of arrays")
    arrays: Dict[str, np.ndarray] = {}
    for key, shape in _MANO_SHAPES.items():
        value = _dense(content.get(key), shape)
        if not isinstance(value, np.ndarray) or value.dtype == object or value.shape != shape:
            found = getattr(value, "shape", type(value).__name__)
            raise _wrong(MANO_MODEL, path, f"'{key}' should be an array of shape {shape}, it is {found}")
        arrays[key] = value
    if content.get("bs_style", "lbs") != "lbs":
        raise _wrong(MANO_MODEL, path, f"its skinning is {content.get('bs_style')!r}, not linear blend skinning")
    parents = tuple(int(p) if int(p) < NUM_SKELETON_JOINTS else -1 for p in arrays["kintree_table"][0])
    if parents[0] != -1 or any(not 0 <= p < k for k, p in enumerate(parents) if k):
        raise _wrong(MANO_MODEL, path, f"its kinematic tree {parents} does not start at the wrist")
    faces = arrays["f"].astype(np.int64)
    if faces.min() < 0 or faces.max() >= NUM_VERTICES:
        raise _wrong(MANO_MODEL, path, "its faces refer to vertices it does not have")
    return Mano(v_template=arrays["v_template"].astype(np.float64), faces=faces.astype(np.int32),
                J_regressor=arrays["J_regressor"].astype(np.float64), weights=arrays["weights"].astype(np.float64),
                posedirs=arrays["posedirs"].astype(np.float64), hands_mean=arrays["hands_mean"].astype(np.float64),
                parents=parents)


# ---- mano_downsampling.npz ------------------------------------------------------------------------------------

def read_sampling(path: Union[str, Path]) -> MeshSampling:
    """D[0] (195 × 778) and A[1] (195 × 195) of mano_downsampling.npz (the faces are MANO_RIGHT.pkl's, as the
    official code takes them)."""
    path = Path(path)
    try:
        members = safe_pickle.load_npz(path, limits=MANO_LIMITS)
    except (pickle.UnpicklingError, ValueError, TypeError, OSError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise _wrong(SAMPLING, path, f"it cannot be read as an npz archive ({_one_line(e)})") from None

    def level(name: str, index: int, shape: tuple) -> np.ndarray:
        items = members.get(name)
        item = items[index] if isinstance(items, np.ndarray) and items.dtype == object and len(items) > index \
            else None
        item = _dense(item, shape)
        if not isinstance(item, np.ndarray) or item.dtype == object or item.shape != shape:
            raise _wrong(SAMPLING, path, f"{name}[{index}] should be a {shape} matrix")
        return item

    return MeshSampling(downsample=level("D", 0, (NUM_SUB_VERTICES, NUM_VERTICES)).astype(np.float64),
                        sub_adjacency=level("A", 1, (NUM_SUB_VERTICES, NUM_SUB_VERTICES)).astype(np.float64))


# ---- graphormer_hand_state_dict.bin ---------------------------------------------------------------------------

def read_network_state(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The released state dict, read by safe_pickle allowing only tensors and containers (as
    torch.load(weights_only=True) does, plus its bounds on what a file declares): nothing in the file runs."""
    path = Path(path)
    try:
        state: Any = safe_pickle.load_torch_file(path, unknown="refuse")
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, MemoryError) as e:
        raise _wrong(NETWORK, path, f"it cannot be read as a torch state dict ({_one_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _wrong(NETWORK, path, "it does not hold a state dict of tensors")
    return state


def check_state_keys(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Size], path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its tensors are missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} are not the hand network's (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} have other shapes (e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)}, "
                        f"not {tuple(expected[shapes[0]])})")
    if problems:
        raise _wrong(NETWORK, path, "; ".join(problems))


def required_by_name(name: str) -> RequiredFile:
    return next(f for f in REQUIRED_FILES if f.name == name)
