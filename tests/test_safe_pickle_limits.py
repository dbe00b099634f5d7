"""Hostile files against the restricted unpickler (issue 20): memory-unsafe arrays, state poisoning, deep, cyclic
and exponentially shared structures, sizes declared beyond what a file holds, compression bombs. Each test first
shows that its payload is live (a plain unpickler or numpy, in a subprocess where it crashes or hangs, or the
unguarded path's effect), then that safe_pickle refuses it with one line saying why."""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import mano_files
import numpy as np
import pytest
import scipy.sparse
import torch

from lib_handrefiner import safe_pickle
from lib_handrefiner.mesh import resolve_mesh_model
from lib_handrefiner.mesh.graphormer import files
from lib_handrefiner.mesh.graphormer.files import GraphormerFileError
from lib_handrefiner.safe_pickle import PickleLimitError, UnpicklingError


def _python(code: str, stdin: bytes = b"", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], input=stdin, capture_output=True,
                          timeout=timeout)


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 700, message
    return message


# ---- memory-unsafe objects ----------------------------------------------------------------------------------

# numpy.ndarray((1,), dtype("O"), buffer): an object array whose "objects" are the file's bytes as pointers.
OBJECT_ARRAY_FROM_BYTES = pickle.dumps(_Reduce(np.ndarray, (1,), np.dtype("O"), b"AAAAAAAA"), protocol=2)


def test_an_object_array_over_raw_bytes_crashes_numpy_and_is_refused():
    crashed = _python("import pickle, sys; print(repr(pickle.loads(sys.stdin.buffer.read())[0]))",
                      OBJECT_ARRAY_FROM_BYTES)
    assert crashed.returncode < 0, crashed  # killed by a signal (SIGSEGV): the payload is live
    for allowed in (safe_pickle.NUMPY_GLOBALS, safe_pickle.TORCH_GLOBALS):
        with pytest.raises(UnpicklingError, match=r"calls <numpy.ndarray> \(REDUCE\)") as error:
            safe_pickle.loads(OBJECT_ARRAY_FROM_BYTES, allowed)
        _one_line(error)


def test_array_states_must_be_exactly_their_data():
    """numpy's own pickles load; states that are not what numpy writes are refused before numpy sees them."""
    values = [np.arange(6.0).reshape(2, 3), np.array(["ab", "c"]), np.array([1, "x", None], dtype=object),
              np.float32(1.5), np.zeros((0, 4), np.int8)]
    for protocol in (2, 4):
        loaded = safe_pickle.loads(pickle.dumps(values, protocol=protocol), safe_pickle.NUMPY_GLOBALS)
        for got, want in zip(loaded, values):
            assert type(got) is type(want) and np.array_equal(got, want)
    def array(state) -> bytes:
        return pickle.dumps(_Reduce(np.core.multiarray._reconstruct, np.ndarray, (0,), b"b"), 2)[:-1] + \
            pickle.dumps(state, 2)[2:-1] + b"b."
    refused = {
        "object dtype over bytes": (1, (1,), np.dtype("O"), False, b"AAAAAAAA"),
        "data shorter than the shape": (1, (10**6,), np.dtype("f8"), False, b"\0" * 8),
        "a negative shape": (1, (-1,), np.dtype("f8"), False, b""),
        "a structured dtype with objects": (1, (1,), np.dtype([("a", "O")]), False, [None]),
    }
    for name, state in refused.items():
        with pytest.raises(UnpicklingError):
            safe_pickle.loads(array(state), safe_pickle.NUMPY_GLOBALS)
    # A dtype whose state claims other flags (63: "my elements are object pointers") is refused.
    flagged = pickle.dumps(np.dtype("f8"), 2).replace(b"K\x00tq", b"K?tq")
    assert b"K?t" in flagged
    with pytest.raises(UnpicklingError, match="does not match its type"):
        safe_pickle.loads(flagged, safe_pickle.NUMPY_GLOBALS)


def test_allow_lists_cannot_name_raw_memory_constructors():
    for unsafe in (np.ndarray, np.frombuffer, torch.Tensor, torch.frombuffer):
        with pytest.raises(ValueError, match="raw memory"):
            safe_pickle.RestrictedUnpickler(io.BytesIO(b"N."), {("x", "y"): unsafe})


# ---- no shared state between loads ----------------------------------------------------------------------------

