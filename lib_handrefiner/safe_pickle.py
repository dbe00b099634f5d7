"""Reading pickles without running anything they name.

A pickle is a small program: GLOBAL, STACK_GLOBAL, INST and OBJ name any importable callable, REDUCE, NEWOBJ and
BUILD call it (`os.system`, `builtins.eval`, an object's `__reduce__`). `RestrictedUnpickler` never imports
anything: every global a pickle names is looked up in an explicit allow-list that maps `(module, name)` to a
*safe constructor* — a function of ours, or a type known to be harmless such as `collections.OrderedDict` — and
any other global becomes an inert `Placeholder` class (or an error, with `unknown="refuse"`). Calling a
placeholder only records its arguments, so a hostile pickle yields harmless objects and runs nothing.

What a file cannot do (each proven by tests/test_safe_pickle_limits.py with a payload that is live elsewhere):
- run anything, or build memory-unsafe objects: `numpy.ndarray`, `torch.Tensor` and the like are never callable
  (an object array over raw bytes would read the file's bytes as pointers); numpy's arrays and dtypes are rebuilt
  through constructors that check their states first (an object dtype only over a list of objects);
- change state shared between loads: BUILD only sets the state of placeholders, OrderedDicts and numpy arrays and
  dtypes made during this load, never of a class, a function or anything the allow-list holds;
- cost unbounded work: `Limits` bounds the opcodes, the nesting, the objects counted along every path (a 1 KB list
  sharing itself 2^40 ways is refused, not walked), dict keys (hashing), the bytes arrays and tensors declare and
  the ratio of a zip record's size to its compressed size (a zip-bomb checkpoint), all checked before the memory
  is spent. Every failure is one `UnpicklingError` (`PickleLimitError` for a limit) with one line saying why.

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
  NEWOBJ ``cls.__new__(cls, *args)``. BUILD is refused on what it returns (return the finished object from the
  call). It must accept whatever a hostile file could pass and only build data: check the arguments' types and
  sizes, never call or import anything they name, never allocate what a number in the file says.
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
import itertools
import logging
import math
import pickle
import re
import reprlib
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

UnpicklingError = pickle.UnpicklingError
Globals = Mapping[Tuple[str, str], Any]


# ---- limits ---------------------------------------------------------------------------------------------------

class PickleLimitError(pickle.UnpicklingError):
    """A file exceeds one of the `Limits` (too deep, too many objects, arrays larger than the file can hold, a
    compression bomb): refused before the work or the memory is spent."""


@dataclass(frozen=True)
class Limits:
    """What one file may cost. Every loader here takes `limits=`; the defaults hold every real checkpoint, MANO
    file and annotation file by orders of magnitude.

    - max_operations: pickle opcodes per pickle (each builds at most one object, so this bounds the objects).
    - max_depth: nesting of containers in the result (consumers walk it recursively).
    - max_objects: objects in the result counted along every path, so a small list that shares itself 2^40 ways
      counts as the 2^40 objects that converting or printing it would visit.
    - max_key_objects: the size of one dict key or set element (hashing it walks it, on every insertion).
    - max_bytes: the array and tensor bytes one file may declare, in total.
    - max_compression: how much larger than their compressed size zip members may declare themselves (torch and
      numpy write them uncompressed: ratio 1).
    """
    max_operations: int = 20_000_000
    max_depth: int = 100
    max_objects: int = 20_000_000
    max_key_objects: int = 1_000
    max_bytes: int = 64 << 30
    max_compression: int = 20


LIMITS = Limits()


def _brief(value: Any) -> str:
    """A short repr of something a file holds (a bounded walk: the value may be deep, cyclic or exponentially
    shared)."""
    return _BRIEF.repr(value)


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 40, 40, 40
for _attr in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_BRIEF, _attr, 4)


class _BoundedReader:
    """A file's read/readline for the unpickler that never allocates more than the file holds (a length a pickle
    declares is read in chunks, so a 2^60-byte string in a 50-byte file fails at the end of the file instead of
    allocating first) and stops after `limit` bytes."""

    _CHUNK = 1 << 24

    def __init__(self, file: BinaryIO, limit: int):
        self.file, self.left = file, limit

    def _take(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise PickleLimitError("the pickle is longer than the limit of its file type")
        return data

    def read(self, n: int) -> bytes:
        if n <= self._CHUNK:
            return self._take(self.file.read(n))
        chunks = []
        while n > 0:
            chunk = self._take(self.file.read(min(n, self._CHUNK)))
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def readline(self) -> bytes:
        return self._take(self.file.readline(max(self.left, 0) + 1))


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


class Marker:
    """A class a pickle names only as an argument (`numpy.ndarray` to `_reconstruct`, `torch.Tensor` to
    `_rebuild_from_type_v2`): it stands in the allow-list so the real class, whose constructor makes arrays from
    raw memory, is never callable from a file. Calling a marker is an error."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


