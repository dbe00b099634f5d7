"""Reading pickles without running anything they name.

A pickle is a small program: GLOBAL, STACK_GLOBAL, INST and OBJ name any importable callable, REDUCE, NEWOBJ and
BUILD call it (`os.system`, `builtins.eval`, an object's `__reduce__`). `RestrictedUnpickler` never imports
anything: every global a pickle names is looked up in an explicit allow-list that maps `(module, name)` to a
*safe constructor* — a function of ours, or a type known to be harmless such as `collections.OrderedDict` — and
any other global becomes an inert `Placeholder` class (or an error, with `unknown="refuse"`). Calling a
placeholder only records its arguments, so a hostile pickle yields harmless objects and runs nothing.

`load_torch_file(path)` reads the files `torch.save` writes (the zip format, the legacy non-zip format and plain
pickles of tensors) with `TORCH_GLOBALS`; it is what every `.ckpt`/`.pth` of this project is read with. PyTorch
Lightning checkpoints such as sd-v1-5-inpainting.ckpt, which `torch.load(weights_only=True)` refuses because
they pickle callback objects, load: the callbacks become placeholders and the tensors are intact.

How to extend (another file format, another kind of object)
-----------------------------------------------------------
Pass your own allow-list, built from the ones here::

    from lib_handrefiner import safe_pickle

    allowed = {**safe_pickle.NUMPY_GLOBALS, ("mypackage.things", "Thing"): build_thing}
    data = safe_pickle.load(path, allowed, encoding="latin1")   # Python-2 pickles of numpy arrays need latin1

- A constructor is called exactly as the pickle calls the original: REDUCE ``f(*args)``, INST/OBJ ``cls(*args)``,
  NEWOBJ ``cls.__new__(cls, *args)``, then BUILD ``obj.__setstate__(state)`` (or a ``__dict__`` update). It must
  accept whatever a hostile file could pass and only build data: check the arguments' types, never call or
  import anything they name.
- Or leave a class out: it arrives as a `Placeholder` whose ``args``, ``kwargs`` and ``state`` hold what the
  pickle gave it (``pickled_module``/``pickled_name`` on its class say what it was), and convert it after loading.
  Python-2 pickles of ``scipy.sparse`` matrices and chumpy objects are ``copyreg._reconstructor(cls, object,
  None)`` followed by BUILD with the object's ``__dict__``: with the class left out,
  ``Placeholder.state`` is that dict (e.g. ``data``, ``indices``, ``indptr``, ``_shape`` of a csc_matrix).
- scipy.sparse and chumpy objects need no constructor: `plain_data` turns their placeholders into scipy
  matrices and arrays after loading, and `load_npz` reads .npz archives of pickled objects (numpy's object
  arrays) this way, where `np.load` would need allow_pickle=True.
- ``unknown="refuse"`` makes any global that is not in the allow-list an `UnpicklingError` naming it: use it for
  files whose whole content you know.
- Names are matched after Python 2's renames (``__builtin__`` → ``builtins``, ``copy_reg`` → ``copyreg``), so
  one allow-list serves both.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

UnpicklingError = pickle.UnpicklingError
Globals = Mapping[Tuple[str, str], Any]


# ---- placeholders -------------------------------------------------------------------------------------------

class Placeholder:
    """An inert stand-in for a global the allow-list does not name. Calling the class (REDUCE, INST, OBJ, NEWOBJ)
    or BUILD on an instance records the arguments and the state; nothing else happens."""

    pickled_module = ""
    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything is recorded by __new__ (which NEWOBJ calls without __init__)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.pickled_module}.{self.pickled_name}>"


def placeholder_class(module: str, name: str) -> type:
    """A new Placeholder subclass standing for `module.name` (a class of our own: nothing is imported)."""
    return type(f"Placeholder[{module}.{name}]", (Placeholder,), {"pickled_module": module, "pickled_name": name})


# ---- the unpickler ------------------------------------------------------------------------------------------

class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from `allowed` ((module, name) → object); any other global is a
    placeholder class (`unknown="placeholder"`) or an error (`unknown="refuse"`). `persistent_load`, when given,
    resolves persistent ids (torch storages); without it a persistent id is an error."""

    def __init__(self, file: BinaryIO, allowed: Globals, *, unknown: str = "placeholder",
                 persistent_load: Optional[Callable[[Any], Any]] = None, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        if unknown not in ("placeholder", "refuse"):
            raise ValueError(f"unknown must be 'placeholder' or 'refuse', got {unknown!r}")
        self.allowed, self.unknown = allowed, unknown
        self._persistent_load = persistent_load
        self._placeholders: Dict[Tuple[str, str], type] = {}

    @property
    def placeholders(self) -> list[str]:
        """`module.name` of every global that became a placeholder, in order of appearance."""
        return [f"{m}.{n}" for m, n in self._placeholders]

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key in self.allowed:
            return self.allowed[key]
        if self.unknown == "refuse":
            raise UnpicklingError(f"the pickle names {key[0]}.{key[1]}, which is not allowed here")
        if key not in self._placeholders:
            self._placeholders[key] = placeholder_class(*key)
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise UnpicklingError("the pickle refers to external data (a persistent id), which this file type "
                                  "does not have")
        return self._persistent_load(pid)


def _python3_name(module: str, name: str) -> Tuple[str, str]:
    """(module, name) as Python 3 spells it (Python-2 pickles say __builtin__, copy_reg, …)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def load(file: Union[str, Path, BinaryIO], allowed: Globals, *, unknown: str = "placeholder",
         encoding: str = "ASCII") -> Any:
    """One object from a pickle file (a path or a binary file object) with the globals of `allowed`."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f, allowed, unknown=unknown, encoding=encoding).load()
    return RestrictedUnpickler(file, allowed, unknown=unknown, encoding=encoding).load()


def loads(data: bytes, allowed: Globals, *, unknown: str = "placeholder", encoding: str = "ASCII") -> Any:
    return load(io.BytesIO(data), allowed, unknown=unknown, encoding=encoding)


# ---- safe constructors: Python and numpy --------------------------------------------------------------------

def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """_codecs.encode as pickles of bytes use it (protocol ≤ 2), limited to the encodings they write."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a pickled bytes object")
    return text.encode(encoding)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor, the protocol 0–1 form of `object.__new__(cls)`, only for placeholder classes (the
    object's __dict__ follows in BUILD and lands in `.state`)."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls)
    raise UnpicklingError(f"copyreg._reconstructor of {cls!r} is not allowed")


BASE_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}

# numpy's own pickle entry points only build arrays, dtypes and scalars from data (an object array's elements
# are unpickled by this same unpickler). numpy 2 moved numpy.core to numpy._core; both spellings are listed.
NUMPY_GLOBALS: Dict[Tuple[str, str], Any] = {
    **BASE_GLOBALS,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(core, name): getattr(np.core.multiarray, name)
       for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
}


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
        raise UnpicklingError(f"{what}: its shape {shape!r:.60} is not two non-negative integers")
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
        raise UnpicklingError(f"{obj!r:.80} is not a pickled chumpy array")
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


def load_npz(path: Union[str, Path], allowed: Globals = NUMPY_GLOBALS, *, encoding: str = "latin1"
             ) -> Dict[str, Any]:
    """The members of an .npz archive by name, as `np.load(path, allow_pickle=True)` gives them but without
    running anything: numeric members through numpy's own reader (no pickles), object members (numpy pickles
    them) through the restricted unpickler, then `plain_data`. latin1 reads Python 2's pickles."""
    out: Dict[str, Any] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UnpicklingError("not an .npz archive (not a zip file)") from None
    with archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as member:
                out[name[:-4]] = _read_npy(member, allowed, encoding, name)
    return out


