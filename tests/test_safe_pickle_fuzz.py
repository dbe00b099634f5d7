"""Fuzzing the loaders: random pickle opcode sequences (with the globals, calls and BUILDs a hostile file would
use) and random damage to real torch, npz and MANO files. Whatever the bytes, a loader returns or raises its
documented error (UnpicklingError, GraphormerFileError for the Graphormer files), in bounded time; nothing
crashes the process."""
from __future__ import annotations

import io
import pickle
import struct
import time
from pathlib import Path

import mano_files
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_handrefiner import safe_pickle
from lib_handrefiner.mesh.graphormer import files
from lib_handrefiner.mesh.graphormer.files import GraphormerFileError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SECONDS_PER_EXAMPLE = 2.0

_GLOBALS = sorted({f"{m}\n{n}\n" for m, n in safe_pickle.TORCH_GLOBALS}) + [
    "os\nsystem\n", "builtins\neval\n", "numpy\nfrombuffer\n", "scipy.sparse.csc\ncsc_matrix\n"]

_NO_ARGUMENT = [b"(", b"]", b"}", b")", b"\x8f", b"a", b"e", b"s", b"u", b"t", b"l", b"d", b"\x85", b"\x86", b"\x87",
                b"0", b"1", b"2", b"R", b"b", b"\x81", b"\x92", b"o", b"N", b"\x88", b"\x89", b"\x90", b"\x91", b"\x94",
                b"Q", b"\x93", b"."]


def _opcode() -> st.SearchStrategy[bytes]:
    small = st.integers(0, 255)
    return st.one_of(
        st.sampled_from(_NO_ARGUMENT),
        small.map(lambda n: b"K" + bytes([n])),                                      # BININT1
        st.integers(-2**31, 2**31 - 1).map(lambda n: b"J" + struct.pack("<i", n)),   # BININT
        st.integers(0, 8).map(lambda n: b"q" + bytes([n])),                          # BINPUT
        st.integers(0, 8).map(lambda n: b"h" + bytes([n])),                          # BINGET
        st.text(max_size=8).map(lambda t: b"\x8c" + bytes([len(t.encode())]) + t.encode()),  # SHORT_BINUNICODE
        st.binary(max_size=16).map(lambda b: b"C" + bytes([len(b)]) + b),            # SHORT_BINBYTES
        st.sampled_from(_GLOBALS).map(lambda g: b"c" + g.encode()),                  # GLOBAL
        st.sampled_from(["O8", "<f8", "V8", "O,O", "|u1"]).map(                     # a dtype string
            lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()),
        st.binary(min_size=1, max_size=12),                                          # raw bytes
    )


@FUZZ
@given(st.sampled_from([b"\x80\x02", b"\x80\x04", b""]), st.lists(_opcode(), max_size=40))
def test_random_opcode_sequences_give_a_result_or_the_documented_error(protocol, opcodes):
    data = protocol + b"".join(opcodes) + b"."
    for allowed in (safe_pickle.NUMPY_GLOBALS, safe_pickle.TORCH_GLOBALS):
        start = time.perf_counter()
        try:
            safe_pickle.loads(data, allowed, encoding="latin1")
        except safe_pickle.UnpicklingError as e:
            assert "\n" not in str(e)
        assert time.perf_counter() - start < SECONDS_PER_EXAMPLE


def _real_files() -> dict:
    out = {}
    for name, zip_format in (("zip.pt", True), ("legacy.pt", False)):
        buffer = io.BytesIO()
        torch.save({"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(2).half(), "meta": {"step": 3}}, buffer,
                   _use_new_zipfile_serialization=zip_format)
        out[name] = buffer.getvalue()
    out["plain.pth"] = pickle.dumps({"t": torch.arange(4.0)}, protocol=2)
    return out


REAL = _real_files()


def _damage(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(st.sampled_from(sorted(REAL)), EDITS, st.integers(0, 1 << 20))
def test_damaged_torch_files_give_tensors_or_the_documented_error(name, edits, cut):
    data = _damage(REAL[name], edits)
    data = data[:max(1, cut % (len(data) + 1))]
    start = time.perf_counter()
    try:
        safe_pickle.load_torch_stream(io.BytesIO(data))
    except safe_pickle.UnpicklingError as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - start < SECONDS_PER_EXAMPLE


@pytest.fixture(scope="module")
def graphormer_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("mano")
    arrays = mano_files.write_synthetic_mano(folder / "MANO_RIGHT.pkl")
    mano_files.write_synthetic_downsampling(folder / "mano_downsampling.npz", arrays["f"])
    return {name: (folder / name).read_bytes() for name in ("MANO_RIGHT.pkl", "mano_downsampling.npz")}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.sampled_from(["MANO_RIGHT.pkl", "mano_downsampling.npz"]), EDITS)
def test_damaged_graphormer_files_give_the_model_or_a_one_line_error(tmp_path_factory, graphormer_files, name,
                                                                     edits):
    path = Path(tmp_path_factory.mktemp("damaged")) / name
    path.write_bytes(_damage(graphormer_files[name], edits))
    read = files.read_mano if name == "MANO_RIGHT.pkl" else files.read_sampling
    start = time.perf_counter()
    try:
        read(path)
    except GraphormerFileError as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - start < SECONDS_PER_EXAMPLE
