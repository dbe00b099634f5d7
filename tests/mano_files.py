"""MANO-shaped files written by the tests (the real ones are under a licence that forbids shipping them).

- `write_synthetic_mano(path)`: MANO_RIGHT.pkl's layout as the MANO website ships it — a protocol-2 pickle
  written by Python 2 (byte strings, which Python 3 reads with encoding="latin1"), numpy arrays as Python 2's
  numpy pickles them, `J_regressor` a `scipy.sparse.csc.csc_matrix` and `shapedirs` a `chumpy.ch.Ch` (both
  NEWOBJ + BUILD with the object's __dict__; a Ch keeps its array under "x") — with seeded random arrays of the
  real shapes. The opcodes are written here by hand: Python 3's pickler cannot write Python 2 strings, and
  neither chumpy nor an old scipy need be installed.
- `write_synthetic_downsampling(path)`: mano_downsampling.npz's layout (an npz of object arrays whose elements
  are pickled scipy.sparse matrices, plus F and V), for a clone without ../shared.
- `malicious_pickle(command_file)`: pickles that would create a file if anything they name were run.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import scipy.sparse

NUM_VERTICES, NUM_FACES, NUM_MANO_JOINTS, NUM_SUB = 778, 1538, 16, 195
# MANO's kinematic tree: root, then index, middle, little, ring, thumb (three joints each, base to tip).
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
MANO_SEED = 7


# ---- a Python 2 protocol-2 pickle writer (only what MANO's file holds) ----------------------------------------

class _Py2Writer:
    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.out.write(b"\x80\x02")                  # PROTO 2

    def op(self, code: bytes) -> None:
        self.out.write(code)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def value(self, v: Any) -> None:
        if v is None:
            self.op(b"N")
        elif v is True or v is False:
            self.op(b"\x88" if v else b"\x89")
        elif isinstance(v, int):
            if 0 <= v < 256:
                self.op(b"K" + bytes([v]))
            elif 0 <= v < 65536:
                self.op(b"M" + struct.pack("<H", v))
            else:
                self.op(b"J" + struct.pack("<i", v))
        elif isinstance(v, float):
            self.op(b"G" + struct.pack(">d", v))
        elif isinstance(v, (str, bytes)):            # a Python 2 str: bytes on the wire
            data = v.encode("latin1") if isinstance(v, str) else v
            if len(data) < 256:
                self.op(b"U" + bytes([len(data)]) + data)
            else:
                self.op(b"T" + struct.pack("<i", len(data)) + data)
        elif isinstance(v, tuple):
            self.tuple(v)
        elif isinstance(v, list):
            self.op(b"]")
            if v:
                self.op(b"(")
                for item in v:
                    self.value(item)
                self.op(b"e")
        elif isinstance(v, dict):
            self.op(b"}")
            if v:
                self.op(b"(")
                for key, item in v.items():
                    self.value(key)
                    self.value(item)
                self.op(b"u")
        elif isinstance(v, set):
            self.global_("__builtin__", "set")
            self.value(sorted(v))
            self.op(b"\x85R")                        # TUPLE1, REDUCE
        elif isinstance(v, np.ndarray):
            self.ndarray(v)
        elif isinstance(v, _Object):
            self.global_(v.module, v.name)
            self.op(b")\x81")                        # EMPTY_TUPLE, NEWOBJ
            self.value(v.state)
            self.op(b"b")                            # BUILD
        else:
            raise TypeError(f"cannot write {type(v).__name__}")

    def tuple(self, items: Tuple[Any, ...]) -> None:
        if not items:
            self.op(b")")
            return
        if len(items) <= 3:
            for item in items:
                self.value(item)
            self.op(b"\x85\x86\x87"[len(items) - 1:len(items)])
            return
        self.op(b"(")
        for item in items:
            self.value(item)
        self.op(b"t")

    def dtype(self, dtype: np.dtype) -> None:
        self.global_("numpy", "dtype")
        self.tuple((dtype.str[1:] if dtype.kind != "O" else "O8", 0, 1))
        self.op(b"R")
        order = "|" if dtype.itemsize == 1 or dtype.kind == "O" else "<"
        self.tuple((3, order, None, None, None, -1, -1, 63 if dtype.kind == "O" else 0))
        self.op(b"b")

    def ndarray(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.tuple((0,))
        self.value(b"b")
        self.op(b"\x87R")                            # TUPLE3, REDUCE
        self.op(b"(")
        self.value(1)
        self.tuple(tuple(int(n) for n in a.shape))
        self.dtype(a.dtype)
        self.value(False)
        self.value(list(a) if a.dtype.kind == "O" else a.tobytes())  # an object array pickles its elements
        self.op(b"tb")                               # TUPLE, BUILD

    def bytes(self) -> bytes:
        return self.out.getvalue() + b"."


class _Object:
    """An instance of a class that need not exist here, pickled as protocol 2 pickles new-style objects."""

    def __init__(self, module: str, name: str, state: Dict[str, Any]) -> None:
        self.module, self.name, self.state = module, name, state


def py2_pickle(obj: Any) -> bytes:
    writer = _Py2Writer()
    writer.value(obj)
    return writer.bytes()


def _csc(matrix: np.ndarray) -> _Object:
    """A scipy.sparse.csc_matrix as old scipy pickles it (module scipy.sparse.csc, its __dict__ as state)."""
    m = scipy.sparse.csc_matrix(matrix)
    m.sort_indices()
    return _Object("scipy.sparse.csc", "csc_matrix", {
        "_shape": tuple(int(n) for n in m.shape), "_has_sorted_indices": True,
        "indptr": m.indptr.astype(np.int32), "indices": m.indices.astype(np.int32),
        "_has_canonical_format": True, "maxprint": 50, "data": m.data.astype(np.float64)})


def _chumpy(array: np.ndarray) -> _Object:
    """A chumpy.ch.Ch as Ch.__getstate__ pickles it: its __dict__ without the caches, the array under "x"."""
    return _Object("chumpy.ch", "Ch", {"x": array, "_dirty_vars": set(), "_itr": None})


# ---- synthetic MANO ---------------------------------------------------------------------------------------------

def synthetic_mano_arrays(seed: int = MANO_SEED) -> Dict[str, np.ndarray]:
    """Seeded random arrays of MANO_RIGHT.pkl's shapes: a hand-sized blob of vertices (metres), a joint regressor
    averaging ~12 vertices per joint, skinning weights summing to 1, small pose and shape blend shapes, the mean
    pose (45 axis-angle values) and the MANO kinematic tree."""
    rng = np.random.default_rng(seed)
    v_template = rng.standard_normal((NUM_VERTICES, 3)) * np.array([0.03, 0.05, 0.012])
    regressor = np.zeros((NUM_MANO_JOINTS, NUM_VERTICES))
    for j in range(NUM_MANO_JOINTS):
        chosen = rng.choice(NUM_VERTICES, 12, replace=False)
        w = rng.random(12) + 0.1
        regressor[j, chosen] = w / w.sum()
    weights = rng.random((NUM_VERTICES, NUM_MANO_JOINTS)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    kintree = np.array([[4294967295 if p < 0 else p for p in MANO_PARENTS], list(range(NUM_MANO_JOINTS))],
                       dtype=np.int64)
    faces = np.stack([rng.permutation(NUM_VERTICES)[:3] for _ in range(NUM_FACES)]).astype(np.uint32)
    return {
        "hands_components": rng.standard_normal((45, 45)),
        "f": faces,
        "J_regressor": regressor,
        "kintree_table": kintree,
        "J": regressor @ v_template,
        "weights": weights,
        "posedirs": rng.standard_normal((NUM_VERTICES, 3, 135)) * 0.002,
        "hands_mean": rng.standard_normal(45) * 0.3,
        "v_template": v_template,
        "shapedirs": rng.standard_normal((NUM_VERTICES, 3, 10)) * 0.001,
        "hands_coeffs": rng.standard_normal((1554, 45)),
    }


def write_synthetic_mano(path: Path, seed: int = MANO_SEED) -> Dict[str, np.ndarray]:
    """Writes MANO_RIGHT.pkl's layout to `path`; returns the arrays written (J_regressor dense)."""
    arrays = synthetic_mano_arrays(seed)
    content: Dict[str, Any] = dict(arrays)
    content["J_regressor"] = _csc(arrays["J_regressor"])
    content["shapedirs"] = _chumpy(arrays["shapedirs"])
    content["bs_style"] = "lbs"
    content["bs_type"] = "lrotmin"
    Path(path).write_bytes(py2_pickle(content))
    return arrays


