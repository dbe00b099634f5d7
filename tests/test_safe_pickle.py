"""The restricted unpickler: torch files of every format load as torch.load loads them, Lightning checkpoints
load with their callbacks as placeholders, and no hostile pickle runs anything."""
from __future__ import annotations

import collections
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from pickles import LIGHTNING_MODULE, write_lightning_checkpoint

from lib_handrefiner import safe_pickle
from lib_handrefiner.safe_pickle import Placeholder, UnpicklingError


def _every_kind_of_value() -> dict:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {"weight": base, "transposed_view": base[1:, 2:].t(), "half": torch.randn(3, 3).half(),
            "bfloat16": torch.randn(5).bfloat16(), "bool": torch.tensor([True, False]), "long": torch.arange(5),
            "parameter": torch.nn.Parameter(torch.ones(2)), "empty": torch.zeros(0, 3), "scalar": torch.tensor(7.5),
            "ordered": collections.OrderedDict(a=1, b=[2, 3]), "array": np.arange(6.0).reshape(2, 3),
            "np_scalar": np.float64(2.5), "set": {1, 2}, "bytes": b"\x00\xff", "size": torch.Size([2, 3]),
            "dtype": torch.float16, "device": torch.device("cpu")}


def _assert_same(ours, theirs) -> None:
    assert ours.keys() == theirs.keys()
    for key, want in theirs.items():
        got = ours[key]
        if isinstance(want, torch.Tensor):
            assert type(got) is torch.Tensor and got.dtype == want.dtype, key
            assert got.shape == want.shape and got.stride() == want.stride() and torch.equal(got, want), key
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and np.array_equal(got, want), key
        else:
            assert type(got) is type(want) and got == want, key


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_files_load_as_torch_load_loads_them(tmp_path, zip_format):
    path = tmp_path / "file.pt"
    torch.save(_every_kind_of_value(), path, _use_new_zipfile_serialization=zip_format)
    ours = safe_pickle.load_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=False))
    # A view shares its base's storage, as with torch.load.
    assert ours["transposed_view"].untyped_storage().data_ptr() == ours["weight"].untyped_storage().data_ptr()


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickles_of_tensors_load(tmp_path, protocol):
    values = {"t": torch.arange(6.0)[1:], "h": torch.ones(2, 2).half()}
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(values, protocol=protocol))  # each storage is a nested legacy torch file
    _assert_same(safe_pickle.load_torch_file(path), values)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_lightning_checkpoint_loads_with_its_callbacks_as_placeholders(tmp_path, legacy):
    weights = {"model.diffusion_model.out.2.bias": torch.randn(4), "first_stage_model.x": torch.randn(2, 2).half()}
    path = write_lightning_checkpoint(tmp_path / "sd.ckpt", weights, legacy=legacy)
    # The old way fails on this file: weights_only refuses the callback class (pytorch_lightning is not here).
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint"):
        torch.load(path, weights_only=True)
    loaded = safe_pickle.load_torch_file(path)
    _assert_same(loaded["state_dict"], weights)
    assert loaded["global_step"] == 440000
    (callback_class,) = loaded["callbacks"]
    assert issubclass(callback_class, Placeholder) and callback_class.pickled_module == LIGHTNING_MODULE
    assert loaded["callbacks"][callback_class] == {"best_model_path": "logs/last.ckpt"}
    callback = loaded["trainer_callback"]
    assert isinstance(callback, callback_class) and callback.state["monitor"] == "val/loss_simple_ema"
    assert torch.equal(callback.state["best_model_score"], torch.tensor(0.123))
    assert safe_pickle.load_state_dict(path).keys() == weights.keys()


# ---- hostile pickles ------------------------------------------------------------------------------------------

class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch(marker: Path) -> bytes:
    return f"touch {marker}".encode()


def _payloads(marker: Path) -> dict:
    """Pickles that create `marker` when a plain unpickler reads them, one per way a pickle can call code."""
    touch, opener = _touch(marker), f"open({str(marker)!r}, 'w')".encode()
    nested = pickle.dumps(_Reduce(os.system, touch.decode()), protocol=2)
    return {
        "GLOBAL+REDUCE os.system": b"cos\nsystem\n(S'" + touch + b"'\ntR.",
        "GLOBAL+REDUCE builtins.eval (Python 2 name)": b"c__builtin__\neval\n(S\"" + opener + b"\"\ntR.",
        "STACK_GLOBAL+REDUCE (protocol 4 __reduce__)": pickle.dumps(_Reduce(os.system, touch.decode()), protocol=4),
        "INST": b"(S'" + touch + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nS'" + touch + b"'\no.",
        # BUILD sets __setstate__ = os.system on an allowed object, then a second BUILD calls it.
        "BUILD __setstate__": (b"ccollections\nOrderedDict\n)R(N}S'__setstate__'\ncos\nsystem\nstbS'" + touch
                               + b"'\nb."),
        # torch.storage._load_from_bytes runs torch.load on its bytes; here they hold a payload.
        "torch _load_from_bytes": b"ctorch.storage\n_load_from_bytes\n(" + pickle.dumps(nested, protocol=0)[:-1]
                                  + b"tR.",
    }


