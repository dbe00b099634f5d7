"""Mesh Graphormer's hand network: the released checkpoint's layout, and equality with the official code.

tests/data/graphormer_reference.npz holds the four outputs of microsoft/MeshGraphormer's own
Graphormer_Hand_Network (run outside this repository, see tests/data/README.md) on the seeded random weights of
graphormer_fixtures.seeded_state_dict, graphormer_fixtures.fixed_input(), and the template and adjacency made from
the synthetic MANO files of mano_files, in float64 (so the comparison is not at float32's noise floor, ~1e-4 on
these outputs after HRNet's 200 layers).
"""
from __future__ import annotations

import json
from pathlib import Path

import graphormer_fixtures
import mano_files
import numpy as np
import pytest
import torch
from graphormer_fixtures import manifest_entries

from lib_handrefiner.mesh.graphormer import mano
from lib_handrefiner.mesh.graphormer.network import GraphormerHandNetwork

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MANIFEST = SHARED / "fixtures" / "checkpoints" / "graphormer_hand_network.json"
OUTPUTS = ("cam", "joints", "vertices_sub", "vertices")


def test_state_dict_matches_the_released_manifest_key_for_key():
    manifest = json.loads((DATA / "graphormer_manifest.json").read_text())
    with torch.device("meta"):
        network = GraphormerHandNetwork()
    ours = [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in network.state_dict().items()]
    assert len(ours) == manifest["num_keys"] == 2256
    assert ours == manifest_entries()                      # same names, order, shapes, dtypes
    assert sum(v.numel() for k, v in network.named_parameters()) == manifest["total_parameters"] == 213_666_312
    assert not [k for k, v in network.state_dict().items() if v.is_sparse]


def test_trimmed_manifest_copy_equals_the_shared_manifest():
    if not SHARED_MANIFEST.is_file():
        pytest.skip("../shared is absent (a user's clone): nothing to cross-check the trimmed copy against")
    shared = json.loads(SHARED_MANIFEST.read_text())
    assert [{k: e[k] for k in ("key", "shape", "dtype")} for e in shared["keys"]] == manifest_entries()
    trimmed = json.loads((DATA / "graphormer_manifest.json").read_text())
    assert trimmed["size_bytes"] == shared["released_file"]["size_bytes"] == 855_658_184


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA / "graphormer_reference.npz"))


@pytest.fixture(scope="module")
def synthetic_mano():
    arrays = mano_files.synthetic_mano_arrays()
    matrices = mano_files.sampling_matrices(mano_files.synthetic_sampling(arrays["f"]))
    model = mano.Mano(v_template=arrays["v_template"], faces=arrays["f"].astype(np.int32),
                      J_regressor=arrays["J_regressor"], weights=arrays["weights"], posedirs=arrays["posedirs"],
                      hands_mean=arrays["hands_mean"], parents=mano_files.MANO_PARENTS)
    sampling = mano.MeshSampling(downsample=matrices["D"][0].toarray(), sub_adjacency=matrices["A"][1].toarray())
    return model, sampling


@pytest.fixture(scope="module")
def seeded_network(synthetic_mano):
    network = GraphormerHandNetwork(mano.graph_adjacency(synthetic_mano[1].sub_adjacency))
    network.load_state_dict(graphormer_fixtures.seeded_state_dict(manifest_entries()), strict=True)
    return network.eval()


def _run(network, reference, dtype):
    with torch.no_grad():
        outputs = network.to(dtype)(graphormer_fixtures.fixed_input().to(dtype),
                                    torch.from_numpy(reference["template_joints"]),
                                    torch.from_numpy(reference["template_vertices_sub"]))
    return {name: out[0].double().numpy() for name, out in zip(OUTPUTS, outputs)}


def test_template_equals_manopth_and_the_official_sampling(synthetic_mano, reference):
    joints, vertices_sub, vertices = mano.template(*synthetic_mano)
    np.testing.assert_allclose(joints, reference["template_joints"], atol=1e-6)
    np.testing.assert_allclose(vertices_sub, reference["template_vertices_sub"], atol=1e-6)
    root = reference["template_joints_mm"][0] / 1000.0
    np.testing.assert_allclose(vertices, reference["template_vertices_mm"] / 1000.0 - root, atol=1e-6)
    assert joints.shape == (21, 3) and vertices_sub.shape == (195, 3) and vertices.shape == (778, 3)


def test_mesh_joint_regressor_equals_the_official_get_3d_joints(synthetic_mano, reference):
    regressor = mano.mesh_joint_regressor(synthetic_mano[0]).astype(np.float64)
    np.testing.assert_allclose(regressor @ reference["vertices"], reference["joints_from_mesh"], atol=1e-5)


def test_network_equals_the_official_code(seeded_network, reference):
    """float32 first (the product's precision; within float32's noise), then float64 to ≤ 1e-4."""
    float32 = _run(seeded_network, reference, torch.float32)
    for name in OUTPUTS:
        scale = np.abs(reference[name]).max()
        assert np.abs(float32[name] - reference[name]).max() <= 1e-4 * scale, name
    float64 = _run(seeded_network, reference, torch.float64)
    seeded_network.float()
    for name in OUTPUTS:
        assert float64[name].shape == reference[name].shape
        assert np.abs(float64[name] - reference[name]).max() <= 1e-4, name
    # Non-degenerate: outputs differ from token to token and are far from zero.
    assert np.std(float64["vertices"], axis=0).min() > 0.1 and np.abs(float64["cam"]).max() > 0.1


def test_network_without_adjacency_says_so():
    with torch.device("meta"):
        network = GraphormerHandNetwork()
    with pytest.raises(RuntimeError, match="adjacency is not set"):
        network(torch.zeros(1, 3, 224, 224), torch.zeros(21, 3), torch.zeros(195, 3))


def test_dropping_the_unused_parts_changes_nothing_the_forward_computes(seeded_network, reference):
    import copy

    slim = copy.deepcopy(seeded_network)
    slim.drop_unused()
    assert sum(p.numel() for p in slim.parameters()) == 213_666_312 - 44_900_264
    before, after = _run(seeded_network, reference, torch.float32), _run(slim, reference, torch.float32)
    for name in OUTPUTS:
        np.testing.assert_array_equal(before[name], after[name])