# ---- synthetic mano_downsampling.npz -----------------------------------------------------------------------------

def synthetic_sampling(faces: np.ndarray, seed: int = MANO_SEED) -> Dict[str, List[Any]]:
    """A 778 → 195 sampling in the npz's layout: D[0] averages a few vertices per sub-vertex, A[0]/A[1] are the
    vertex adjacencies of the full and sub-sampled meshes, F[0] the faces."""
    rng = np.random.default_rng(seed + 1)
    down = np.zeros((NUM_SUB, NUM_VERTICES))
    for i, chosen in enumerate(np.array_split(rng.permutation(NUM_VERTICES), NUM_SUB)):
        down[i, chosen] = 1.0 / len(chosen)
    up = (down.T > 0).astype(np.float64)
    sub_faces = rng.integers(0, NUM_SUB, size=(380, 3)).astype(np.uint32)
    return {"A": [_csc(_adjacency(faces, NUM_VERTICES)), _csc(_adjacency(sub_faces, NUM_SUB))],
            "U": [_csc(up)], "D": [_csc(down)], "F": [faces.astype(np.uint32), sub_faces],
            "V": [np.zeros((NUM_VERTICES, 3)), np.zeros((NUM_SUB, 3))]}


def _adjacency(faces: np.ndarray, n: int) -> np.ndarray:
    """The symmetric 0/1 vertex adjacency of a triangle mesh."""
    a = np.zeros((n, n))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        a[faces[:, i], faces[:, j]] = a[faces[:, j], faces[:, i]] = 1.0
    np.fill_diagonal(a, 0.0)
    return a