# BUILD {"dtype": torch.int32} onto what torch.FloatStorage names (the 51-byte .pth), and the same as
# slot state (setattr), which a plain unpickler applies to torch's own class.
POISON_DICT = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypectorch\nint32\nsb."
POISON_SLOTS = b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypectorch\nint32\ns\x86b."


def test_build_poisoning_is_live_on_an_unguarded_loader():
    # A plain unpickler rewrites torch's own storage class for the rest of the process.
    result = _python("""
        import pickle, sys, warnings, torch
        warnings.simplefilter("ignore")
        pickle.loads(sys.stdin.buffer.read())
        print(torch.FloatStorage.dtype)
        """, POISON_SLOTS)
    assert result.stdout.decode().strip() == "torch.int32", result

    # A loader that hands out one shared object per global (as safe_pickle did) is poisoned by the dict form.
    @dataclasses.dataclass(frozen=True)
    class SharedStorageType:
        dtype: torch.dtype

    shared = {("torch", "FloatStorage"): SharedStorageType(torch.float32), ("torch", "int32"): torch.int32}

    class Unguarded(pickle.Unpickler):
        def find_class(self, module, name):
            return shared[(module, name)]

    Unguarded(io.BytesIO(POISON_DICT)).load()
    assert shared[("torch", "FloatStorage")].dtype == torch.int32


@pytest.mark.parametrize("payload", [POISON_DICT, POISON_SLOTS], ids=["dict", "slots"])
def test_a_poisoned_file_changes_nothing_for_the_next_load(tmp_path, payload):
    legit = tmp_path / "controlnet.pth"
    weights = {"w": torch.randn(4, 5)}
    torch.save(weights, legit)
    before = safe_pickle.load_state_dict(legit)
    (tmp_path / "poison.pth").write_bytes(payload)
    with pytest.raises(UnpicklingError, match="sets the state of") as error:
        safe_pickle.load_torch_file(tmp_path / "poison.pth")
    _one_line(error)
    after = safe_pickle.load_state_dict(legit)
    assert after["w"].dtype == torch.float32 and torch.equal(after["w"], before["w"])
    assert safe_pickle.TORCH_GLOBALS[("torch", "FloatStorage")].dtype == torch.float32


def test_build_is_refused_on_everything_an_allow_list_holds():
    for (module, name), value in safe_pickle.TORCH_GLOBALS.items():
        glob = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        for state in (b"}X\x01\x00\x00\x00xK\x01s", b"N}X\x01\x00\x00\x00xK\x01s\x86"):
            with pytest.raises(UnpicklingError, match="sets the state of"):
                safe_pickle.loads(b"\x80\x02" + glob + state + b"b.", safe_pickle.TORCH_GLOBALS)
        assert not hasattr(value, "x") or isinstance(value, dict)


# ---- depth, cycles, shared paths -------------------------------------------------------------------------------

def _deep_list(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


SELF_REFERENCE = b"\x80\x02]q\x00h\x00a."  # L = [L]


def _exponential_list(levels: int) -> bytes:
    """L0 = [], L(i) = [L(i-1), L(i-1)]: about 9 bytes per level, 2^levels paths."""
    out = b"\x80\x02]q\x00"
    for i in range(1, levels + 1):
        out += b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i])
    return out + b"."


def test_deep_and_cyclic_pickles_break_their_consumers_and_are_refused():
    deep, cyclic = pickle.loads(_deep_list(100_000)), pickle.loads(SELF_REFERENCE)
    for live in (deep, cyclic):
        with pytest.raises(RecursionError):
            safe_pickle.plain_data(live)  # what converting MANO data does with the unguarded result
    with pytest.raises(PickleLimitError, match="more than 100 deep") as error:
        safe_pickle.loads(_deep_list(100_000), safe_pickle.NUMPY_GLOBALS)
    _one_line(error)
    with pytest.raises(UnpicklingError, match="reference cycle"):
        safe_pickle.loads(SELF_REFERENCE, safe_pickle.NUMPY_GLOBALS)
    assert len(safe_pickle.loads(_deep_list(90), safe_pickle.NUMPY_GLOBALS)) == 1  # depth within the limit


def test_a_structure_sharing_itself_exponentially_is_refused_before_anything_walks_it():
    payload = _exponential_list(40)
    assert len(payload) < 400
    with pytest.raises(subprocess.TimeoutExpired):  # live: converting it never returns
        _python("""
            import pickle, sys
            from lib_handrefiner import safe_pickle
            safe_pickle.plain_data(pickle.loads(sys.stdin.buffer.read()))
            """, payload, timeout=5)
    start = time.perf_counter()
    with pytest.raises(PickleLimitError, match="counted along every path") as error:
        safe_pickle.loads(payload, safe_pickle.NUMPY_GLOBALS)
    assert time.perf_counter() - start < 5
    _one_line(error)
    # Shared sub-structures within the limit are fine: counted once per path.
    assert safe_pickle.check_structure(pickle.loads(_exponential_list(10))) is None