def test_the_payloads_cover_the_opcodes_that_call_code(tmp_path):
    opcodes = set()
    for data in _payloads(tmp_path / "m").values():
        opcodes |= {op.name for op, _, _ in pickletools.genops(data)}
    assert {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD"} <= opcodes


@pytest.mark.parametrize("name", list(_payloads(Path("m"))))
def test_a_hostile_pickle_runs_nothing(tmp_path, name):
    marker = tmp_path / "pwned"
    data = _payloads(marker)[name]
    try:
        pickle.loads(data)
    except Exception:  # os.system returns an int that BUILD cannot use: it has run by then
        pass
    assert marker.exists(), "the payload is live: a plain unpickler runs it"
    marker.unlink()
    for allowed in (safe_pickle.BASE_GLOBALS, safe_pickle.NUMPY_GLOBALS, safe_pickle.TORCH_GLOBALS):
        try:
            result = safe_pickle.loads(data, allowed)
        except UnpicklingError:
            result = None
        assert not marker.exists()
        if result is not None and name.startswith(("GLOBAL", "INST", "OBJ", "STACK")):
            assert isinstance(result, Placeholder) and type(result).pickled_name in ("system", "eval")
        with pytest.raises(UnpicklingError, match="not allowed"):
            safe_pickle.loads(data, allowed, unknown="refuse")
        assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_hostile_torch_file_loads_its_tensors_and_runs_nothing(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(3), "evil": _Reduce(os.system, _touch(marker).decode())}, path,
               _use_new_zipfile_serialization=zip_format)
    loaded = safe_pickle.load_torch_file(path)
    assert not marker.exists()
    assert torch.equal(loaded["w"], torch.ones(3)) and type(loaded["evil"]).pickled_name == "system"
    torch.load(path, weights_only=False)
    assert marker.exists()  # the file is live


def test_bad_files_fail_with_the_reason(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnpicklingError, match="truncated or damaged"):
        safe_pickle.load_torch_file(tmp_path / "truncated.pt")
    torch.save({"w": torch.ones(1000)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy_truncated.pt").write_bytes(legacy[:-100])
    with pytest.raises(UnpicklingError, match="ends early"):
        safe_pickle.load_torch_file(tmp_path / "legacy_truncated.pt")
    # A tensor that claims more of its storage than there is.
    view = b"ctorch._utils\n_rebuild_tensor_v2\n(ctorch\nFloatStorage\n"
    with pytest.raises(UnpicklingError, match="not a storage of the file"):
        safe_pickle.loads(view + b"I0\n(I4\nt(I1\ntI00\nNtR.", safe_pickle.TORCH_GLOBALS)
    (tmp_path / "list.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnpicklingError, match="holds a list"):
        safe_pickle.load_state_dict(tmp_path / "list.pt")


# ---- extending it ---------------------------------------------------------------------------------------------

PY2_CSC_MATRIX = (  # what Python 2 writes for a scipy.sparse.csc_matrix (protocol 0, copy_reg._reconstructor)
    b"ccopy_reg\n_reconstructor\n(cscipy.sparse.csc\ncsc_matrix\nc__builtin__\nobject\nNtR"
    b"(dS'_shape'\n(I2\nI3\ntsS'maxprint'\nI50\nsb.")


def test_python2_objects_arrive_as_placeholders_with_their_state():
    matrix = safe_pickle.loads(PY2_CSC_MATRIX, safe_pickle.NUMPY_GLOBALS, encoding="latin1")
    assert type(matrix).pickled_module == "scipy.sparse.csc" and type(matrix).pickled_name == "csc_matrix"
    assert matrix.state == {"_shape": (2, 3), "maxprint": 50}


def test_an_allow_list_can_add_constructors():
    def build_point(x, y):
        if not all(isinstance(v, (int, float)) for v in (x, y)):
            raise UnpicklingError("a point is two numbers")
        return complex(x, y)

    allowed = {**safe_pickle.NUMPY_GLOBALS, ("geometry", "Point"): build_point}
    data = b"\x80\x02}(X\x01\x00\x00\x00pcgeometry\nPoint\nK\x01K\x02\x86RX\x01\x00\x00\x00a" + pickle.dumps(
        np.arange(3, dtype=np.int16), protocol=2)[2:-1] + b"u."
    loaded = safe_pickle.loads(data, allowed)
    assert loaded["p"] == 1 + 2j and np.array_equal(loaded["a"], np.arange(3, dtype=np.int16))
