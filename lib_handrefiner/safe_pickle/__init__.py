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
# The package by concern: core (errors, Limits, placeholders), unpickler (RestrictedUnpickler, load/loads),
# constructors (BASE_GLOBALS, NUMPY_GLOBALS, scipy.sparse/chumpy conversion), files (npz, torch files, TORCH_GLOBALS).
from lib_handrefiner.safe_pickle.constructors import (
    BASE_GLOBALS,
    NUMPY_GLOBALS,
    chumpy_array,
    is_sparse_placeholder,
    plain_data,
    sparse_matrix,
)
from lib_handrefiner.safe_pickle.core import (
    LIMITS,
    Globals,
    Limits,
    Marker,
    PickleLimitError,
    Placeholder,
    UnpicklingError,
    placeholder_class,
)
from lib_handrefiner.safe_pickle.files import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    TORCH_GLOBALS,
    Storage,
    StorageType,
    load_npz,
    load_state_dict,
    load_torch_file,
    load_torch_stream,
)
from lib_handrefiner.safe_pickle.unpickler import RestrictedUnpickler, check_structure, load, loads

__all__ = [
    "BASE_GLOBALS", "LEGACY_MAGIC", "LEGACY_PROTOCOL", "LIMITS", "NUMPY_GLOBALS", "TORCH_GLOBALS", "Globals", "Limits",
    "Marker", "PickleLimitError", "Placeholder", "RestrictedUnpickler", "Storage", "StorageType", "UnpicklingError",
    "check_structure", "chumpy_array", "is_sparse_placeholder", "load", "load_npz", "load_state_dict",
    "load_torch_file", "load_torch_stream", "loads", "placeholder_class", "plain_data", "sparse_matrix",
]
