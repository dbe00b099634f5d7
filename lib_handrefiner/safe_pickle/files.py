"""The file formats: .npz archives of pickled objects, and the files `torch.save` writes (zip, legacy and plain
pickles) with the torch constructors of `TORCH_GLOBALS`; `load_state_dict`."""
from __future__ import annotations

import io
import logging
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, Tuple, Union

import numpy as np
import torch

from lib_handrefiner.safe_pickle.constructors import BASE_GLOBALS, NUMPY_GLOBALS, plain_data
from lib_handrefiner.safe_pickle.core import LIMITS, Globals, Limits, Marker, PickleLimitError, UnpicklingError, _brief
from lib_handrefiner.safe_pickle.unpickler import RestrictedUnpickler

log = logging.getLogger(__name__)


def load_npz(path: Union[str, Path], allowed: Globals = NUMPY_GLOBALS, *, encoding: str = "latin1",
             limits: Limits = LIMITS) -> Dict[str, Any]:
    """The members of an .npz archive by name, as `np.load(path, allow_pickle=True)` gives them but without
    running anything: numeric members through numpy's own reader (no pickles), object members (numpy pickles
    them) through the restricted unpickler, then `plain_data`. latin1 reads Python 2's pickles. Each member's
    declared size is checked against its compressed size and the array its header declares before anything is
    allocated (`limits.max_compression`, `limits.max_bytes`)."""
    out: Dict[str, Any] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UnpicklingError("not an .npz archive (not a zip file)") from None
    with archive:
        budget = _ZipBudget(limits)
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            budget.take(info)
            with archive.open(info) as member:
                data = member.read(info.file_size)
            out[info.filename[:-4]] = _read_npy(io.BytesIO(data), allowed, encoding, info.filename, limits)
    return out


class _ZipBudget:
    """The bytes a zip archive's members may expand to: each at most `max_compression` times its compressed size
    (plus 64 KiB for headers), all together at most `max_bytes`."""

    def __init__(self, limits: Limits):
        self.limits, self.total = limits, 0

    def take(self, info: zipfile.ZipInfo) -> None:
        ratio = self.limits.max_compression
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > ratio * info.compress_size + (64 << 10):
            raise PickleLimitError(f"{info.filename} declares {info.file_size:,} bytes compressed into "
                                   f"{info.compress_size:,} (more than {ratio}×): a compression bomb, not a "
                                   "numpy or torch file")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise UnpicklingError(f"{info.filename}: its zip header declares {info.file_size:,} bytes stored in "
                                  f"{info.compress_size:,}: a damaged file")
        self.total += info.file_size
        if self.total > self.limits.max_bytes:
            raise PickleLimitError(f"the archive holds more than {self.limits.max_bytes:,} bytes")


def _read_npy(f: BinaryIO, allowed: Globals, encoding: str, name: str, limits: Limits = LIMITS) -> Any:
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
    except ValueError as e:
        raise UnpicklingError(f"{name} is not a .npy array ({e})") from None
    if dtype.hasobject and (dtype.kind != "O" or dtype.fields is not None):
        raise UnpicklingError(f"{name}: a structured array with objects inside")
    if not dtype.hasobject:
        declared, present = math.prod(shape) * dtype.itemsize, _remaining(f)
        if declared != present:
            raise UnpicklingError(f"{name} declares a {shape} {dtype.str} array ({declared:,} bytes) and holds "
                                  f"{present:,} bytes: a damaged or hostile file")
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    array = RestrictedUnpickler(f, allowed, encoding=encoding, limits=limits).load()
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise UnpicklingError(f"{name}: the pickle holds {type(array).__name__}, not its {shape} array")
    return plain_data(array)


