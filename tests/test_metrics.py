"""Metrics against known values and independent computations.

pytorch-fid and torch-fidelity both need torchvision, which this project never installs, so FID is checked
against an eigenvalue formula and closed forms, and KID against an explicit double loop over the same subsets.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lib_handrefiner.metrics import (
    detection_confidence,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    mpjpe_2d,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---- MPJPE -------------------------------------------------------------------------------------------------------

def test_mpjpe_of_known_point_sets():
    a = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    b = a + np.array([[3.0, 4.0], [0.0, 0.0], [-6.0, 8.0]])  # distances 5, 0, 10
    assert mpjpe_2d(a, b) == pytest.approx(5.0)


def test_mpjpe_ignores_z_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(21, 3)), rng.normal(size=(21, 3))
    b_other_z = b.copy()
    b_other_z[:, 2] += 100.0
    assert mpjpe_2d(a, b) == mpjpe_2d(b_other_z, a)
    assert mpjpe_2d(a, a) == 0.0


def test_mpjpe_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="same N"):
        mpjpe_2d(np.zeros((21, 2)), np.zeros((20, 2)))


# ---- detection confidence ----------------------------------------------------------------------------------------

def test_detection_confidence_is_the_best_hand_score_or_zero():
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.imageio import load_image

    rgb = load_image(EXAMPLES / "freihand_sample1.jpg")
    hands = detect_hands(rgb)
    assert detection_confidence(rgb) == pytest.approx(max(h.score for h in hands))
    assert 0.5 < detection_confidence(rgb) <= 1.0
    assert detection_confidence(np.full((96, 96, 3), 127, np.uint8)) == 0.0


# ---- FID ---------------------------------------------------------------------------------------------------------

def independent_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Tr sqrtm(S1 S2) as the sum of the square roots of the eigenvalues of S1^½ S2 S1^½ (symmetric, PSD)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1.T, ddof=1)
    s2 = np.cov(f2.T, ddof=1)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sum(np.sqrt(np.clip(middle, 0, None))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_equals_an_independent_computation(seed: int):
    rng = np.random.default_rng(seed)
    f1 = rng.normal(size=(200, 16))
    f2 = rng.normal(loc=0.3, scale=1.4, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
    assert fid_from_features(f1, f2) == pytest.approx(independent_fid(f1, f2), abs=1e-6)


def test_fid_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + (1 + 0 + 4)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, abs=1e-9) and expected == 10.0


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(3).normal(size=(64, 8))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)


def test_fid_without_a_square_root_retries_with_the_eps_offset():
    # S1·S2 = [[0, 1], [0, 0]] has no square root; with eps on both diagonals it is (1+e)·[[e, 1], [0, e]], whose
    # root has trace 2·sqrt(e·(1+e)).
    eps = 1e-6
    with pytest.warns(RuntimeWarning, match="singular"):
        got = frechet_distance(np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.zeros(2), np.eye(2), eps=eps)
    assert got == pytest.approx(2.0 - 4.0 * math.sqrt(eps * (1 + eps)), abs=1e-9)


def test_fid_rank_deficient_covariances():
    # Fewer images than dimensions: the result is finite and matches the eigenvalue formula.
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(5, 12)), rng.normal(size=(6, 12)) + 1.0
    with np.errstate(all="ignore"):
        got = fid_from_features(f1, f2)
    assert math.isfinite(got)
    assert got == pytest.approx(independent_fid(f1, f2), abs=1e-4)


def test_fid_needs_two_images_and_matching_widths():
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="different widths"):
        fid_from_features(np.random.rand(4, 3), np.random.rand(4, 5))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((4, 3), np.nan), np.random.rand(4, 3))


# ---- KID ---------------------------------------------------------------------------------------------------------

def loop_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    def k(a, b):
        return (gamma * float(np.dot(a, b)) + coef0) ** degree

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_a_double_loop_over_the_same_subsets():
    rng = np.random.default_rng(5)
    f1 = rng.normal(size=(40, 6))
    f2 = rng.normal(loc=0.5, size=(30, 6))
    subsets, size, seed = 4, 12, 2020
    draw = np.random.RandomState(seed)  # torch-fidelity's subset order: f1's draw, then f2's, per subset
    mmds = []
    for _ in range(subsets):
        x = f1[draw.choice(len(f1), size, replace=False)]
        y = f2[draw.choice(len(f2), size, replace=False)]
        mmds.append(loop_mmd2_unbiased(x, y, degree=3, gamma=1 / 6, coef0=1.0))
    got = kid_from_features(f1, f2, num_subsets=subsets, subset_size=size, seed=seed)
    assert got.mean == pytest.approx(float(np.mean(mmds)), abs=1e-6)
    assert got.std == pytest.approx(float(np.std(mmds)), abs=1e-6)
    assert got.mean > 0.0


def test_kid_kernel_parameters_are_used():
    rng = np.random.default_rng(6)
    f1, f2 = rng.normal(size=(10, 3)), rng.normal(size=(10, 3)) + 0.2
    got = kid_from_features(f1, f2, num_subsets=1, subset_size=10, degree=2, gamma=0.5, coef0=2.0)
    draw = np.random.RandomState(2020)
    x, y = f1[draw.choice(10, 10, replace=False)], f2[draw.choice(10, 10, replace=False)]
    assert got.mean == pytest.approx(loop_mmd2_unbiased(x, y, 2, 0.5, 2.0), abs=1e-9)
    assert got.std == 0.0


def test_kid_subset_size_larger_than_a_set_is_an_error():
    with pytest.raises(ValueError, match="subset size 50"):
        kid_from_features(np.zeros((10, 3)), np.zeros((40, 3)), subset_size=50)


# ---- FID Inception-v3 --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_inception():
    from lib_handrefiner.inception import random_fid_inception

    return random_fid_inception(seed=0)


def test_inception_layout_is_the_fid_weights_layout(random_inception):
    # Names and shapes of pt_inception-2015-12-05 (torchvision's Inception-v3 names, 1008 classes, no aux head).
    shapes = {k: tuple(v.shape) for k, v in random_inception.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7dbl_5.conv.weight"] == (192, 128, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)
    params = sum(p.numel() for p in random_inception.parameters())
    assert params - 1008 * 2049 == 23834568 - 1000 * 2049  # torchvision's count without the aux head


def test_tf_average_pool_ignores_the_padding():
    import torch

    from lib_handrefiner.inception import _tf_avg_pool

    pooled = _tf_avg_pool(torch.ones(1, 1, 4, 4))
    assert torch.equal(pooled, torch.ones(1, 1, 4, 4))  # corners average 4 real pixels, not 9 with zeros


def test_features_differ_between_images_and_are_2048_wide(random_inception):
    from lib_handrefiner.inception import extract_features

    images = [np.full((80, 90, 3), c, np.uint8) for c in (0, 128, 255)]
    images.append(np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8))
    features = extract_features(random_inception, images, batch_size=3)
    assert features.shape == (4, 2048) and features.dtype == np.float32
    assert np.abs(features[0] - features[2]).mean() > 1e-3
    again = extract_features(random_inception, images[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(again, features, rtol=1e-4, atol=1e-6)  # batching does not change a row


def test_weights_roundtrip_pth_without_batch_counters_and_safetensors(tmp_path, random_inception):
    import torch
    from safetensors.torch import save_file

    from lib_handrefiner.inception import extract_features, load_fid_inception

    state = {k: v for k, v in random_inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    image = [np.random.default_rng(1).integers(0, 256, (90, 90, 3), dtype=np.uint8)]
    expected = extract_features(random_inception, image)
    for name in ("weights.pth", "weights.safetensors"):
        loaded = load_fid_inception(tmp_path / name, input_size=random_inception.input_size)
        np.testing.assert_array_equal(extract_features(loaded, image), expected)


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    from lib_handrefiner.inception import InceptionWeightsError, load_fid_inception

    with pytest.raises(InceptionWeightsError) as error:
        load_fid_inception(tmp_path / "nope.pth")
    assert "pt_inception-2015-12-05-6726825d.pth" in str(error.value)
    assert "github.com/mseitzer/pytorch-fid/releases" in str(error.value)


def test_other_weights_are_rejected(tmp_path):
    import torch

    from lib_handrefiner.inception import InceptionWeightsError, load_fid_inception

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InceptionWeightsError, match="not the FID Inception-v3 weights"):
        load_fid_inception(tmp_path / "other.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    with pytest.raises(InceptionWeightsError, match="cannot read"):
        load_fid_inception(tmp_path / "broken.pth")


def test_input_below_75_px_is_rejected():
    from lib_handrefiner.inception import FIDInceptionV3

    with pytest.raises(ValueError, match="at least 75"):
        FIDInceptionV3(input_size=64)