# ---- the unpickler ------------------------------------------------------------------------------------------

class RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its opcodes can be overridden
    """An unpickler whose globals come only from `allowed` ((module, name) → object); any other global is a
    placeholder class (`unknown="placeholder"`) or an error (`unknown="refuse"`). `persistent_load`, when given,
    resolves persistent ids (torch storages); without it a persistent id is an error.

    Beyond the allow-list, what a file could still do with the objects it may name is closed off:
    - REDUCE, INST, OBJ and NEWOBJ call only what the allow-list handed out; NEWOBJ only on placeholder classes
      and the types of `_NEWOBJ_TYPES` (whose `__new__` reads nothing from its arguments).
    - BUILD (setting an object's state) only on objects made during this load whose state is data: placeholders,
      OrderedDicts (torch's `_metadata`), and numpy arrays and dtypes, whose states are checked first (an object
      dtype only with a list of objects, a byte buffer exactly as long as the array). Never on a class, a function
      or anything the allow-list holds: nothing a load does is seen by the next one.
    - `Limits`: opcodes, bytes read, nesting, objects along every path (checked on the result, without
      recursion), dict keys and set elements small enough to hash.
    Every failure, whatever the pickle does, is an `UnpicklingError` (a `PickleLimitError` for a limit) with one
    line saying why."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, allowed: Globals, *, unknown: str = "placeholder",
                 persistent_load: Optional[Callable[[Any], Any]] = None, encoding: str = "ASCII",
                 limits: Limits = LIMITS, max_bytes_read: Optional[int] = None):
        if unknown not in ("placeholder", "refuse"):
            raise ValueError(f"unknown must be 'placeholder' or 'refuse', got {unknown!r}")
        unsafe = [f"{m}.{n}" for (m, n), value in allowed.items() if _is_unsafe(value)]
        if unsafe:
            raise ValueError(f"the allow-list names {', '.join(unsafe)}, which can build arrays from raw memory; "
                             "use safe_pickle's constructors (NUMPY_GLOBALS, TORCH_GLOBALS)")
        # Bytes in memory are bounded already (and read a byte at a time: the wrapper would double the cost).
        self._reader = file if isinstance(file, io.BytesIO) and max_bytes_read is None else \
            _BoundedReader(file, limits.max_bytes if max_bytes_read is None else max_bytes_read)
        super().__init__(self._reader, encoding=encoding)
        self.allowed, self.unknown, self.limits = allowed, unknown, limits
        self._persistent_load = persistent_load
        self._placeholders: Dict[Tuple[str, str], type] = {}
        self._handed_out: Dict[int, Any] = {}  # id → what find_class returned (kept alive, so ids stay unique)
        self._key_sizes: Dict[int, Tuple[Any, int]] = {}  # id → (tuple or frozenset, size counted along paths)
        self.array_bytes = 0

    @property
    def placeholders(self) -> list[str]:
        """`module.name` of every global that became a placeholder, in order of appearance."""
        return [f"{m}.{n}" for m, n in self._placeholders]

    def load(self) -> Any:
        try:
            result = self._run()
            check_structure(result, self.limits)
            return result
        except pickle.UnpicklingError:
            raise
        except EOFError:
            raise UnpicklingError("the pickle ends early (a truncated or damaged file)") from None
        except Exception as e:  # whatever a malformed opcode sequence raises (MemoryError, RecursionError too)
            raise UnpicklingError(f"not a valid pickle ({type(e).__name__}: {str(e)[:120]})") from None

    def _run(self) -> Any:
        self._unframer = pickle._Unframer(self._reader.read, self._reader.readline)
        self.read, self.readinto, self.readline = (self._unframer.read, self._unframer.readinto,
                                                   self._unframer.readline)
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        for _ in range(self.limits.max_operations):
            key = read(1)
            if not key:
                raise EOFError
            if key[0] not in dispatch:
                raise UnpicklingError(f"invalid pickle opcode {key!r}")
            try:
                dispatch[key[0]](self)
            except pickle._Stop as stop:
                return stop.value
        raise PickleLimitError(f"the pickle runs more than {self.limits.max_operations:,} operations")

    # -- globals and calls

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key in self.allowed:
            value = self.allowed[key]
        elif self.unknown == "refuse":
            raise UnpicklingError(f"the pickle names {key[0]}.{key[1]}, which is not allowed here")
        else:
            if key not in self._placeholders:
                self._placeholders[key] = placeholder_class(*key)
            value = self._placeholders[key]
        self._handed_out[id(value)] = value
        return value

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise UnpicklingError("the pickle refers to external data (a persistent id), which this file type "
                                  "does not have")
        return self._persistent_load(pid)

    def _callable(self, func: Any, how: str) -> Any:
        if id(func) not in self._handed_out or isinstance(func, Marker):
            raise UnpicklingError(f"the pickle calls {_brief(func)} ({how}), which is not a constructor it may use")
        return func

    def _call(self, func: Any, args: Any, kwargs: Optional[dict] = None) -> Any:
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise UnpicklingError("a call's arguments are not a tuple")
        self._callable(func, "REDUCE")
        if func in (_set, _frozenset) and args:
            self._check_keys(_iterable(args[0], "a set"))
        elif func is _ordered_dict and args:
            self._check_keys([pair[0] for pair in _iterable(args[0], "an OrderedDict")
                              if isinstance(pair, tuple) and pair])
        result = func(*args, **(kwargs or {}))
        return self._made_hashable(result) if type(result) in (tuple, frozenset) else result

    def _new(self, cls: Any, args: Any, kwargs: Optional[dict] = None) -> Any:
        self._callable(cls, "NEWOBJ")
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise UnpicklingError("NEWOBJ's arguments are not a tuple")
        if isinstance(cls, type) and issubclass(cls, Placeholder):
            return cls.__new__(cls, *args, **(kwargs or {}))
        if cls in _NEWOBJ_TYPES:
            return cls.__new__(cls)
        if isinstance(cls, type):  # a class an extended allow-list names: created as that allow-list intends
            return cls.__new__(cls, *args, **(kwargs or {}))
        raise UnpicklingError(f"NEWOBJ of {_brief(cls)}, which is not a class")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args)

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, kwargs)

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(self._call(klass, tuple(args)))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    # -- BUILD

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if id(inst) in self._handed_out or isinstance(inst, (type, Marker)) or callable(inst):
            raise UnpicklingError(f"the pickle sets the state of {_brief(inst)}, which is not an object it made")
        if isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif type(inst) is np.ndarray:
            self.array_bytes += _check_array_state(inst, state)
            if self.array_bytes > self.limits.max_bytes:
                raise PickleLimitError(f"the pickle's arrays hold more than {self.limits.max_bytes:,} bytes")
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict:
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise UnpicklingError(f"an OrderedDict's state {_brief(state)} is not attributes by name")
            inst.__dict__.update(state)
        else:
            raise UnpicklingError(f"the pickle sets the state of a {type(inst).__name__}, which takes none")

    dispatch[pickle.BUILD[0]] = load_build

    # -- sizes the pickle declares, hashing

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self._read_declared(n)))

    def load_binbytes8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(self._read_declared(n))

    def _read_declared(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise EOFError
        return data

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8

    def _key_size(self, value: Any) -> int:
        if isinstance(value, (tuple, frozenset)):
            known = self._key_sizes.get(id(value))
            return known[1] if known is not None and known[0] is value else 1 + len(value)
        return 1

    def _made_hashable(self, value: Any) -> Any:
        """Records the size of a new tuple or frozenset (its elements' sizes are known: they were made first)."""
        size = 1 + sum(self._key_size(v) for v in value)
        self._key_sizes[id(value)] = (value, min(size, self.limits.max_objects + 1))
        return value

    def _check_keys(self, values: Any) -> None:
        """Dict keys and set elements: tuples and frozensets among them small enough that hashing and comparing
        them (on every insertion) is cheap."""
        for value in values:
            if isinstance(value, (tuple, frozenset)) and self._key_size(value) > self.limits.max_key_objects:
                raise PickleLimitError(f"a dict key or set element of more than {self.limits.max_key_objects:,} "
                                       "objects")

    def load_tuple(self) -> None:
        items = self.pop_mark()  # first: it replaces self.append
        self.append(self._made_hashable(tuple(items)))

    def load_tuple1(self) -> None:
        self.stack[-1] = self._made_hashable((self.stack[-1],))

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._made_hashable((self.stack[-2], self.stack[-1]))]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._made_hashable((self.stack[-3], self.stack[-2], self.stack[-1]))]

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self._check_keys(items)
        self.append(self._made_hashable(frozenset(items)))

    def load_dict(self) -> None:
        items = self.pop_mark()
        self._check_keys(items[0::2])
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_keys((key,))
        self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._check_keys(items[0::2])
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._check_keys(items)
        target = self.stack[-1]
        if not isinstance(target, set):
            raise UnpicklingError(f"ADDITEMS on a {type(target).__name__}, not a set")
        target.update(items)

    for _opcode, _method in ((pickle.TUPLE, load_tuple), (pickle.TUPLE1, load_tuple1), (pickle.TUPLE2, load_tuple2),
                             (pickle.TUPLE3, load_tuple3), (pickle.FROZENSET, load_frozenset),
                             (pickle.DICT, load_dict), (pickle.SETITEM, load_setitem),
                             (pickle.SETITEMS, load_setitems), (pickle.ADDITEMS, load_additems)):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


