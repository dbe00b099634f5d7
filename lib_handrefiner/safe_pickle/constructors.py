"""Safe constructors for Python and numpy objects (`BASE_GLOBALS`, `NUMPY_GLOBALS`), the unsafe callables no
allow-list may name, and the conversion of scipy.sparse and chumpy placeholders to plain data."""
from __future__ import annotations

import collections
import math
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np
import torch

from lib_handrefiner.safe_pickle.core import Marker, Placeholder, UnpicklingError, _brief

# ---- safe constructors: Python and numpy --------------------------------------------------------------------

def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """_codecs.encode as pickles of bytes use it (protocol ≤ 2), limited to the encodings they write."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnpicklingError(f"_codecs.encode({type(text).__name__}, {_brief(encoding)}) is not a pickled bytes "
                              "object")
    return text.encode(encoding)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor, the protocol 0–1 form of `object.__new__(cls)`, only for placeholder classes (the
    object's __dict__ follows in BUILD and lands in `.state`)."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls)
    raise UnpicklingError(f"copyreg._reconstructor of {_brief(cls)} is not allowed")


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """builtins.bytearray as pickles call it (from bytes, or from a str and its encoding); never from a count,
    which would allocate that many bytes."""
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return bytearray(source, encoding)
    raise UnpicklingError(f"bytearray({type(source).__name__}, …) is not a pickled bytearray")


def _bytes(source: Any = b"") -> bytes:
    """builtins.bytes as protocol 2 pickles an empty bytes object (`bytes()`); never from a count."""
    if not isinstance(source, (bytes, bytearray)):
        raise UnpicklingError(f"bytes({type(source).__name__}) is not a pickled bytes object")
    return bytes(source)


def _iterable(source: Any, what: str) -> Any:
    if not isinstance(source, (list, tuple, set, frozenset, dict, str, bytes)):
        raise UnpicklingError(f"{what} of a {type(source).__name__}")
    return source


def _set(source: Any = ()) -> set:
    return set(_iterable(source, "set"))


def _frozenset(source: Any = ()) -> frozenset:
    return frozenset(_iterable(source, "frozenset"))


def _ordered_dict(source: Any = ()) -> collections.OrderedDict:
    return collections.OrderedDict(_iterable(source, "OrderedDict"))


def _complex(real: Any = 0, imag: Any = 0) -> complex:
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        raise UnpicklingError("complex() of something other than two numbers")
    return complex(real, imag)


def _object() -> object:
    return object()


# The types NEWOBJ may create from a pickle: __new__ of each reads nothing from its arguments.
_NEWOBJ_TYPES = (complex, set, frozenset, collections.OrderedDict, bytearray, object)

BASE_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "bytes"): _bytes,
    ("builtins", "complex"): _complex,
    ("builtins", "object"): _object,
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}

# numpy's own pickle entry points, each behind a constructor that checks what the file gives it: an ndarray is
# made empty by `_reconstruct` and filled by BUILD, whose state `_check_array_state` checks first (numpy.ndarray
# itself is not callable: `ndarray(shape, dtype("O"), buffer)` would read object pointers from the file's bytes).
_NDARRAY = Marker("numpy.ndarray")
_SIMPLE_DTYPE = re.compile(r"[<>|=]?[a-zA-Z]\d{0,4}(\[\w{1,8}\])?")


def _reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> np.ndarray:
    """numpy.core.multiarray._reconstruct: an empty array, which BUILD then fills."""
    if cls is not _NDARRAY:
        raise UnpicklingError(f"numpy _reconstruct of {_brief(cls)}, not of numpy.ndarray")
    return np.empty(0, dtype=np.uint8)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """numpy.dtype from a type string ('<f8', 'O8', 'V8', 'U3'), always a new object (copy=True: numpy shares its
    built-in dtypes, and BUILD sets the dtype's state next); no structured or sub-array dtypes."""
    if not isinstance(spec, str) or not _SIMPLE_DTYPE.fullmatch(spec):
        raise UnpicklingError(f"numpy dtype {_brief(spec)} is not a plain type string")
    try:
        dtype = np.dtype(spec, align=bool(align), copy=True)
    except (TypeError, ValueError) as e:
        raise UnpicklingError(f"numpy dtype {_brief(spec)}: {e}") from None
    if dtype.fields is not None or dtype.subdtype is not None:
        raise UnpicklingError(f"numpy dtype {_brief(spec)} is structured")
    return dtype


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """A dtype's pickled state (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
    may set its byte order only: the rest must be what the dtype already is (flags say whether its elements are
    object pointers)."""
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
        raise UnpicklingError(f"numpy dtype state {_brief(state)} is not numpy's")
    _, byteorder, subarray, names, fields, elsize, alignment, flags = state[:8]
    if byteorder not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None):
        raise UnpicklingError(f"numpy dtype state {_brief(state)} is not a plain dtype's")
    if (flags != dtype.flags or elsize not in (-1, dtype.itemsize) or alignment not in (-1, dtype.alignment)
            or (len(state) == 9 and not (state[8] is None or isinstance(state[8], dict)))):
        raise UnpicklingError(f"numpy dtype state {_brief(state)} does not match its type {dtype.str}")