def test_dict_keys_that_would_hash_forever_are_refused():
    # A tuple DAG with 2^40 paths as a dict key: hashing it (tuples do not cache their hash) never ends.
    levels = b"".join(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0" for i in range(40))
    payload = b"\x80\x02}K\x00q\x000" + levels + b"h\x28K\x01s."  # {t40: 1}, t0 = 0, t(i) = (t(i-1), t(i-1))
    with pytest.raises(subprocess.TimeoutExpired):
        _python("import pickle, sys; pickle.loads(sys.stdin.buffer.read())", payload, timeout=5)
    with pytest.raises(PickleLimitError, match="dict key"):
        safe_pickle.loads(payload, safe_pickle.NUMPY_GLOBALS)


def test_operation_and_size_limits():
    data = pickle.dumps(list(range(1000)), protocol=2)
    with pytest.raises(PickleLimitError, match="operations"):
        safe_pickle.loads(data, safe_pickle.BASE_GLOBALS, limits=safe_pickle.Limits(max_operations=100))
    with pytest.raises(PickleLimitError, match="objects"):
        safe_pickle.loads(data, safe_pickle.BASE_GLOBALS, limits=safe_pickle.Limits(max_objects=100))
    # A string that declares 2^60 bytes in a 20-byte file: an error at the file's end, not an allocation.
    with pytest.raises(UnpicklingError, match="ends early"):
        safe_pickle.loads(b"\x80\x04\x8e" + (1 << 60).to_bytes(8, "little") + b"abc", safe_pickle.BASE_GLOBALS)
    with pytest.raises(UnpicklingError):
        safe_pickle.loads(b"\x80\x04\x96" + (1 << 60).to_bytes(8, "little") + b"abc", safe_pickle.BASE_GLOBALS)
    with pytest.raises(UnpicklingError, match="bytearray"):  # bytearray(10**12) would allocate a terabyte
        safe_pickle.loads(pickle.dumps(_Reduce(bytearray, 10**12), 2), safe_pickle.BASE_GLOBALS)


# ---- declared sizes ----------------------------------------------------------------------------------------------

def _npz_with(path: Path, header: dict, data: bytes, name: str = "D.npy") -> Path:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, out.getvalue() + data)
    return path


def test_an_npz_member_declaring_ten_trillion_elements_is_refused(tmp_path):
    path = _npz_with(tmp_path / "mano_downsampling.npz",
                     {"descr": "<f8", "fortran_order": False, "shape": (10**13,)}, b"\0" * 8)
    live = _python(f"import numpy; numpy.load({str(path)!r})['D']")
    assert b"MemoryError" in live.stderr, live  # numpy allocates the declared 80 TB first
    with pytest.raises(UnpicklingError, match="declares a .* array .* and holds 8 bytes") as error:
        safe_pickle.load_npz(path)
    _one_line(error)
    with pytest.raises(GraphormerFileError, match="mano_downsampling.npz is not"):
        files.read_sampling(path)


def test_a_sparse_matrix_declaring_a_huge_shape_is_never_made_dense(tmp_path):
    huge = np.empty(1, dtype=object)
    huge[0] = scipy.sparse.csc_matrix((300_000, 200_000))
    path = tmp_path / "mano_downsampling.npz"
    np.savez(path, D=huge, A=np.array([huge[0], huge[0]], dtype=object))
    live = _python(f"import numpy; numpy.load({str(path)!r}, allow_pickle=True)['D'][0].toarray()")
    assert b"MemoryError" in live.stderr, live  # 480 GB dense
    with pytest.raises(GraphormerFileError, match=r"D\[0\] should be a \(195, 778\) matrix") as error:
        files.read_sampling(path)
    _one_line(error)


