"""Adaptive control strength (HandRefiner paper §3.2), per hand.

A reference sample is drawn at a high control strength (1.0); then the strengths of a list (0.4 … 0.9) are tried
in order. Each sample's hand is re-detected, fitted with the same mesh model, and its 21 projected joints compared
with the joints of the mesh that guided the refinement (2D MPJPE, pixels). The first strength whose error is
strictly below `factor` × the reference's is kept. When none is, the reference sample itself is kept (the official
code returns the last tried sample there, which is the one the search found wanting).

Cost: the paper reports 3.5× a fixed-strength run. Here the search stops at the first accepted strength, and with
`batch_size > 1` several strengths are sampled in one call (the pipeline runs them as one batch with per-sample
control scales and the same noise), so batching changes the cost, not the choice (up to the float rounding of
batched kernels). `python -m lib_handrefiner.bench adaptive` measures it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generic, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

if TYPE_CHECKING:  # imports MediaPipe / the mesh models only where pose_error runs
    from lib_handrefiner.detection import Hand
    from lib_handrefiner.mesh import MeshModel
    from lib_handrefiner.settings import HandRefinerArgs

T = TypeVar("T")

DEFAULT_STRENGTHS: Tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class AdaptiveResult(Generic[T]):
    sample: T                          # the kept sample
    strength: float                    # its control strength
    reference_error: float             # MPJPE of the reference sample (px; inf when no hand was found in it)
    tried: List[Tuple[float, float]]   # (strength, MPJPE) of every sample whose error was measured, reference first
    accepted: bool = False             # True: a strength passed the test; False: the reference sample was kept
    sampled: int = 0                   # samples drawn (a batch may draw some beyond the accepted one)
    threshold: float = field(default=math.inf)  # factor × reference_error, the bar a strength had to pass


def search_strength(sample: Callable[[Sequence[float]], Sequence[T]], error: Callable[[T], float],
                    reference: float = 1.0, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                    factor: float = 1.15, batch_size: int = 1) -> AdaptiveResult[T]:
    """Runs the search over two callables: `sample(strengths)` returns one sample per strength (in order) and
    `error(sample)` its pose error. The schedule [reference, *strengths] is sampled `batch_size` strengths per
    call; errors are measured in schedule order and the search stops at the first accepted strength.

    A NaN error counts as inf (no hand). With an infinite reference error any finite error is accepted (the
    strength found a hand where the reference lost it); an infinite error is never accepted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    schedule = [float(reference)] + [float(s) for s in strengths]
    tried: List[Tuple[float, float]] = []
    reference_sample: Optional[T] = None
    threshold = math.inf
    sampled = 0
    for start in range(0, len(schedule), batch_size):
        batch = schedule[start:start + batch_size]
        samples = list(sample(batch))
        if len(samples) != len(batch):
            raise ValueError(f"sample({batch}) returned {len(samples)} samples, expected {len(batch)}")
        sampled += len(batch)
        for index, (strength, candidate) in enumerate(zip(batch, samples)):
            value = _as_error(error(candidate))
            tried.append((strength, value))
            if start + index == 0:
                reference_sample, threshold = candidate, factor * value
            elif value < threshold:
                return AdaptiveResult(sample=candidate, strength=strength, reference_error=tried[0][1],
                                      tried=tried, accepted=True, sampled=sampled, threshold=threshold)
    return AdaptiveResult(sample=reference_sample, strength=schedule[0], reference_error=tried[0][1], tried=tried,
                          accepted=False, sampled=sampled, threshold=threshold)


def _as_error(value: float) -> float:
    value = float(value)
    return math.inf if math.isnan(value) else value


def pose_error(refined_rgb: np.ndarray, target_joints_xy: np.ndarray,
               mesh_model: Union["MeshModel", str, None] = None,
               args: Optional["HandRefinerArgs"] = None) -> float:
    """2D MPJPE (px) between the target joints and the joints of the mesh fitted to the hand re-detected in
    `refined_rgb` (the one nearest the target when several are found); inf when no hand is found.

    `target_joints_xy` are in `refined_rgb`'s pixels (the crop's, when refining a crop); `mesh_model` is the model
    (or its name) that built the target mesh, so both sides carry the same model's bias.
    """
    from lib_handrefiner.detection import detect_hands
    from lib_handrefiner.settings import HandRefinerArgs

    args = args or HandRefinerArgs()
    target = _joints_xy(target_joints_xy)
    hands = detect_hands(refined_rgb, max_hands=args.max_hands, detection_confidence=args.detection_confidence,
                         presence_confidence=args.presence_confidence)
    return nearest_hand_error(hands, refined_rgb, target, mesh_model or args.mesh_model)


def crop_refit_error(refined_rgb: np.ndarray, hand: "Hand", target_joints_xy: np.ndarray,
                     mesh_model: "MeshModel", box: Optional[Sequence[float]] = None) -> float:
    """2D MPJPE (px) between the target joints and the joints `mesh_model` fits to `refined_rgb` at the original
    `hand` (its landmarks, so its crop; or `box`, the user's box its mesh was read from) without detecting again:
    the official check for Mesh Graphormer (HandRefiner's eval_mpjpe re-runs the network on the refined image at
    the crop boxes of the original hands)."""
    from lib_handrefiner.metrics import mpjpe_2d

    return mpjpe_2d(mesh_model.fit(hand, refined_rgb, box).joints, _joints_xy(target_joints_xy))


def refit_error(refined_rgb: np.ndarray, hand: "Hand", target_joints_xy: np.ndarray, mesh_model: "MeshModel",
                args: Optional["HandRefinerArgs"] = None, box: Optional[Sequence[float]] = None) -> float:
    """The pose check of the adaptive search with `mesh_model`: crop_refit_error for models that refit at the
    original hand's crop (Mesh Graphormer, as the official code), else pose_error (detect again, then fit)."""
    if getattr(mesh_model, "refits_original_crop", False):
        return crop_refit_error(refined_rgb, hand, target_joints_xy, mesh_model, box)
    return pose_error(refined_rgb, target_joints_xy, mesh_model, args)


def nearest_hand_error(hands: Sequence["Hand"], rgb: np.ndarray, target_joints_xy: np.ndarray,
                       mesh_model: Union["MeshModel", str] = "landmarks") -> float:
    """pose_error over hands already detected in `rgb`: the hand whose landmarks are nearest the target (mean
    joint distance) is fitted with `mesh_model` and its joints compared with the target; inf without hands."""
    from lib_handrefiner.mesh import get_mesh_model
    from lib_handrefiner.metrics import mpjpe_2d

    target = _joints_xy(target_joints_xy)
    if not hands:
        return math.inf
    nearest = min(hands, key=lambda h: mpjpe_2d(h.landmarks, target))
    model = get_mesh_model(mesh_model) if isinstance(mesh_model, str) else mesh_model
    return mpjpe_2d(model.fit(nearest, rgb).joints, target)


def _joints_xy(joints: np.ndarray) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 2 or joints.shape[0] != 21 or joints.shape[1] < 2:
        raise ValueError(f"target joints must be a (21, 2) or (21, 3) array, got shape {joints.shape}")
    return joints[:, :2]
