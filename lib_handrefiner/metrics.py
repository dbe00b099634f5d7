"""Evaluation metrics of the HandRefiner paper (Tables 1-3): 2D MPJPE, hand detection confidence, FID and KID.

FID is pytorch-fid's Fréchet distance between Gaussians fitted to two feature sets; KID is torch-fidelity's
unbiased polynomial-kernel MMD² averaged over random subsets. Both take features (rows = images) from any
extractor; `lib_handrefiner.inception` gives the standard Inception-v3 pool features.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import linalg

FID_EPS = 1e-6               # pytorch-fid's diagonal offset when sqrtm of the covariance product is singular
KID_SUBSETS = 100            # torch-fidelity's defaults
KID_SUBSET_SIZE = 1000
KID_SEED = 2020


def mpjpe_2d(joints_a: np.ndarray, joints_b: np.ndarray) -> float:
    """Mean per-joint position error: the mean Euclidean distance between corresponding 2D points (only x, y
    are used, so (N, 3) arrays are accepted)."""
    a = np.asarray(joints_a, dtype=np.float64)
    b = np.asarray(joints_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or min(a.shape[1], b.shape[1]) < 2:
        raise ValueError(f"MPJPE needs two (N, 2+) joint arrays with the same N, got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a[:, :2] - b[:, :2], axis=1).mean())


def detection_confidence(rgb: np.ndarray, max_hands: int = 2, min_confidence: float = 0.2) -> float:
    """The paper's "Det. Conf.": MediaPipe's score of the most confident hand in the image, 0 when none."""
    from lib_handrefiner.detection import detect_hands

    hands = detect_hands(rgb, max_hands=max_hands, detection_confidence=min_confidence,
                         presence_confidence=min_confidence)
    return max((h.score for h in hands), default=0.0)


# ---- FID ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray     # (D,) mean feature
    sigma: np.ndarray  # (D, D) covariance (unbiased, rows are samples)


def feature_statistics(features: np.ndarray) -> GaussianStats:
    features = _features(features, "features")
    if features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set to estimate a covariance, got {features.shape[0]}")
    return GaussianStats(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FID_EPS) -> float:
    """‖mu1 − mu2‖² + Tr(S1 + S2 − 2·sqrtm(S1·S2)), computed as pytorch-fid does: when sqrtm is not finite the
    covariances get `eps` on their diagonal; an imaginary part (numerical error) is dropped when its diagonal is
    below 1e-3, else it is an error."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FID statistics disagree in shape: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)  # disp=False: no "Failed to find" print
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the covariance product is singular; adding {eps} to the diagonals", RuntimeWarning)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean, _ = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset), disp=False)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):g}; "
                             f"the feature sets are too small or degenerate")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features_1: np.ndarray, features_2: np.ndarray) -> float:
    a, b = feature_statistics(features_1), feature_statistics(features_2)
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sets have different widths: {a.mu.shape[0]} and {b.mu.shape[0]}")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# ---- KID ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: Optional[float] = None,
                      coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma·x·y + coef0)^degree, gamma = 1/D by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size samples: the within-set means skip the diagonal, the cross term does not
    (the "unbiased" estimator of Bińkowski et al. as torch-fidelity computes it)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid_from_features(features_1: np.ndarray, features_2: np.ndarray, num_subsets: int = KID_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE, degree: int = 3, gamma: Optional[float] = None,
                      coef0: float = 1.0, seed: int = KID_SEED) -> KIDResult:
    """KID: the mean and std of the unbiased MMD² over `num_subsets` random subsets (drawn without replacement,
    `subset_size` rows from each set, in torch-fidelity's order from np.random.RandomState(seed))."""
    f1, f2 = _features(features_1, "features_1"), _features(features_2, "features_2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets have different widths: {f1.shape[1]} and {f2.shape[1]}")
    if subset_size < 2 or subset_size > min(len(f1), len(f2)):
        raise ValueError(f"KID subset size {subset_size} must be in [2, {min(len(f1), len(f2))}] (the smaller "
                         f"set's image count); pass a smaller subset size")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), subset_size, replace=False)]
        y = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                polynomial_kernel(x, y, degree, gamma, coef0),
                                polynomial_kernel(y, y, degree, gamma, coef0))
    return KIDResult(mean=float(mmds.mean()), std=float(mmds.std()), subsets=num_subsets, subset_size=subset_size)


def _features(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be a numeric (images, features) array, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return array