def sampling_matrices(members: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
    """The written members as the reader should return them: scipy matrices and arrays."""
    def plain(item: Any) -> Any:
        if isinstance(item, _Object):
            st = item.state
            return scipy.sparse.csc_matrix((st["data"], st["indices"], st["indptr"]), shape=st["_shape"])
        return item
    return {name: [plain(i) for i in items] for name, items in members.items()}


def write_synthetic_downsampling(path: Path, faces: np.ndarray, seed: int = MANO_SEED) -> Dict[str, List[Any]]:
    """Writes the sampling as numpy writes the real npz: each member an object array whose elements are pickled
    (scipy.sparse matrices, arrays)."""
    members = synthetic_sampling(faces, seed)
    with zipfile.ZipFile(path, "w") as archive:
        for name, items in members.items():
            array = np.empty(len(items), dtype=object)
            array[:] = items
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False,
                                                          "shape": (len(items),)})
            archive.writestr(f"{name}.npy", header.getvalue() + py2_pickle(array))
    return sampling_matrices(members)


# ---- hostile pickles ---------------------------------------------------------------------------------------------

class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def malicious_pickles(marker: Path) -> Dict[str, bytes]:
    """Pickles that create `marker` if anything in them runs: os.system through REDUCE, builtins.exec, and a
    MANO-looking dict with the command hidden in a value; protocol 2 and the current one."""
    command = f"touch {marker}"
    exec_writer = _Py2Writer()
    exec_writer.global_("__builtin__", "exec")
    exec_writer.tuple((f"open({str(marker)!r}, 'w').close()",))
    exec_writer.op(b"R")
    return {
        "os.system": pickle.dumps(_RunsCommand(command), protocol=2),
        "os.system-latest": pickle.dumps(_RunsCommand(command)),
        "builtins.exec": exec_writer.bytes(),
        "hidden-in-mano": pickle.dumps({"v_template": np.zeros((778, 3)), "f": _RunsCommand(command)}, protocol=2),
    }