def _children(obj: Any) -> Any:
    """The objects `obj` holds, for the structure check (None for a leaf)."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    if isinstance(obj, dict):
        return itertools.chain(obj.keys(), obj.values(),
                               obj.__dict__.values() if type(obj) is collections.OrderedDict else ())
    if isinstance(obj, Placeholder):
        return itertools.chain(obj.args, obj.kwargs.values(), (obj.state,))
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return obj.flat
    return None


def check_structure(root: Any, limits: Limits = LIMITS) -> None:
    """Refuses a structure that would make its consumers recurse too deep, loop or blow up: a reference cycle,
    nesting deeper than `limits.max_depth`, or more than `limits.max_objects` objects counted along every path
    (a shared sub-structure counts once per path to it: what converting or printing the structure visits).
    Iterative and linear in the distinct objects."""
    done: Dict[int, Tuple[int, int]] = {}  # id → (objects along every path below and including it, depth)
    on_path = set()
    if _children(root) is None:
        return
    stack = [[root, iter(_children(root)), 1, 1]]  # object, its children, objects so far, depth so far
    on_path.add(id(root))
    while stack:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(frame[0]))
            done[id(frame[0])] = (frame[2], frame[3])
            if stack:
                _add(stack[-1], frame[2], frame[3], limits)
            continue
        if _children(child) is None:
            _add(frame, 1, 0, limits)
        elif id(child) in done:
            _add(frame, *done[id(child)], limits)
        elif id(child) in on_path:
            raise UnpicklingError("the pickle holds a reference cycle (an object inside itself); no data file "
                                  "this loads has one")
        elif len(stack) >= limits.max_depth:
            raise PickleLimitError(f"the pickle nests containers more than {limits.max_depth} deep")
        else:
            on_path.add(id(child))
            stack.append([child, iter(_children(child)), 1, 1])


_END = object()


def _add(frame: list, objects: int, depth: int, limits: Limits) -> None:
    frame[2] += objects
    frame[3] = max(frame[3], depth + 1)
    if frame[2] > limits.max_objects:
        raise PickleLimitError(f"the pickle holds more than {limits.max_objects:,} objects counted along every "
                               "path (a structure that shares itself exponentially?)")


def _python3_name(module: str, name: str) -> Tuple[str, str]:
    """(module, name) as Python 3 spells it (Python-2 pickles say __builtin__, copy_reg, …)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def load(file: Union[str, Path, BinaryIO], allowed: Globals, *, unknown: str = "placeholder",
         encoding: str = "ASCII", limits: Limits = LIMITS) -> Any:
    """One object from a pickle file (a path or a binary file object) with the globals of `allowed`;
    UnpicklingError (PickleLimitError past `limits`) for anything else."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f, allowed, unknown=unknown, encoding=encoding, limits=limits).load()
    return RestrictedUnpickler(file, allowed, unknown=unknown, encoding=encoding, limits=limits).load()


def loads(data: bytes, allowed: Globals, *, unknown: str = "placeholder", encoding: str = "ASCII",
          limits: Limits = LIMITS) -> Any:
    return load(io.BytesIO(data), allowed, unknown=unknown, encoding=encoding, limits=limits)


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