def _read_npy(f: BinaryIO, allowed: Globals, encoding: str, name: str) -> Any:
    f = io.BytesIO(f.read())
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
    except ValueError as e:
        raise UnpicklingError(f"{name} is not a .npy array ({e})") from None
    if dtype != object:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    array = RestrictedUnpickler(f, allowed, encoding=encoding).load()
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise UnpicklingError(f"{name}: the pickle holds {type(array).__name__}, not its {shape} array")
    return plain_data(array)


# ---- safe constructors: torch ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StorageType:
    """What a pickled `torch.FloatStorage` (etc.) global stands for: only its element type."""
    dtype: torch.dtype


@dataclass
class Storage:
    """A storage's bytes (uint8, flat, filled from the file's data records), its element type, and where it
    starts in them (in elements; a legacy file's storage views share their root's bytes)."""
    data: torch.Tensor
    dtype: torch.dtype
    offset: int = 0


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
# vars(), not getattr(): torch's module __getattr__ imports submodules by name.
_TORCH_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


def _ints(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(isinstance(v, int) for v in value):
        raise UnpicklingError(f"a pickled tensor's {what} is not a tuple of integers: {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a view of a storage read from the file (never a Python object)."""
    if not isinstance(storage, Storage) or not isinstance(storage_offset, int):
        raise UnpicklingError(f"a pickled tensor refers to {type(storage).__name__}, not a storage of the file")
    try:
        return torch.empty(0, dtype=storage.dtype).set_(storage.data.untyped_storage(),
                                                        storage.offset + storage_offset, _ints(size, "size"),
                                                        _ints(stride, "stride"))
    except RuntimeError as e:  # a view past the storage's end
        raise UnpicklingError(f"a pickled tensor does not fit its storage ({e})") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's data as a plain tensor (weights only)."""
    if not isinstance(data, torch.Tensor):
        raise UnpicklingError(f"a pickled parameter holds a {type(data).__name__}, not a tensor")
    return data


_TENSOR_BUILDERS = (_rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """torch._tensor._rebuild_from_type_v2 (a tensor with Python attributes): the tensor alone."""
    if func not in _TENSOR_BUILDERS or not isinstance(args, tuple):
        raise UnpicklingError(f"a pickled tensor is rebuilt by {func!r}, which is not a tensor constructor")
    return func(*args)


def _device(*args: Any) -> torch.device:
    if not all(isinstance(a, (str, int)) for a in args):
        raise UnpicklingError(f"torch.device{args!r} is not a device")
    return torch.device(*args)


def _size(dims: Any = ()) -> torch.Size:
    return torch.Size(_ints(dims, "size"))


def _load_from_bytes(data: Any) -> Storage:
    """torch.storage._load_from_bytes (a storage inside a plain pickle): the nested torch file, which holds one
    storage and nothing else (any other global in it is an error)."""
    if not isinstance(data, bytes):
        raise UnpicklingError("a pickled storage is not bytes")
    storage = load_torch_stream(io.BytesIO(data), TORCH_GLOBALS, unknown="refuse")
    if not isinstance(storage, Storage):
        raise UnpicklingError(f"a pickled storage holds a {type(storage).__name__}")
    return storage


TORCH_GLOBALS: Dict[Tuple[str, str], Any] = {
    **NUMPY_GLOBALS,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    **{("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
}


# ---- torch files ----------------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER: the first pickle of a legacy file
LEGACY_PROTOCOL = 1001


def load_torch_file(path: Union[str, Path], allowed: Globals = TORCH_GLOBALS, *,
                    unknown: str = "placeholder") -> Any:
    """What `torch.save` wrote to `path` (zip or legacy format, or a plain pickle), tensors on the CPU, any class
    outside `allowed` a placeholder. Raises UnpicklingError (EOFError for a truncated legacy file, OSError) with
    the reason."""
    with open(path, "rb") as f:
        return load_torch_stream(f, allowed, unknown=unknown)


def load_torch_stream(f: BinaryIO, allowed: Globals = TORCH_GLOBALS, *, unknown: str = "placeholder") -> Any:
    start = f.read(512)
    f.seek(0)
    if start.startswith(b"PK\x03\x04"):
        try:
            return _load_zip(f, allowed, unknown)
        except zipfile.BadZipFile as e:
            raise UnpicklingError(f"a torch zip archive that cannot be read ({e}): truncated or damaged") from None
    if start[257:262] == b"ustar":
        raise UnpicklingError("a torch file in the pre-1.0 tar format; re-save it with a recent torch or convert "
                              "it to .safetensors")
    return _load_legacy(f, allowed, unknown)


def _storage_id(pid: Any, length: int) -> Tuple[StorageType, str, int, Tuple[Any, ...]]:
    """(type, key, element count, the rest) of a ('storage', type, key, location, numel, …) persistent id."""
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] in ("storage", b"storage")):
        raise UnpicklingError(f"unexpected persistent id {pid!r:.100} (not a torch storage)")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType) or not isinstance(numel, int) or numel < 0:
        raise UnpicklingError(f"a storage of type {storage_type!r:.60} and size {numel!r:.30} is not a tensor storage")
    key = key.decode() if isinstance(key, bytes) else str(key)
    return storage_type, key, numel, pid[5:]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _load_zip(f: BinaryIO, allowed: Globals, unknown: str) -> Any:
    with zipfile.ZipFile(f) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnpicklingError(f"not a torch.save zip archive: {len(pickles)} data.pkl records")
        prefix = pickles[0][:-len("data.pkl")]
        if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
            raise UnpicklingError("a big-endian torch file; re-save it on a little-endian machine")
        storages: Dict[str, Storage] = {}

        def storage(pid: Any) -> Storage:
            storage_type, key, numel, _ = _storage_id(pid, 5)
            if key not in storages:
                nbytes = numel * _element_size(storage_type.dtype)
                name = f"{prefix}data/{key}"
                try:
                    info = archive.getinfo(name)
                except KeyError:
                    raise UnpicklingError(f"the file has no data record {name} (truncated?)") from None
                if info.file_size != nbytes:
                    raise UnpicklingError(f"data record {name} holds {info.file_size} bytes, the tensor needs {nbytes}")
                data = torch.empty(nbytes, dtype=torch.uint8)
                with archive.open(info) as record:
                    _read_exactly(record, data, name)
                storages[key] = Storage(data, storage_type.dtype)
            return storages[key]

        with archive.open(pickles[0]) as pkl:
            unpickler = RestrictedUnpickler(pkl, allowed, unknown=unknown, persistent_load=storage, encoding="utf-8")
            result = unpickler.load()
    _log_placeholders(unpickler)
    return result


def _load_legacy(f: BinaryIO, allowed: Globals, unknown: str) -> Any:
    """The non-zip format (torch.save(_use_new_zipfile_serialization=False)): pickles of the magic number, the
    protocol, the system info and the object (storages by key), a pickled list of storage keys, then each
    storage's element count (int64) and bytes. A file that starts with anything else is a plain pickle."""
    first = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8")
    try:
        magic = first.load()
    except UnpicklingError:
        magic = None
    if magic != LEGACY_MAGIC:
        f.seek(0)
        unpickler = RestrictedUnpickler(f, allowed, unknown=unknown, encoding="utf-8")
        result = unpickler.load()
        _log_placeholders(unpickler)
        return result
    header = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8")
    if header.load() != LEGACY_PROTOCOL:
        raise UnpicklingError("an unknown torch file protocol version")
    sys_info = header.load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise UnpicklingError("a big-endian torch file; re-save it on a little-endian machine")
    size = _remaining(f)
    storages: Dict[str, Storage] = {}

    def storage(pid: Any) -> Storage:
        storage_type, key, numel, (view,) = _storage_id(pid, 6)
        itemsize = _element_size(storage_type.dtype)
        if key not in storages:
            if numel * itemsize > size:
                raise UnpicklingError(f"a storage of {numel * itemsize} bytes in a file of {size}: not a torch file")
            storages[key] = Storage(torch.zeros(numel * itemsize, dtype=torch.uint8), storage_type.dtype)
        root = storages[key]
        if view is None:
            return root
        _, offset, count = view  # (view key, offset, size) in elements: a storage sharing the root's bytes
        if not (isinstance(offset, int) and isinstance(count, int) and 0 <= offset
                and (offset + count) * itemsize <= root.data.numel()):
            raise UnpicklingError(f"a storage view {view!r:.60} outside its storage")
        return Storage(root.data, root.dtype, offset)

    unpickler = RestrictedUnpickler(f, allowed, unknown=unknown, persistent_load=storage, encoding="utf-8")
    result = unpickler.load()
    keys = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8").load()
    if not isinstance(keys, list):
        raise UnpicklingError("a legacy torch file without its list of storage keys")
    for key in keys:
        target = storages.get(str(key))
        if target is None:
            raise UnpicklingError(f"storage {key!r:.40} is listed but no tensor uses it")
        (count,) = struct.unpack("<q", _read(f, 8))
        if count * _element_size(target.dtype) != target.data.numel():
            raise UnpicklingError(f"storage {key} holds {count} elements, its tensors need "
                                  f"{target.data.numel() // _element_size(target.dtype)}")
        _read_exactly(f, target.data, f"storage {key}")
    _log_placeholders(unpickler)
    return result


def _remaining(f: BinaryIO) -> int:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end - here


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("the file ends early (truncated download?)")
    return data


def _read_exactly(f: BinaryIO, into: torch.Tensor, what: str) -> None:
    """Fills the uint8 tensor `into` from `f` (no intermediate copy for real files)."""
    view = memoryview(into.numpy()).cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise EOFError(f"{what} ends early (truncated download?)")
        done += n


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint by name: its "state_dict" entry when it has one (Lightning and ldm
    checkpoints), else the file's own dict; entries that are not tensors are left out."""
    loaded = load_torch_file(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UnpicklingError(f"the file holds a {type(loaded).__name__}, not a state dict")
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _log_placeholders(unpickler: RestrictedUnpickler) -> None:
    if unpickler.placeholders:
        log.info("not loaded (kept as inert placeholders): %s", ", ".join(unpickler.placeholders))
