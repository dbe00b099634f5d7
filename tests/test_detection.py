"""MediaPipe detection on the shipped images (real models, offline)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib_handrefiner.detection import detect_hands, make_hand, uncrop_hand
from lib_handrefiner.imageio import load_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.jpg"))


@pytest.fixture(scope="module")
def detections():
    return {name: (load_image(EXAMPLES / f"{name}.jpg"), detect_hands(load_image(EXAMPLES / f"{name}.jpg")))
            for name in NAMES}


def test_seven_examples_shipped():
    assert len(NAMES) == 7


@pytest.mark.parametrize("name", NAMES)
def test_every_example_yields_its_hand(detections, name):
    rgb, hands = detections[name]
    assert len(hands) == 1, f"{name}: {len(hands)} hands"
    hand = hands[0]
    h, w = rgb.shape[:2]
    lm = hand.landmarks
    assert lm.shape == (21, 3) and lm.dtype == np.float32
    assert hand.world_landmarks.shape == (21, 3)
    x0, y0, x1, y1 = hand.keypoint_box
    assert np.all(lm[:, 0] >= x0) and np.all(lm[:, 0] <= x1) and np.all(lm[:, 1] >= y0) and np.all(lm[:, 1] <= y1)
    assert -5 <= x0 < x1 <= w + 5 and -5 <= y0 < y1 <= h + 5
    assert hand.size == pytest.approx(max(x1 - x0, y1 - y0))
    assert 0.2 <= hand.score <= 1.0 and 0.5 <= hand.handedness_score <= 1.0
    # z is relative to the wrist and scaled like x (pixels): a few tens of pixels for these hands, not 0..1.
    assert lm[0, 2] == pytest.approx(0.0, abs=1e-3)
    assert 0.05 * hand.size < np.ptp(lm[:, 2]) < 1.5 * hand.size
    # World landmarks are metric: a hand is ~10-25 cm across its landmarks.
    assert 0.05 < np.linalg.norm(np.ptp(hand.world_landmarks, axis=0)) < 0.3


@pytest.mark.parametrize("name", ["malformed_3", "freihand_sample1", "freihand_sample2", "internet_fig1",
                                  "internet_fig2"])
def test_handedness_is_the_persons_own(detections, name):
    # malformed_3: a man facing the camera shows his right palm; the FreiHAND/Graphormer samples are right hands.
    assert detections[name][1][0].handedness == "right"


def test_mirrored_image_gives_the_other_hand_at_mirrored_landmarks(detections):
    rgb, (hand,) = detections["malformed_3"]
    mirrored = detect_hands(np.ascontiguousarray(rgb[:, ::-1]))
    assert len(mirrored) == 1 and mirrored[0].handedness == "left"
    expected_x = rgb.shape[1] - hand.landmarks[:, 0]
    assert np.abs(mirrored[0].landmarks[:, 0] - expected_x).max() < 0.1 * hand.size


def test_two_hands_and_max_hands(detections):
    rgb = detections["malformed_3"][0]
    both = np.ascontiguousarray(np.concatenate([rgb, rgb[:, ::-1]], axis=1))
    hands = detect_hands(both, max_hands=2)
    assert sorted(h.handedness for h in hands) == ["left", "right"]
    assert len(detect_hands(both, max_hands=1)) == 1


def test_hand_cut_by_the_image_edge_found_by_the_padded_retry(detections):
    rgb, (hand,) = detections["malformed_2"]
    x0, _, x1, _ = hand.keypoint_box
    cut = np.ascontiguousarray(rgb[:, : int(x0 + 0.35 * (x1 - x0))])
    hands = detect_hands(cut)
    assert len(hands) == 1
    # The found wrist is where it is in the full image.
    assert np.abs(hands[0].landmarks[0, :2] - hand.landmarks[0, :2]).max() < 0.1 * hand.size


def test_no_hands_in_a_plain_image():
    assert detect_hands(np.full((128, 160, 3), 127, np.uint8)) == []


def test_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_hands(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="to_rgb"):
        detect_hands(np.zeros((32, 32, 3), np.float32))


def test_uncrop_hand_maps_crop_pixels_back():
    crop_lm = np.tile(np.array([[10.0, 20.0, -4.0]], np.float32), (21, 1))
    crop_lm[1] = [30.0, 40.0, 8.0]
    hand = make_hand("left", 0.9, crop_lm, np.zeros((21, 3)))
    full = uncrop_hand(hand, scale=2.0, offset_xy=(100.0, 50.0))
    assert full.landmarks[0].tolist() == [105.0, 60.0, -2.0]
    assert full.landmarks[1].tolist() == [115.0, 70.0, 4.0]
    assert full.keypoint_box == (105.0, 60.0, 115.0, 70.0) and full.size == 10.0
    assert full.handedness == "left" and full.score == pytest.approx(0.9)


def test_non_square_image_keeps_pixel_coordinates(detections):
    # MediaPipe normalises x by the width and y by the height; padding the image must not move the landmarks.
    rgb, (hand,) = detections["malformed_3"]
    wide = np.ascontiguousarray(np.pad(rgb, ((0, 0), (0, 300), (0, 0)), constant_values=128))
    tall = np.ascontiguousarray(np.pad(rgb, ((0, 260), (0, 0), (0, 0)), constant_values=128))
    for padded in (wide, tall):
        (found,) = detect_hands(padded)
        assert np.abs(found.landmarks[:, :2] - hand.landmarks[:, :2]).max() < 0.1 * hand.size
        # z is scaled by the width, like x: its spread stays about the same in pixels.
        assert np.ptp(found.landmarks[:, 2]) == pytest.approx(np.ptp(hand.landmarks[:, 2]), rel=0.35)


# What mediapipe 0.10.21 raises with the WebUI's protobuf 3.20.0 (abridged from a real WebUI 1.10.1 log).
GRAPH_INIT_FAILURE = (
    "ValidatedGraphConfig Initialization failed.\nImageToTensorCalculator: ; RET_CHECK failure "
    "(mediapipe/calculators/tensor/image_to_tensor_calculator.cc:155) ValidateOptionOutputDims(options) returned "
    "INTERNAL: ; RET_CHECK failure (./mediapipe/calculators/tensor/image_to_tensor_utils.h:136) "
    "options.has_output_tensor_float_range() || options.has_output_tensor_int_range() || "
    "options.has_output_tensor_uint_range()Output tensor range is required. \nSplitTensorVectorCalculator: The "
    "number of output streams should match the number of ranges specified in the CalculatorOptions.")


def failing_graph(monkeypatch, message):
    """MediaPipe's graph constructor failing as it does when mediapipe and protobuf do not fit (with an empty
    graph cache, so that every graph is built again)."""
    import mediapipe.python.solution_base as solution_base

    from lib_handrefiner import detection

    monkeypatch.setattr(detection, "_GRAPHS", {})

    class Failing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(message)

    monkeypatch.setattr(solution_base, "SolutionBase", Failing)


def test_a_graph_that_cannot_initialise_names_mediapipe_protobuf_and_the_fix(monkeypatch):
    import importlib.metadata

    from lib_handrefiner.detection import DetectorUnavailable

    failing_graph(monkeypatch, GRAPH_INIT_FAILURE)
    image = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(DetectorUnavailable) as caught:
        detect_hands(image, max_hands=1, detection_confidence=0.31, presence_confidence=0.31)
    message = str(caught.value)
    assert message.startswith(f"MediaPipe {importlib.metadata.version('mediapipe')} cannot run with protobuf "
                              f"{importlib.metadata.version('protobuf')}")
    assert "ValidatedGraphConfig Initialization failed" in message and "mediapipe>=0.10.9,<=0.10.21" in message
    assert "\n" not in message  # one line for logs and infotexts
    # any other error is left as it is
    failing_graph(monkeypatch, "something else")
    with pytest.raises(RuntimeError, match="^something else$"):
        detect_hands(image, max_hands=1, detection_confidence=0.32, presence_confidence=0.32)
    # nothing broken is cached: the real graph builds once MediaPipe works
    monkeypatch.undo()
    assert detect_hands(image, max_hands=1, detection_confidence=0.31, presence_confidence=0.31) == []


@pytest.mark.parametrize("build", ["hands", "palms", "landmarks", "pose"])
def test_every_graph_runs_its_models_on_the_model_threads(monkeypatch, build):
    """MediaPipe's default runs each model on one thread (palm detector ~22 ms a run here, ~13 ms on two): every
    graph we build has its subgraphs expanded and each XNNPACK inference node given the batch's `model_threads()`."""
    import mediapipe.python.solution_base as solution_base
    from mediapipe.calculators.tensor import inference_calculator_pb2

    from lib_handrefiner import detection

    built = []

    class Recording(solution_base.SolutionBase):
        def __init__(self, *args, graph_config=None, **kwargs):
            built.append(graph_config)
            super().__init__(*args, graph_config=graph_config, **kwargs)

    monkeypatch.setattr(detection, "_GRAPHS", {})
    monkeypatch.setattr(solution_base, "SolutionBase", Recording)
    monkeypatch.setattr(detection, "model_threads", lambda: 3)
    monkeypatch.setattr(detection, "THREADS_HOLD_S", -1.0)
    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    {"hands": lambda: detect_hands(rgb),
     "palms": lambda: detection.palm_candidates(rgb, 0.5),
     "landmarks": lambda: detection.landmarks_in_region(rgb, (rgb.shape[1] / 2, rgb.shape[0] / 2), 200, 0.0, 0.5),
     "pose": lambda: detection.pose_arms(rgb)}[build]()
    # one graph each, but the pose model's two: its detector, and its landmark model on each person's region
    assert len(built) == (2 if build == "pose" else 1)
    ext = inference_calculator_pb2.InferenceCalculatorOptions.ext
    inference = [node for config in built for node in config.node if node.calculator.startswith("InferenceCalculator")]
    # the hands graph runs the palm detector and the landmark model
    assert len(inference) == {"hands": 2, "palms": 1, "landmarks": 1, "pose": 2}[build]
    assert [node.options.Extensions[ext].delegate.xnnpack.num_threads for node in inference] == [3] * len(inference)


