"""Mesh Graphormer's files: read without running anything in them, every missing or wrong one told by name, and
the model they make on a shipped image."""
from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import mano_files
import numpy as np
import pytest
import torch

from lib_handrefiner import safe_pickle
from lib_handrefiner.mesh import get_mesh_model
from lib_handrefiner.mesh.graphormer import files, mano
from lib_handrefiner.mesh.graphormer.files import GraphormerFileError, read_mano, read_sampling

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED_MANO = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mano"


# ---- MANO_RIGHT.pkl ---------------------------------------------------------------------------------------------

def test_the_synthetic_mano_is_laid_out_as_the_real_one(tmp_path):
    """Protocol 2, Python 2 byte strings, numpy's Python-2 array pickles, a chumpy Ch and a scipy csc_matrix by
    NEWOBJ + BUILD: the test file exercises what the real file holds."""
    path = tmp_path / "MANO_RIGHT.pkl"
    mano_files.write_synthetic_mano(path)
    ops = list(pickletools.genops(path.read_bytes()))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    names = {op.name for op, _, _ in ops}
    assert {"SHORT_BINSTRING", "BINSTRING", "NEWOBJ", "BUILD", "REDUCE"} <= names
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES", "STACK_GLOBAL"}
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "chumpy.ch Ch",
                        "scipy.sparse.csc csc_matrix", "__builtin__ set"}


def test_read_mano_gives_the_arrays_written(tmp_path):
    path = tmp_path / "MANO_RIGHT.pkl"
    arrays = mano_files.write_synthetic_mano(path)
    model = read_mano(path)
    np.testing.assert_array_equal(model.v_template, arrays["v_template"])
    np.testing.assert_array_equal(model.J_regressor, arrays["J_regressor"])  # from the scipy.sparse matrix
    np.testing.assert_array_equal(model.posedirs, arrays["posedirs"])
    np.testing.assert_array_equal(model.weights, arrays["weights"])
    np.testing.assert_array_equal(model.hands_mean, arrays["hands_mean"])
    np.testing.assert_array_equal(model.faces, arrays["f"].astype(np.int32))
    assert model.parents == mano_files.MANO_PARENTS
    # shapedirs (a chumpy Ch) arrives as its array
    content = safe_pickle.plain_data(safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS, encoding="latin1"))
    np.testing.assert_array_equal(content["shapedirs"], arrays["shapedirs"])
    assert content["bs_type"] == "lrotmin"