def _check_array_state(array: np.ndarray, state: Any) -> int:
    """An ndarray's pickled state ([version,] shape, dtype, fortran, data): a dtype made by `_dtype`, and data
    that is exactly the array (a list of objects for an object dtype, else bytes). Returns its bytes."""
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4):
        raise UnpicklingError(f"numpy array state {_brief(state)} is not numpy's")
    shape, dtype, _, data = state
    if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(n) is int and n >= 0 for n in shape)):
        raise UnpicklingError(f"numpy array shape {_brief(shape)} is not non-negative integers")
    if not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None:
        raise UnpicklingError(f"numpy array of dtype {_brief(dtype)}")
    count = math.prod(shape)
    if dtype.hasobject:
        if dtype.kind != "O" or not isinstance(data, list) or len(data) != count:
            raise UnpicklingError(f"a numpy object array of shape {shape} whose data is not a list of {count} "
                                  "objects")
        return 8 * count
    if not isinstance(data, (bytes, bytearray, str)) or len(data) != count * dtype.itemsize:
        raise UnpicklingError(f"a numpy array of shape {shape} and dtype {dtype.str} ({count * dtype.itemsize:,} "
                              f"bytes) whose data is {len(data) if hasattr(data, '__len__') else '?'} bytes")
    return len(data)


def _scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar: a numpy scalar from its bytes; an object dtype's "scalar" is the object."""
    if not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None:
        raise UnpicklingError(f"a numpy scalar of dtype {_brief(dtype)}")
    if dtype.hasobject:
        return data
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnpicklingError(f"a numpy {dtype.str} scalar whose data is not {dtype.itemsize} bytes")
    return np.core.multiarray.scalar(dtype, data)


NUMPY_GLOBALS: Dict[Tuple[str, str], Any] = {
    **BASE_GLOBALS,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    **{(core, name): value for core in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, value in (("_reconstruct", _reconstruct), ("scalar", _scalar))},
}


def _is_unsafe(value: Any) -> bool:
    """Callables that make arrays or tensors from raw memory or sizes a file gives (refused in any allow-list)."""
    return any(value is unsafe for unsafe in _UNSAFE)


_UNSAFE = [np.ndarray, np.dtype, np.frombuffer, np.core.multiarray._reconstruct, np.core.multiarray.scalar,
           np.empty, np.zeros, np.ones, np.memmap, np.fromfile, np.lib.format.read_array, bytearray,
           torch.Tensor, torch.nn.Parameter, torch.empty, torch.zeros, torch.frombuffer, torch.from_file,
           torch.UntypedStorage, torch.TypedStorage, torch.FloatStorage, torch.ByteStorage]


# ---- scientific pickles: scipy.sparse, chumpy, npz archives -----------------------------------------------------
# Pickles from the research world (MANO_RIGHT.pkl, mano_downsampling.npz) hold scipy.sparse matrices and chumpy
# arrays. Neither class is allowed: both arrive as placeholders whose `state` is the object's __dict__, and the
# functions here turn such a placeholder into plain data, checking every field (nothing is imported or called on
# the pickle's say: the scipy class is chosen by us from the placeholder's name).

_SPARSE_FORMATS = ("csc", "csr", "coo")


def _field_array(state: Mapping, key: str, what: str) -> np.ndarray:
    value = state.get(key)
    if not isinstance(value, np.ndarray) or value.dtype == object or value.ndim != 1:
        raise UnpicklingError(f"{what}: field {key!r} is not a 1-D numeric array")
    return value


def is_sparse_placeholder(obj: Any) -> bool:
    cls = type(obj)
    return (isinstance(obj, Placeholder) and cls.pickled_module.startswith("scipy.sparse")
            and cls.pickled_name.split("_")[0] in _SPARSE_FORMATS)


def sparse_matrix(obj: Any):
    """The scipy.sparse matrix (csc, csr or coo) a pickled one stood for, from its placeholder's __dict__ state
    (`data`, `indices`, `indptr` or `row`, `col`, and `_shape`, or `shape` in older scipy)."""
    import scipy.sparse

    what = f"a pickled {type(obj).pickled_module}.{type(obj).pickled_name}" if isinstance(obj, Placeholder) else "?"
    if not is_sparse_placeholder(obj) or not isinstance(obj.state, dict):
        raise UnpicklingError(f"{what} is not a scipy.sparse matrix with its fields as state")
    state = obj.state
    shape = state.get("_shape", state.get("shape"))
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnpicklingError(f"{what}: its shape {_brief(shape)} is not two non-negative integers")
    kind = type(obj).pickled_name.split("_")[0]
    data = _field_array(state, "data", what)
    try:
        if kind == "coo":
            return scipy.sparse.coo_matrix((data, (_field_array(state, "row", what), _field_array(state, "col", what))),
                                           shape=shape)
        build = scipy.sparse.csc_matrix if kind == "csc" else scipy.sparse.csr_matrix
        matrix = build((data, _field_array(state, "indices", what), _field_array(state, "indptr", what)), shape=shape)
        matrix.check_format(full_check=True)
        return matrix
    except (ValueError, TypeError, IndexError) as e:
        raise UnpicklingError(f"{what} is inconsistent ({e})") from None


def chumpy_array(obj: Any) -> np.ndarray:
    """The array of a pickled chumpy `Ch` (Ch.__getstate__ pickles its __dict__, the value under "x")."""
    if not (isinstance(obj, Placeholder) and type(obj).pickled_module.startswith("chumpy")
            and isinstance(obj.state, dict)):
        raise UnpicklingError(f"{_brief(obj)} is not a pickled chumpy array")
    value = obj.state.get("x")
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise UnpicklingError(f"a pickled chumpy {type(obj).pickled_name} without a numeric array under 'x'")
    return value


def plain_data(obj: Any) -> Any:
    """`obj` with scipy.sparse and chumpy placeholders replaced by scipy matrices and arrays, inside dicts,
    lists, tuples and object arrays; other placeholders are left as they are."""
    if is_sparse_placeholder(obj):
        return sparse_matrix(obj)
    if isinstance(obj, Placeholder) and type(obj).pickled_module.startswith("chumpy"):
        return chumpy_array(obj)
    if isinstance(obj, dict):
        return {k: plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        out.ravel()[:] = [plain_data(v) for v in obj.ravel()]
        return out
    return obj