def test_models_get_the_free_cores_and_one_thread_when_others_are_busy(monkeypatch):
    from lib_handrefiner import detection

    monkeypatch.setattr(detection.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(detection, "_cgroup_cpu_quota", lambda: None)   # the machine running the tests may have one
    for others, threads in [(0, 4), (3, 4), (4, 4), (5, 1), (8, 1), (None, 4)]:
        monkeypatch.setattr(detection, "_other_runnable_tasks", lambda others=others: others)
        assert detection.model_threads() == threads, others
    monkeypatch.setattr(detection.os, "sched_getaffinity", lambda pid: {0, 1})
    for others, threads in [(0, 2), (1, 1), (None, 1)]:  # unknown load: half the cores
        monkeypatch.setattr(detection, "_other_runnable_tasks", lambda others=others: others)
        assert detection.model_threads() == threads, others


def test_the_thread_count_is_chosen_once_a_second_not_per_batch(monkeypatch):
    from lib_handrefiner import detection

    calls = []
    monkeypatch.setattr(detection, "model_threads", lambda: calls.append(1) or 1)
    monkeypatch.setattr(detection, "_threads_chosen", (float("-inf"), 1))
    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    for _ in range(3):
        detection.palm_candidates(rgb, 0.5)
    assert len(calls) == 1
    monkeypatch.setattr(detection, "THREADS_HOLD_S", -1.0)
    detection.palm_candidates(rgb, 0.5)
    assert len(calls) == 2


@pytest.mark.parametrize("v2, v1, cpus", [
    ("200000 100000\n", None, 2.0),      # docker --cpus=2, cgroup v2
    ("max 100000\n", None, None),        # no quota
    (None, ("150000", "100000"), 1.5),    # cgroup v1
    (None, ("-1", "100000"), None),       # cgroup v1, no quota
    (None, None, None),                   # no cgroup files
])
def test_a_containers_cpu_quota_bounds_the_models_threads(tmp_path, monkeypatch, v2, v1, cpus):
    from lib_handrefiner import detection

    v2_file, v1_dir = tmp_path / "cpu.max", tmp_path / "cpu"
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    monkeypatch.setattr(detection, "_CGROUP_V2_CPU_MAX", str(v2_file))
    monkeypatch.setattr(detection, "_CGROUP_V1_CPU", str(v1_dir))
    monkeypatch.setattr(detection.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(detection, "_other_runnable_tasks", lambda: 0)
    assert detection._cgroup_cpu_quota() == cpus
    # a 64-core host: the quota's whole CPUs, or 4 without a quota
    assert detection.model_threads() == {2.0: 2, 1.5: 1, None: 4}[cpus]


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="Linux only")
def test_a_busy_process_counts_as_a_busy_core():
    from lib_handrefiner.detection import _other_runnable_tasks

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        assert _other_runnable_tasks() >= 1
    finally:
        busy.kill()
        busy.wait()


def test_the_thread_count_does_not_change_what_the_models_find(monkeypatch):
    """A graph per thread count; XNNPACK splits the work, not the sums: the same palms and landmarks."""
    from lib_handrefiner import detection

    monkeypatch.setattr(detection, "THREADS_HOLD_S", -1.0)  # choose again at every batch
    rgb = load_image(EXAMPLES / "malformed_1.jpg")
    found = []
    for threads in (1, 2):
        monkeypatch.setattr(detection, "model_threads", lambda threads=threads: threads)
        palm = detection.palm_candidates(rgb, 0.01)[0]
        hand = detection.landmarks_in_region(rgb, palm.centre, palm.side, palm.rotation, 0.5)
        found.append((palm, hand.landmarks))
    assert found[0][0] == found[1][0]
    np.testing.assert_array_equal(found[0][1], found[1][1])
    assert {key[-1] for key in detection._GRAPHS} >= {1, 2}


def _detect_in_a_new_process(extra_code: str = "") -> "subprocess.CompletedProcess":
    """A fresh interpreter (MediaPipe's native side logs at its first graph) detecting on an example; its stderr
    as the console shows it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from lib_handrefiner.detection import detect_hands\n"
            "from lib_handrefiner.imageio import load_image\n"
            f"{extra_code}\n"
            f"print(len(detect_hands(load_image({str(EXAMPLES / 'malformed_1.jpg')!r}))))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(EXAMPLES.parent))


def test_mediapipes_native_info_and_warning_lines_do_not_reach_the_console():
    done = _detect_in_a_new_process()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    for noise in ("XNNPACK", "absl::InitializeLog", "W0000", "I0000"):
        assert noise not in done.stderr, done.stderr


def test_errors_written_while_mediapipe_runs_stay_visible():
    """Lines that are not MediaPipe's info/warnings (an E-level native log line, a Python warning printed to
    sys.stderr, another thread's output) come out, in order, after the graph call."""
    patch = ("import os\n"
             "from mediapipe.python.solution_base import SolutionBase\n"
             "original = SolutionBase.process\n"
             "def process(self, data):\n"
             "    os.write(2, b'E0000 00:00:1.5   99 calculator_graph.cc:1] a real native error\\n')\n"
             "    os.write(2, b'W0000 00:00:1.5   99 some_calculator.cc:2] a warning\\n')\n"
             "    print('a python message', file=sys.stderr)\n"
             "    return original(self, data)\n"
             "SolutionBase.process = process\n")
    done = _detect_in_a_new_process(patch)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if "a real native error" in line]
    assert errors and errors[0].startswith("E0000") and "a python message" in lines
    assert lines.index(errors[0]) < lines.index("a python message")
    assert "a warning" not in done.stderr