# ---- safe constructors: torch ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
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
    if (not isinstance(value, (tuple, list, torch.Size)) or len(value) > 64
            or not all(type(v) is int and abs(v) < 1 << 62 for v in value)):
        raise UnpicklingError(f"a pickled tensor's {what} is not a tuple of integers: {_brief(value)}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a view of a storage read from the file (never a Python object), checked
    to lie inside it."""
    if not isinstance(storage, Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise UnpicklingError(f"a pickled tensor refers to {type(storage).__name__}, not a storage of the file")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or any(n < 0 for n in size + stride):
        raise UnpicklingError(f"a pickled tensor's size {size} and stride {stride} do not describe a tensor")
    end = storage.offset + storage_offset + (sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0)
    if end * _element_size(storage.dtype) > storage.data.numel():
        raise UnpicklingError(f"a pickled tensor of size {size} does not fit its storage")
    try:
        return torch.empty(0, dtype=storage.dtype).set_(storage.data.untyped_storage(),
                                                        storage.offset + storage_offset, size, stride)
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
        raise UnpicklingError(f"a pickled tensor is rebuilt by {_brief(func)}, which is not a tensor constructor")
    return func(*args)


def _device(*args: Any) -> torch.device:
    if not all(isinstance(a, (str, int)) for a in args):
        raise UnpicklingError(f"torch.device{_brief(args)} is not a device")
    try:
        return torch.device(*args)
    except (RuntimeError, TypeError) as e:
        raise UnpicklingError(f"torch.device{_brief(args)}: {str(e)[:80]}") from None


def _size(dims: Any = ()) -> torch.Size:
    return torch.Size(_ints(dims, "size"))


def _load_from_bytes(data: Any) -> Storage:
    """torch.storage._load_from_bytes (a storage inside a plain pickle): the nested torch file, which holds one
    storage and nothing else (any other global in it is an error)."""
    if not isinstance(data, bytes):
        raise UnpicklingError("a pickled storage is not bytes")
    storage = load_torch_stream(io.BytesIO(data), _NESTED_STORAGE_GLOBALS, unknown="refuse")
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
    ("torch", "Tensor"): Marker("torch.Tensor"),  # only ever an argument of _rebuild_from_type_v2
    ("torch.nn.parameter", "Parameter"): Marker("torch.nn.Parameter"),
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    **{("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
}
# A storage pickled inside a plain pickle is a torch file of its own, which holds that storage only.
_NESTED_STORAGE_GLOBALS = {k: v for k, v in TORCH_GLOBALS.items() if v is not _load_from_bytes}


# ---- torch files ----------------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER: the first pickle of a legacy file
LEGACY_PROTOCOL = 1001


def load_torch_file(path: Union[str, Path], allowed: Globals = TORCH_GLOBALS, *,
                    unknown: str = "placeholder", limits: Limits = LIMITS) -> Any:
    """What `torch.save` wrote to `path` (zip or legacy format, or a plain pickle), tensors on the CPU, any class
    outside `allowed` a placeholder. Raises UnpicklingError (PickleLimitError past `limits`; OSError when the file
    cannot be opened) with the reason on one line."""
    with open(path, "rb") as f:
        return load_torch_stream(f, allowed, unknown=unknown, limits=limits)


def load_torch_stream(f: BinaryIO, allowed: Globals = TORCH_GLOBALS, *, unknown: str = "placeholder",
                      limits: Limits = LIMITS) -> Any:
    start = f.read(512)
    f.seek(0)
    try:
        if start.startswith(b"PK\x03\x04"):
            return _load_zip(f, allowed, unknown, limits)
        if start[257:262] == b"ustar":
            raise UnpicklingError("a torch file in the pre-1.0 tar format; re-save it with a recent torch or "
                                  "convert it to .safetensors")
        return _load_legacy(f, allowed, unknown, limits)
    except (zipfile.BadZipFile, zlib.error) as e:
        raise UnpicklingError(f"a torch zip archive that cannot be read ({e}): truncated or damaged") from None
    except (EOFError, struct.error):
        raise UnpicklingError("the file ends early (truncated download?)") from None


def _storage_id(pid: Any, length: int) -> Tuple[StorageType, str, int, Tuple[Any, ...]]:
    """(type, key, element count, the rest) of a ('storage', type, key, location, numel, …) persistent id."""
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] in ("storage", b"storage")):
        raise UnpicklingError(f"unexpected persistent id {_brief(pid)} (not a torch storage)")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType) or type(numel) is not int or numel < 0:
        raise UnpicklingError(f"a storage of type {_brief(storage_type)} and size {_brief(numel)} is not a tensor "
                              "storage")
    if not isinstance(key, (str, bytes, int)):
        raise UnpicklingError(f"a storage key {_brief(key)} is not a name")
    key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return storage_type, key, numel, pid[5:]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _load_zip(f: BinaryIO, allowed: Globals, unknown: str, limits: Limits) -> Any:
    """The zip format. Every record's declared size is checked before it is read (`_ZipBudget`: torch stores
    them uncompressed, so a record far larger than its compressed bytes is a bomb), and each tensor's record must
    be exactly the bytes its storage declares."""
    with zipfile.ZipFile(f) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnpicklingError(f"not a torch.save zip archive: {len(pickles)} data.pkl records")
        prefix = pickles[0][:-len("data.pkl")]
        budget = _ZipBudget(limits)
        if prefix + "byteorder" in archive.namelist():
            with archive.open(prefix + "byteorder") as record:
                if record.read(16) != b"little":
                    raise UnpicklingError("a big-endian torch file; re-save it on a little-endian machine")
        pickle_info = archive.getinfo(pickles[0])
        budget.take(pickle_info)
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
                budget.take(info)
                data = torch.empty(nbytes, dtype=torch.uint8)
                with archive.open(info) as record:
                    _read_exactly(record, data, name)
                storages[key] = Storage(data, storage_type.dtype)
            return storages[key]

        with archive.open(pickle_info) as record:  # in memory: the unpickler reads it a byte at a time
            pkl = io.BytesIO(record.read(pickle_info.file_size))
        unpickler = RestrictedUnpickler(pkl, allowed, unknown=unknown, persistent_load=storage, encoding="utf-8",
                                        limits=limits)
        result = unpickler.load()
    _log_placeholders(unpickler)
    return result


def _load_legacy(f: BinaryIO, allowed: Globals, unknown: str, limits: Limits) -> Any:
    """The non-zip format (torch.save(_use_new_zipfile_serialization=False)): pickles of the magic number, the
    protocol, the system info and the object (storages by key), a pickled list of storage keys, then each
    storage's element count (int64) and bytes. A file that starts with anything else is a plain pickle."""
    first = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8", limits=limits)
    try:
        magic = first.load()
    except UnpicklingError:
        magic = None
    if magic != LEGACY_MAGIC:
        f.seek(0)
        unpickler = RestrictedUnpickler(f, allowed, unknown=unknown, encoding="utf-8", limits=limits)
        result = unpickler.load()
        _log_placeholders(unpickler)
        return result
    header = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8", limits=limits)
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
            # The storages' bytes follow the pickle: together they cannot be more than the rest of the file.
            declared = numel * itemsize + sum(s.data.numel() for s in storages.values())
            if declared > size:
                raise PickleLimitError(f"the storages declare {declared:,} bytes in a file of {size:,}: not a "
                                       "torch file (or a truncated one)")
            storages[key] = Storage(torch.zeros(numel * itemsize, dtype=torch.uint8), storage_type.dtype)
        root = storages[key]
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise UnpicklingError(f"a storage view {_brief(view)} is not (key, offset, size)")
        _, offset, count = view  # (view key, offset, size) in elements: a storage sharing the root's bytes
        if not (type(offset) is int and type(count) is int and 0 <= offset and 0 <= count
                and (offset + count) * itemsize <= root.data.numel()):
            raise UnpicklingError(f"a storage view {_brief(view)} outside its storage")
        return Storage(root.data, root.dtype, offset)

    unpickler = RestrictedUnpickler(f, allowed, unknown=unknown, persistent_load=storage, encoding="utf-8",
                                    limits=limits)
    result = unpickler.load()
    keys = RestrictedUnpickler(f, BASE_GLOBALS, unknown="refuse", encoding="utf-8", limits=limits).load()
    if not isinstance(keys, list):
        raise UnpicklingError("a legacy torch file without its list of storage keys")
    for key in keys:
        target = storages.get(str(key))
        if target is None:
            raise UnpicklingError(f"storage {_brief(key)} is listed but no tensor uses it")
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