@pytest.mark.parametrize("name", list(mano_files.malicious_pickles(Path("/nonexistent"))))
def test_a_malicious_mano_file_runs_nothing(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(mano_files.malicious_pickles(marker)[name])
    with pytest.raises(GraphormerFileError, match="MANO_RIGHT.pkl is not the MANO hand model"):
        read_mano(path)
    assert not marker.exists()
    # The marker is real: the same bytes through plain pickle would create it.
    if name.startswith("os.system"):
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_wrong_mano_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "MANO_RIGHT.pkl"
    arrays = mano_files.synthetic_mano_arrays()
    arrays["v_template"] = arrays["v_template"][:700]
    path.write_bytes(mano_files.py2_pickle(arrays))
    with pytest.raises(GraphormerFileError, match=r"'v_template' should be an array of shape \(778, 3\), it is "
                                                  r"\(700, 3\).*mano\.is\.tue\.mpg\.de"):
        read_mano(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(GraphormerFileError, match="cannot be read as a pickle"):
        read_mano(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(GraphormerFileError, match="holds a list"):
        read_mano(path)


# ---- mano_downsampling.npz --------------------------------------------------------------------------------------

def test_read_sampling_of_a_python2_npz(tmp_path):
    arrays = mano_files.synthetic_mano_arrays()
    path = tmp_path / "mano_downsampling.npz"
    written = mano_files.write_synthetic_downsampling(path, arrays["f"])
    sampling = read_sampling(path)
    np.testing.assert_array_equal(sampling.downsample, written["D"][0].toarray())
    np.testing.assert_array_equal(sampling.sub_adjacency, written["A"][1].toarray())


def test_the_real_npz_reads_as_numpy_reads_it():
    path = SHARED_MANO / "mano_downsampling.npz"
    if not path.is_file():
        pytest.skip("../shared is absent (a user's clone): the real file cannot be shipped")
    ours = safe_pickle.load_npz(path)
    with np.load(path, allow_pickle=True, encoding="latin1") as theirs:  # trusted here: MeshGraphormer's own file
        assert sorted(ours) == sorted(theirs.files) == ["A", "D", "F", "U", "V"]
        for name in theirs.files:
            for a, b in zip(ours[name], theirs[name], strict=True):
                if hasattr(b, "toarray"):
                    assert type(a) is type(b) and a.shape == b.shape and (a != b).nnz == 0
                else:
                    assert a.dtype == b.dtype and np.array_equal(a, b)
    sampling = read_sampling(path)
    assert sampling.downsample.shape == (195, 778) and sampling.sub_adjacency.shape == (195, 195)


def test_graph_adjacency_from_the_npz_equals_the_official_adjmat_files():
    """The adjacency built from mano_downsampling.npz's A[1] is the one the official code ships as .pt files."""
    if not (SHARED_MANO / "mano_195_adjmat_values.pt").is_file():
        pytest.skip("../shared is absent (a user's clone): MANO's real adjacency cannot be shipped")
    load = lambda name: torch.load(SHARED_MANO / f"mano_195_adjmat_{name}.pt", weights_only=True)  # noqa: E731
    official = torch.sparse_coo_tensor(load("indices"), load("values"), load("size"), check_invariants=True)
    ours = mano.graph_adjacency(read_sampling(SHARED_MANO / "mano_downsampling.npz").sub_adjacency)
    assert official._nnz() == 1331 and int((ours != 0).sum()) == 1331
    torch.testing.assert_close(ours, official.to_dense(), atol=1e-7, rtol=0)


def test_a_malicious_npz_runs_nothing(tmp_path):
    import io
    import zipfile

    marker = tmp_path / "ran"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    path = tmp_path / "mano_downsampling.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("D.npy", header.getvalue() + mano_files.malicious_pickles(marker)["os.system"])
    with pytest.raises(GraphormerFileError, match="mano_downsampling.npz is not the 778 → 195 vertex sampling"):
        read_sampling(path)
    assert not marker.exists()


# ---- graphormer_hand_state_dict.bin, and all three together ------------------------------------------------------

def _folder_with(tmp_path, graphormer_folder, names):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(graphormer_folder / name)
    return folder


@pytest.mark.parametrize("missing", [["MANO_RIGHT.pkl"], ["graphormer_hand_state_dict.bin", "mano_downsampling.npz"],
                                     list(files.FILE_NAMES)])
def test_each_missing_file_is_named_with_what_it_is_and_where_to_get_it(tmp_path, graphormer_folder, missing):
    folder = _folder_with(tmp_path, graphormer_folder, [n for n in files.FILE_NAMES if n not in missing])
    with pytest.raises(GraphormerFileError) as caught:
        get_mesh_model("graphormer", folder)
    message = str(caught.value)
    assert f"needs {len(missing)} file(s)" in message
    for required in files.REQUIRED_FILES:
        line = next((text for text in message.splitlines() if text.startswith(f"- {required.name}:")), None)
        assert (line is not None) == (required.name in missing)
        if line:
            assert required.what in line and required.where in line and str(folder / "handrefiner") in line
    if "MANO_RIGHT.pkl" in missing:
        assert "licence" in message and "your own download" in message
    assert "hrnetv2_w64_imagenet_pretrained.pth" not in message


def test_no_folder_at_all_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(files.MODELS_DIR_ENV, raising=False)
    with pytest.raises(GraphormerFileError, match=r"--models-dir \(or the HANDREFINER_MODELS_DIR environment"):
        get_mesh_model("graphormer")


def test_the_environment_variable_is_the_fallback_folder(monkeypatch, graphormer_folder):
    monkeypatch.setenv(files.MODELS_DIR_ENV, str(graphormer_folder))
    assert files.search_folders() == [graphormer_folder / "handrefiner", graphormer_folder]
    assert files.find_files(files.search_folders()).keys() == set(files.FILE_NAMES)


def test_wrong_network_files_say_what_is_wrong(tmp_path, graphormer_folder):
    folder = _folder_with(tmp_path, graphormer_folder, ["MANO_RIGHT.pkl", "mano_downsampling.npz"])
    network = folder / "graphormer_hand_state_dict.bin"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 3, 3), "something.else": torch.zeros(2)}, network)
    with pytest.raises(GraphormerFileError, match=r"is not Mesh Graphormer's hand network.*2255 of its tensors are "
                                                  r"missing.*1 are not the hand network's.*datarelease"):
        get_mesh_model("graphormer", folder)
    network.write_bytes(b"\x00" * 100)
    with pytest.raises(GraphormerFileError, match="cannot be read as a torch state dict"):
        get_mesh_model("graphormer", folder)
    marker = tmp_path / "ran"
    network.write_bytes(mano_files.malicious_pickles(marker)["os.system"])
    with pytest.raises(GraphormerFileError, match="cannot be read as a torch state dict"):
        get_mesh_model("graphormer", folder)
    assert not marker.exists()


def test_the_released_layout_loads_and_fits_a_shipped_image(graphormer_folder, graphormer_model):
    from lib_handrefiner.depth import render_depth
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image

    assert (graphormer_folder / "graphormer_hand_state_dict.bin").read_bytes()[:2] == b"\x80\x02"  # legacy format
    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    hand = detect_hands(rgb)[0]
    mesh = graphormer_model.fit(hand, rgb)
    assert mesh.model == "graphormer"
    assert mesh.vertices.shape == (778, 3) and mesh.faces.shape == (1538, 3) and mesh.joints.shape == (21, 3)
    assert np.isfinite(mesh.vertices).all() and mesh.faces.max() < 778
    rendered = render_depth([mesh], rgb.shape[1], rgb.shape[0])
    assert (rendered.depth > 0).sum() > 100 and rendered.depth.max() == 255
    x0, y0, x1, y1 = mesh.view.window
    hit_y, hit_x = np.nonzero(rendered.depth)
    assert x0 <= hit_x.min() and hit_x.max() < x1 and y0 <= hit_y.min() and hit_y.max() < y1




def test_half_precision_gives_the_same_joints(graphormer_folder, graphormer_model):
    """float16, as on a GPU (here on the CPU): the same 2D joints to a fraction of a pixel."""
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.mesh.graphormer.model import load_graphormer

    rgb = load_image(EXAMPLES / "freihand_sample1.jpg")
    hand = detect_hands(rgb)[0]
    half = load_graphormer(graphormer_folder, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.template_joints.dtype == torch.float16
    ours, theirs = half.fit(hand, rgb).joints[:, :2], graphormer_model.fit(hand, rgb).joints[:, :2]
    assert np.abs(ours - theirs).max() < 0.5 and np.ptp(theirs) > 20
