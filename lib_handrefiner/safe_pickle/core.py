"""The restricted unpickler's building blocks: the error types, `Limits`, the bounded reader, `Placeholder` and
`Marker` (see the package docstring)."""
from __future__ import annotations

import pickle
import reprlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping, Tuple

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