def _lightweight_torch_zip(path: Path, numel: int, compress: int) -> Path:
    """A torch.save zip archive of one float32 tensor of `numel` zeros, its data record compressed with
    `compress` (torch writes ZIP_STORED; a bomb deflates gigabytes of zeros into a few megabytes)."""
    storage = object()

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    pkl = io.BytesIO()
    Writer(pkl, protocol=2).dump({"w": _Reduce(torch._utils._rebuild_tensor_v2, storage, 0, (numel,), (1,), False,
                                               collections.OrderedDict())})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pkl.getvalue())
        archive.writestr("archive/byteorder", b"little")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = compress
        with archive.open(info, "w", force_zip64=True) as record:
            chunk = bytes(1 << 22)
            for _ in range(numel * 4 // len(chunk)):
                record.write(chunk)
    return path


def _peak_rss_mib(code: str) -> float:
    """The subprocess's peak RSS (VmHWM: ru_maxrss would start from the parent's peak, kept across exec)."""
    result = _python(code + "\nprint(next(int(line.split()[1]) for line in open('/proc/self/status') "
                            "if line.startswith('VmHWM')) / 1024)")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return float(result.stdout.decode().split()[-1])


def test_a_zip_bomb_checkpoint_is_refused_before_it_expands(tmp_path):
    numel = 32 << 20  # 128 MiB of float32 zeros, deflated to well under 1 MiB
    path = _lightweight_torch_zip(tmp_path / "bomb.ckpt", numel, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    baseline = _peak_rss_mib("import torch, zipfile; from lib_handrefiner import safe_pickle")
    expanded = _peak_rss_mib(f"import torch, zipfile; from lib_handrefiner import safe_pickle\n"
                             f"zipfile.ZipFile({str(path)!r}).read('archive/data/0')")
    assert expanded - baseline > 100  # live: reading the record takes its declared 128 MiB
    refused = _peak_rss_mib(f"""
import torch; from lib_handrefiner import safe_pickle
try:
    safe_pickle.load_torch_file({str(path)!r})
except safe_pickle.PickleLimitError as e:
    assert "compression bomb" in str(e), e
else:
    raise SystemExit("loaded")""")
    assert refused - baseline < 32
    # The same layout stored as torch stores it loads (the check is on the ratio, not on the format).
    small = _lightweight_torch_zip(tmp_path / "stored.ckpt", 1 << 20, zipfile.ZIP_STORED)
    assert torch.equal(safe_pickle.load_state_dict(small)["w"], torch.zeros(1 << 20))


def test_storages_larger_than_a_legacy_file_are_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(1000), "b": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    # Two storages each within the file's size but together beyond it (the second declared 10x larger).
    hacked = data.replace(b"M\xe8\x03", b"M\x10\x27", 2)
    assert hacked != data
    (tmp_path / "hacked.pt").write_bytes(hacked)
    with pytest.raises(UnpicklingError):
        safe_pickle.load_torch_file(tmp_path / "hacked.pt")


# ---- the Graphormer files: one line, and mesh_fallback --------------------------------------------------------

HOSTILE_MANO = {
    "object array over raw bytes": OBJECT_ARRAY_FROM_BYTES,
    "self reference": SELF_REFERENCE,
    "100,000 deep": _deep_list(100_000),
    "2^40 paths": _exponential_list(40),
    "not a pickle": b"\x00\x01garbage",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(HOSTILE_MANO))
def test_a_hostile_mano_file_is_a_one_line_error_and_mesh_fallback_uses_landmarks(tmp_path, name):
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(HOSTILE_MANO[name])
    mano_files.write_synthetic_downsampling(tmp_path / "mano_downsampling.npz",
                                            mano_files.synthetic_mano_arrays()["f"])
    (tmp_path / "graphormer_hand_state_dict.bin").write_bytes(b"never read: MANO_RIGHT.pkl fails first")
    with pytest.raises(GraphormerFileError, match="MANO_RIGHT.pkl is not the MANO hand model") as error:
        files.read_mano(tmp_path / "MANO_RIGHT.pkl")
    _one_line(error)
    model, warning = resolve_mesh_model("graphormer", [tmp_path], fallback=True)
    assert model.name == "landmarks" and "MANO_RIGHT.pkl" in warning and "\n" not in warning


def test_a_hostile_network_file_is_a_one_line_error(tmp_path):
    bomb = _lightweight_torch_zip(tmp_path / "graphormer_hand_state_dict.bin", 16 << 20, zipfile.ZIP_DEFLATED)
    with pytest.raises(GraphormerFileError, match="compression bomb") as error:
        files.read_network_state(bomb)
    _one_line(error)
    (tmp_path / "poisoned.bin").write_bytes(POISON_DICT)
    with pytest.raises(GraphormerFileError, match="sets the state of StorageType"):
        files.read_network_state(tmp_path / "poisoned.bin")
