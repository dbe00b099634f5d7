"""`RestrictedUnpickler`, the structure check on its result, and `load`/`loads` (see the package docstring)."""
from __future__ import annotations

import _compat_pickle
import collections
import io
import itertools
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

import numpy as np

from lib_handrefiner.safe_pickle.constructors import (
    _NEWOBJ_TYPES,
    _check_array_state,
    _check_dtype_state,
    _frozenset,
    _is_unsafe,
    _iterable,
    _ordered_dict,
    _set,
)
from lib_handrefiner.safe_pickle.core import (
    LIMITS,
    Globals,
    Limits,
    Marker,
    PickleLimitError,
    Placeholder,
    UnpicklingError,
    _BoundedReader,
    _brief,
    placeholder_class,
)

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

