"""Adaptive strength search: the selection rule on scripted error sequences, batching, and the pose error on real
MediaPipe detections."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_handrefiner.adaptive import pose_error, search_strength

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STRENGTHS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Scripted:
    """A sampler whose sample for strength s is the tuple ("sample", s), with scripted errors per strength;
    records every call so the tests can see what was sampled."""

    def __init__(self, errors: Dict[float, float]) -> None:
        self.errors = errors
        self.calls: List[List[float]] = []
        self.measured: List[float] = []

    def sample(self, strengths: Sequence[float]) -> List[tuple]:
        self.calls.append(list(strengths))
        return [("sample", s) for s in strengths]

    def error(self, sample: tuple) -> float:
        self.measured.append(sample[1])
        return self.errors[sample[1]]


def run(errors: Dict[float, float], factor: float = 1.15, batch_size: int = 1,
        strengths: Sequence[float] = STRENGTHS) -> tuple:
    scripted = Scripted(errors)
    result = search_strength(scripted.sample, scripted.error, reference=1.0, strengths=strengths,
                             factor=factor, batch_size=batch_size)
    return result, scripted


def test_first_accepted_strength_is_kept_and_search_stops_there():
    errors = {1.0: 10.0, 0.4: 20.0, 0.5: 11.4, 0.6: 5.0, 0.7: 1.0, 0.8: 1.0, 0.9: 1.0}
    result, scripted = run(errors)
    assert result.strength == 0.5 and result.sample == ("sample", 0.5)
    assert result.accepted and result.reference_error == 10.0
    assert result.tried == [(1.0, 10.0), (0.4, 20.0), (0.5, 11.4)]
    assert scripted.calls == [[1.0], [0.4], [0.5]]  # 0.6 (better still) is never sampled
    assert result.sampled == 3


def test_none_accepted_keeps_the_reference_sample_not_the_last():
    errors = {1.0: 10.0, 0.4: 30.0, 0.5: 25.0, 0.6: 20.0, 0.7: 15.0, 0.8: 12.0, 0.9: 11.6}
    result, scripted = run(errors)
    assert not result.accepted
    assert result.strength == 1.0 and result.sample == ("sample", 1.0)
    assert [s for s, _ in result.tried] == [1.0, *STRENGTHS]
    assert result.sampled == 7 and len(scripted.calls) == 7


def test_error_equal_to_the_threshold_is_not_accepted():
    # 8 × 1.25 = 10 exactly in binary floating point: a tie, which "below" rejects.
    errors = {1.0: 8.0, 0.4: 10.0, 0.5: 9.999, 0.6: 0.0, 0.7: 0.0, 0.8: 0.0, 0.9: 0.0}
    result, _ = run(errors, factor=1.25)
    assert result.threshold == 10.0
    assert result.strength == 0.5
    assert result.tried[1] == (0.4, 10.0)


def test_tie_at_the_default_factor():
    tie = 1.15 * 20.0
    errors = {1.0: 20.0, 0.4: tie, 0.5: tie, 0.6: tie, 0.7: tie, 0.8: tie, 0.9: tie}
    result, _ = run(errors)
    assert not result.accepted and result.strength == 1.0


def test_reference_without_a_hand_accepts_the_first_strength_that_finds_one():
    errors = {1.0: math.inf, 0.4: math.inf, 0.5: float("nan"), 0.6: 250.0, 0.7: 1.0, 0.8: 1.0, 0.9: 1.0}
    result, _ = run(errors)
    assert result.strength == 0.6 and result.accepted
    assert result.reference_error == math.inf
    assert result.tried[2] == (0.5, math.inf)  # NaN is reported as "no hand"


def test_no_hand_anywhere_keeps_the_reference():
    result, _ = run({s: math.inf for s in (1.0, *STRENGTHS)})
    assert not result.accepted and result.strength == 1.0
    assert all(e == math.inf for _, e in result.tried)


def test_zero_reference_error_accepts_nothing():
    result, _ = run({1.0: 0.0, **{s: 0.0 for s in STRENGTHS}})
    assert not result.accepted and result.strength == 1.0


def test_empty_strength_list_returns_the_reference():
    result, scripted = run({1.0: 3.0}, strengths=())
    assert result.strength == 1.0 and result.tried == [(1.0, 3.0)] and scripted.calls == [[1.0]]


def test_batches_follow_the_schedule_and_keep_the_first_accepted_in_list_order():
    # 0.5 and 0.6 are sampled together; both pass, the first in list order (0.5) is kept, 0.6 is not measured.
    errors = {1.0: 10.0, 0.4: 50.0, 0.5: 9.0, 0.6: 1.0, 0.7: 1.0, 0.8: 1.0, 0.9: 1.0}
    result, scripted = run(errors, batch_size=2)
    assert scripted.calls == [[1.0, 0.4], [0.5, 0.6]]
    assert result.strength == 0.5 and result.sample == ("sample", 0.5)
    assert scripted.measured == [1.0, 0.4, 0.5]
    assert result.tried == [(1.0, 10.0), (0.4, 50.0), (0.5, 9.0)]
    assert result.sampled == 4


def test_an_accepted_strength_in_the_reference_batch_is_judged_after_the_reference():
    errors = {1.0: 10.0, 0.4: 2.0, 0.5: 1.0, 0.6: 1.0, 0.7: 1.0, 0.8: 1.0, 0.9: 1.0}
    result, scripted = run(errors, batch_size=4)
    assert scripted.calls == [[1.0, 0.4, 0.5, 0.6]]
    assert result.strength == 0.4 and result.tried == [(1.0, 10.0), (0.4, 2.0)]


def test_last_batch_may_be_short():
    errors = {1.0: 1.0, **{s: 9.0 for s in STRENGTHS}}
    result, scripted = run(errors, batch_size=3)
    assert scripted.calls == [[1.0, 0.4, 0.5], [0.6, 0.7, 0.8], [0.9]]
    assert result.strength == 1.0 and len(result.tried) == 7


error_values = st.one_of(st.floats(min_value=0.0, max_value=100.0), st.just(math.inf), st.just(float("nan")))


@settings(max_examples=200, deadline=None)
@given(st.lists(error_values, min_size=1, max_size=8), st.integers(1, 9),
       st.floats(min_value=1.0, max_value=3.0))
def test_any_batch_size_gives_the_rule_applied_one_by_one(values: List[float], batch_size: int, factor: float):
    strengths = [round(0.1 * (i + 1), 1) for i in range(len(values) - 1)]
    errors = dict(zip([1.0, *strengths], values))

    def expected() -> Optional[float]:
        reference = math.inf if math.isnan(values[0]) else values[0]
        for s in strengths:
            e = errors[s]
            if not math.isnan(e) and e < factor * reference:
                return s
        return None

    result, _ = run(errors, factor=factor, batch_size=batch_size, strengths=strengths)
    chosen = expected()
    assert result.accepted == (chosen is not None)
    assert result.strength == (1.0 if chosen is None else chosen)
    assert result.sample == ("sample", result.strength)
    assert [s for s, _ in result.tried] == [1.0, *strengths][:len(result.tried)]


def test_sampler_returning_the_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="returned 1 samples, expected 2"):
        search_strength(lambda ss: [0], lambda x: 1.0, batch_size=2)


def test_bad_batch_size_is_an_error():
    with pytest.raises(ValueError, match="batch_size"):
        search_strength(lambda ss: list(ss), lambda x: 1.0, batch_size=0)


# ---- pose_error on real detections -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hand_image():
    from lib_handrefiner.imageio import load_image

    return load_image(EXAMPLES / "freihand_sample1.jpg")


@pytest.fixture(scope="module")
def mesh_model():
    from lib_handrefiner.mesh import get_mesh_model

    return get_mesh_model("landmarks")


def _target_joints(rgb, mesh_model) -> np.ndarray:
    from lib_handrefiner.detection import detect_hands

    hands = detect_hands(rgb)
    assert len(hands) == 1
    return mesh_model.fit(hands[0], rgb).joints[:, :2]


def test_pose_error_is_zero_on_the_image_that_made_the_target(hand_image, mesh_model):
    target = _target_joints(hand_image, mesh_model)
    assert pose_error(hand_image, target, mesh_model) == pytest.approx(0.0, abs=1e-4)


def test_pose_error_measures_a_shifted_target_in_pixels(hand_image, mesh_model):
    target = _target_joints(hand_image, mesh_model)
    assert pose_error(hand_image, target + np.array([3.0, 4.0]), mesh_model) == pytest.approx(5.0, abs=1e-3)


def test_pose_error_is_inf_without_a_hand(mesh_model):
    grey = np.full((128, 128, 3), 127, np.uint8)
    assert pose_error(grey, np.zeros((21, 2)), mesh_model) == math.inf


def test_pose_error_uses_the_hand_nearest_the_target(hand_image, mesh_model):
    mirrored = np.ascontiguousarray(hand_image[:, ::-1])
    pair = np.concatenate([hand_image, mirrored], axis=1)
    right_copy = _target_joints(mirrored, mesh_model) + np.array([hand_image.shape[1], 0.0])
    error = pose_error(pair, right_copy, "landmarks")
    assert error < 5.0  # the left copy's hand would be ~200 px away


def test_pose_error_rejects_bad_target_shape(hand_image, mesh_model):
    with pytest.raises(ValueError, match=r"\(21, 2\)"):
        pose_error(hand_image, np.zeros((20, 2)), mesh_model)


def test_adaptive_benchmark_runs_and_reports_the_ratio(tiny_models, capsys):
    from lib_handrefiner.bench.adaptive import main

    code = main(["--steps", "2", "--repeats", "1", "--batch-sizes", "1,7", "--pipeline-batches", "7",
                 "--images", "malformed_1.jpg", "--models", str(tiny_models.checkpoint.parent)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "batch 7:" in printed and "none |" in printed
    assert "end-to-end median adaptive / fixed, batch 7:" in printed