@pytest.mark.parametrize("width, height", [(2000, 20), (20, 2000), (1, 1), (40000, 2), (5000, 5000)])
def test_no_image_shape_reaches_mediapipe_unbounded(width, height):
    # Issue 20: a 2000×20 PNG made the retry upscale it to 51,200 px wide and OpenCV's remap inside MediaPipe
    # aborted the process. Every pass now shrinks what it hands MediaPipe to MAX_SIDE and MAX_PIXELS.
    from lib_handrefiner.detection import MAX_PIXELS, MAX_SIDE, bounded

    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert detect_hands(rgb) == []
    small, scale = bounded(rgb)
    assert max(small.shape[:2]) <= MAX_SIDE and small.shape[0] * small.shape[1] <= MAX_PIXELS
    assert scale == pytest.approx(min(1.0, MAX_SIDE / max(width, height),
                                      (MAX_PIXELS / (width * height)) ** 0.5))


def test_the_2000x20_png_of_issue_20_does_not_kill_the_process(tmp_path):
    # The crash was an abort (SIGABRT) of the whole interpreter: run it in a child to see its exit status.
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 2000, 3), dtype=np.uint8)).save(path)
    done = subprocess.run([sys.executable, "-c",
                           "import sys; from lib_handrefiner.imageio import load_image\n"
                           "from lib_handrefiner.detection import detect_hands\n"
                           f"print(len(detect_hands(load_image({str(path)!r}))))"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"


def test_the_pose_model_reads_every_person_up_to_max_people():
    # Three example pictures side by side: MediaPipe's pose graph would read one person; the detector finds the
    # three, and each one's arms come back (a pair per person, most confident person first).
    from lib_handrefiner import detection

    row = np.ascontiguousarray(np.hstack([load_image(EXAMPLES / f"malformed_{i}.jpg") for i in (1, 2, 3)]))
    arms = detection.pose_arms(row, max_people=4)
    assert len(arms) == 6 and [a.side for a in arms] == ["left", "right"] * 3
    pictures = {int(a.wrist[0] // 512) for a in arms if a.visibility >= 0.3}
    assert pictures == {0, 1, 2}
    assert len(detection.pose_arms(row)) == 2  # by default one person, as MediaPipe's pose graph
    assert detection.pose_arms(row, max_people=0) == []
    # one person alone: the same arms whatever the limit
    single = load_image(EXAMPLES / "malformed_1.jpg")
    for a, b in zip(detection.pose_arms(single), detection.pose_arms(single, max_people=4)):
        np.testing.assert_allclose(a.wrist, b.wrist)
