"""Hand detection with MediaPipe Hands (the legacy `solutions.hands` graph, whose models ship inside the
mediapipe wheel: fully offline).

Conventions (see dev/ARCHITECTURE.md "Coordinates"):
- `landmarks` are in image pixels; z is MediaPipe's relative depth (0 at the wrist, negative towards the camera)
  scaled like x, i.e. multiplied by the image width, so it is in pixels of the image camera (z away from viewer).
- `handedness` is the person's own hand. MediaPipe's legacy graph labels hands as if the image were a mirrored
  selfie: on a normal photo its "Left" is the person's right hand. Verified on examples/malformed_3.jpg (a man
  facing the camera shows his right palm: MediaPipe says "Left") and by flipping images (the label flips).
- `score` is the palm detector's confidence (what `detection_confidence` thresholds), `handedness_score` the
  left/right classifier's.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

NUM_LANDMARKS = 21
# Every image handed to MediaPipe is first shrunk to fit these (issue 20: OpenCV's remap inside MediaPipe aborts
# the process on a side of 32767 px or more). The palm detector looks at 192 px and the landmark model at 224 px,
# so nothing is lost: a larger image only costs the resize.
MAX_SIDE = 2048
MAX_PIXELS = 2048 * 2048
# Palm detections the graph keeps when the caller asks for all hands (max_hands 0).
ALL_HANDS = 16
# When nothing is found, the image is retried with a border and, if its shorter side is below this, upscaled.
_RETRY_MIN_SIDE = 512
# Border added around the image for the retry: the palm detector misses hands cut by the image edge.
_RETRY_PAD_RATIO = 0.25


class DetectorUnavailable(RuntimeError):
    """MediaPipe is installed but cannot build its hand graph; the message says why and how to fix it."""


@dataclass(frozen=True)
class Hand:
    handedness: str                  # "left" / "right": the person's own hand
    score: float                     # palm detection confidence, 0..1
    landmarks: np.ndarray            # (21, 3) float32, image camera pixels (x, y, z away from the viewer)
    world_landmarks: np.ndarray      # (21, 3) float32, metres, origin near the hand's centre (MediaPipe)
    keypoint_box: Tuple[float, float, float, float]  # [x0, y0, x1, y1] around the 21 landmarks, px
    size: float                      # longest side of keypoint_box, px
    handedness_score: float = 1.0    # MediaPipe's left/right classifier confidence, 0..1


def keypoint_box(landmarks_xy: np.ndarray) -> Tuple[float, float, float, float]:
    xy = np.asarray(landmarks_xy, dtype=np.float64)[:, :2]
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def make_hand(handedness: str, score: float, landmarks: np.ndarray, world_landmarks: np.ndarray,
              handedness_score: float = 1.0) -> Hand:
    """A `Hand` with its keypoint box and size derived from the landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 3)
    box = keypoint_box(landmarks)
    return Hand(handedness=handedness, score=float(score), landmarks=landmarks,
                world_landmarks=np.asarray(world_landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 3),
                keypoint_box=box, size=max(box[2] - box[0], box[3] - box[1]),
                handedness_score=float(handedness_score))


def uncrop_hand(hand: Hand, scale: float, offset_xy: Tuple[float, float]) -> Hand:
    """A hand found in a crop that was cut at `offset_xy` and resized by `scale`, in the full image's pixels:
    p = p_crop / scale + [ox, oy, 0] (z scales like x)."""
    landmarks = hand.landmarks / np.float32(scale) + np.array([offset_xy[0], offset_xy[1], 0.0], dtype=np.float32)
    return make_hand(hand.handedness, hand.score, landmarks, hand.world_landmarks, hand.handedness_score)


def crop_hand(hand: Hand, scale: float, offset_xy: Tuple[float, float]) -> Hand:
    """The hand in the pixels of a crop cut at `offset_xy` and resized by `scale` (the inverse of uncrop_hand)."""
    landmarks = (hand.landmarks - np.array([offset_xy[0], offset_xy[1], 0.0], dtype=np.float32)) * np.float32(scale)
    return make_hand(hand.handedness, hand.score, landmarks, hand.world_landmarks, hand.handedness_score)


def detect_hands(rgb: np.ndarray, max_hands: int = 2, detection_confidence: float = 0.2,
                 presence_confidence: float = 0.2) -> List[Hand]:
    """Finds up to `max_hands` hands (0: all) in an RGB uint8 image with MediaPipe's palm detector and landmark
    model, in one pass over the whole image. When none is found, the image is retried with a grey border (and
    upscaled towards a 512 px shorter side if smaller), which recovers hands cut by the image edge.
    `lib_handrefiner.hand_search.find_hands` adds the other passes (tiles, flips, the pose model)."""
    rgb = _check_rgb(rgb)
    hands = palm_pass(rgb, max_hands, detection_confidence, presence_confidence)
    if not hands:
        hands = padded_pass(rgb, max_hands, detection_confidence, presence_confidence)
    return hands


def palm_pass(rgb: np.ndarray, max_hands: int = 0, detection_confidence: float = 0.2,
              presence_confidence: float = 0.2) -> List[Hand]:
    """The palm detector then the landmark model over the whole image (shrunk to MediaPipe's bounds)."""
    small, scale = bounded(rgb)
    return [uncrop_hand(h, scale, (0.0, 0.0)) if scale != 1.0 else h
            for h in _run(small, max_hands, detection_confidence, presence_confidence)]


def padded_pass(rgb: np.ndarray, max_hands: int = 0, detection_confidence: float = 0.2,
                presence_confidence: float = 0.2) -> List[Hand]:
    """The image with a grey border, upscaled towards a 512 px shorter side but never past MediaPipe's bounds
    (a 2000×20 image is not made 51,200 px wide)."""
    padded, scale, pad = bordered(rgb)
    found = palm_pass(padded, max_hands, detection_confidence, presence_confidence)
    return [unborder_hand(h, scale, pad) for h in found]


def bordered(rgb: np.ndarray) -> Tuple[np.ndarray, float, int]:
    """The image upscaled towards a _RETRY_MIN_SIDE shorter side (never past MediaPipe's bounds) and given a grey
    border of _RETRY_PAD_RATIO × its shorter side: (image, scale, border px). The palm detector misses palms cut by
    the image's edge, and small images show it small hands."""
    import cv2

    height, width = rgb.shape[:2]
    grown = 1.0 + 2.0 * _RETRY_PAD_RATIO
    scale = max(1.0, min(_RETRY_MIN_SIDE / min(height, width), MAX_SIDE / (max(height, width) * grown),
                         (MAX_PIXELS / (height * width * grown * grown)) ** 0.5))
    big = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                                              interpolation=cv2.INTER_CUBIC)
    pad = round(_RETRY_PAD_RATIO * min(big.shape[:2]))
    return cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(127, 127, 127)), scale, pad


def unborder_hand(hand: Hand, scale: float, pad: int) -> Hand:
    """A hand found in `bordered`'s image, in the image's own pixels: p = (p_bordered - pad) / scale."""
    return uncrop_hand(hand, scale, (-pad / scale, -pad / scale))


def bounded(rgb: np.ndarray) -> Tuple[np.ndarray, float]:
    """The image shrunk (if needed) so that no side exceeds MAX_SIDE and it holds at most MAX_PIXELS, with the
    scale applied (≤ 1). Every image given to MediaPipe passes through here."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width), (MAX_PIXELS / (height * width)) ** 0.5)
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_hands needs an RGB uint8 H×W×3 array, got {rgb.dtype} {rgb.shape}; convert "
                         f"with lib_handrefiner.imageio.to_rgb")
    return np.ascontiguousarray(rgb)


_GRAPHS: Dict[tuple, object] = {}
# One image's detection at a time in the process: a MediaPipe graph runs one frame at a time, and the WebUI's
# requests come from many threads.
_GRAPHS_LOCK = threading.Lock()
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _each(work: Callable[[_Item], _Result], items: Sequence[_Item]) -> List[_Result]:
    """work(item) for every item, in order, under _GRAPHS_LOCK and with MediaPipe's start-up noise kept off
    stderr, both taken once for the batch; the models run it on the thread count `model_threads()` chose at most
    THREADS_HOLD_S ago. (Two Python threads with graphs of their own were measured no faster on this 2-core CPU:
    MediaPipe's Python process() does not run two graphs at once.)"""
    global _batch_threads, _threads_chosen
    with _GRAPHS_LOCK, _without_native_noise():
        if time.monotonic() - _threads_chosen[0] > THREADS_HOLD_S:
            _threads_chosen = (time.monotonic(), model_threads())
        _batch_threads = _threads_chosen[1]
        return [work(item) for item in items]


def _graph(max_hands: int, detection_confidence: float, presence_confidence: float):
    """A MediaPipe graph per setting, built once (building costs ~100 ms) and reused under the lock."""
    key = (int(max_hands) if max_hands > 0 else ALL_HANDS, float(detection_confidence), float(presence_confidence))
    # The solutions.hands graph, but also emitting palm_detections for the detector's score.
    return _cached(key, lambda: _solution(
        _hands_binary_graph(),
        side_inputs={"model_complexity": 1, "num_hands": key[0], "use_prev_landmarks": False},
        calculator_params={
            "palmdetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": key[1],
            # The hand-presence threshold of the landmark model (named "tracking" in the legacy API).
            "handlandmarkcpu__ThresholdingCalculator.threshold": key[2],
        },
        outputs=["multi_hand_landmarks", "multi_hand_world_landmarks", "multi_handedness", "palm_detections"]))


def _cached(key: tuple, build):
    """The graph `build()` makes, built once per key and thread count (under _GRAPHS_LOCK, held by the caller of
    `_each`)."""
    key = (*key, _batch_threads)
    if key not in _GRAPHS:
        try:
            _GRAPHS[key] = build()
        except RuntimeError as e:
            raise graph_error(e) from e
    return _GRAPHS[key]


# MediaPipe's graphs run each model on one CPU thread (its XNNPACK delegate's default, num_threads -1). On this
# project's 2-core CPU, two threads take the palm detector from ~22 to ~13 ms a run and the landmark model from ~16
# to ~12 ms; the hand search makes 20-40 such runs per image. But XNNPACK's threads wait for each other by spinning:
# with another task busy on one of the two cores, two threads made the search 2.2x slower than one (and three
# threads on two cores 35x slower), so the models get only the cores no other task is running on at that moment.
MAX_MODEL_THREADS = 4
# The thread count of the batch `_each` runs now (set under _GRAPHS_LOCK); graphs are built and kept per count.
_batch_threads = 1
# A count chosen by model_threads() holds this long (reading the load costs ~1-5 ms in a process of 100 threads,
# and a hand search runs 5-8 batches in ~0.3 s): (when it was chosen, the count).
THREADS_HOLD_S = 1.0
_threads_chosen = (float("-inf"), 1)


def model_threads() -> int:
    """The models' thread count for the next batch: min(MAX_MODEL_THREADS, the CPU cores this process may use, a
    container's CPU quota included) when that many cores are free right now (Linux: no other process's task running
    on them), else 1. Where the load cannot be read (Windows, macOS): half the cores, leaving the other half to
    other work."""
    cores = _usable_cores()
    wanted = min(MAX_MODEL_THREADS, cores)
    others = _other_runnable_tasks()
    if others is None:
        return max(1, min(MAX_MODEL_THREADS, cores // 2))
    return wanted if cores - others >= wanted else 1


def _usable_cores() -> int:
    """The CPU cores this process may use: its CPU affinity, or fewer where a container's CPU quota says so (a
    2-CPU quota on a 64-core host: threads past the quota spin against each other, as they do past the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, int(quota))) if quota is not None else max(1, cores)


# Where a container's CPU quota is: cgroup v2's "cpu.max" ("max 100000" or "<quota> <period>"), cgroup v1's
# "cpu.cfs_quota_us" (-1: none) and "cpu.cfs_period_us".
_CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


def _cgroup_cpu_quota() -> Optional[float]:
    """The CPUs' worth of time a container's quota allows this process, None where there is no quota."""
    try:
        with open(_CGROUP_V2_CPU_MAX, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(_CGROUP_V1_CPU, "cpu.cfs_quota_us"), encoding="ascii") as f:
                quota = f.read().strip()
            with open(os.path.join(_CGROUP_V1_CPU, "cpu.cfs_period_us"), encoding="ascii") as f:
                period = f.read().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = float(quota), float(period)
    except ValueError:  # "max": no quota
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


# /proc/loadavg's count of running tasks is a snapshot that kernel threads and short tasks enter and leave: the
# fewest of a few snapshots a moment apart is what keeps the cores busy.
_SNAPSHOTS = 3
_SNAPSHOT_GAP_S = 0.0005


def _other_runnable_tasks() -> Optional[int]:
    """Tasks of other processes running on the machine now: the fewest of _SNAPSHOTS snapshots of /proc/loadavg's
    running tasks, less this process's own running threads (the models' threads of the last batch may still be
    spinning); None where there is no /proc (not Linux)."""
    try:
        running = []
        for snapshot in range(_SNAPSHOTS):
            if snapshot:
                time.sleep(_SNAPSHOT_GAP_S)
            with open("/proc/loadavg", encoding="ascii") as f:
                running.append(int(f.read().split()[3].split("/")[0]))
        return max(0, min(running) - max(_own_running_threads(), 1))
    except (OSError, ValueError, IndexError):
        return None


def _own_running_threads() -> int:
    own = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat", encoding="ascii") as f:
            # "pid (name) state …": the name may hold spaces and parentheses; the state follows the last ")"
            own += f.read().rpartition(")")[2].split()[0] == "R"
    return own


def _solution(config, side_inputs: dict, outputs: List[str], calculator_params: Optional[dict] = None,
              edit: Optional[Callable] = None):
    """A MediaPipe graph (a CalculatorGraphConfig, its subgraphs not expanded yet) ready to `process()`, with every
    model it runs on XNNPACK given the batch's thread count (`model_threads`). The subgraphs are expanded first (by
    MediaPipe's own validation, so that each mediapipe version's own subgraphs are used) because their inference
    nodes are not reachable through `calculator_params`. `edit(expanded_config)`, if given, changes it further."""
    from mediapipe.calculators.tensor import inference_calculator_pb2
    from mediapipe.framework import calculator_pb2
    from mediapipe.python._framework_bindings import validated_graph_config
    from mediapipe.python.solution_base import SolutionBase

    validated = validated_graph_config.ValidatedGraphConfig()
    validated.initialize(graph_config=config)
    expanded = calculator_pb2.CalculatorGraphConfig.FromString(validated.binary_config)
    _with_threads(expanded, inference_calculator_pb2.InferenceCalculatorOptions.ext, _batch_threads)
    if edit is not None:
        edit(expanded)
    return SolutionBase(graph_config=expanded, side_inputs=side_inputs, calculator_params=calculator_params,
                        outputs=outputs)


def _with_threads(config, inference_options_ext, threads: int) -> None:
    """Sets `threads` on every inference node of an expanded graph config that runs its model on XNNPACK (MediaPipe's
    CPU graphs all do)."""
    for node in config.node:
        if node.calculator.startswith("InferenceCalculator") and node.options.HasExtension(inference_options_ext):
            delegate = node.options.Extensions[inference_options_ext].delegate
            if delegate.HasField("xnnpack"):
                delegate.xnnpack.num_threads = threads


def _hands_binary_graph():
    """The graph config of the mediapipe wheel's legacy hands solution, read from its .binarypb (the path is
    relative to the folder holding the mediapipe package, as MediaPipe resolves it)."""
    import mediapipe
    from mediapipe.framework import calculator_pb2
    from mediapipe.python.solutions import hands

    root = os.path.dirname(os.path.dirname(os.path.abspath(mediapipe.__file__)))
    with open(os.path.join(root, hands._BINARYPB_FILE_PATH), "rb") as f:
        return calculator_pb2.CalculatorGraphConfig.FromString(f.read())


def _text_graph(text: str):
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2

    return text_format.Parse(text, calculator_pb2.CalculatorGraphConfig())


def graph_error(error: RuntimeError) -> Exception:
    """MediaPipe's "ValidatedGraphConfig Initialization failed" as a DetectorUnavailable that says what to do.
    It means the graph's calculator options did not parse: a mediapipe built for another protobuf than the one
    installed (the WebUI pins protobuf 3.20.0 and puts it back on every start; mediapipe 0.10.13+ need 4.25.3+).
    Any other error is returned as it is."""
    text = str(error)
    if "ValidatedGraphConfig" not in text:
        return error
    mediapipe, protobuf = _version("mediapipe"), _version("protobuf")
    declared = next((r for r in _requires("mediapipe") if r.replace(" ", "").lower().startswith("protobuf")), None)
    needs = f" (it declares {declared})" if declared else ""
    return DetectorUnavailable(
        f"MediaPipe {mediapipe} cannot run with protobuf {protobuf}{needs}: its hand graph failed to initialise "
        f"({text.splitlines()[0].strip()}). Fix: restart the WebUI, whose HandRefiner install step then replaces "
        f"mediapipe by one that fits protobuf {protobuf} (0.10.11 for protobuf 3.x); or, in the Python that runs it, "
        f"run: pip install \"mediapipe>=0.10.9,<=0.10.21\" \"protobuf=={protobuf}\"")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _requires(distribution: str) -> List[str]:
    try:
        return importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []


# What MediaPipe's native code writes to stderr while a graph starts and runs its first frames, and that says
# nothing to a user: TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." (0.10.11 and 0.10.21);
# absl's "WARNING: All log messages before absl::InitializeLog() ..." and its info/warning lines
# ("W0000 00:00:1796158137.874374   13717 inference_feedback_manager.cc:114] ...", 0.10.21). Error and fatal lines
# (E…, F…) and anything else are kept.
_NATIVE_NOISE = re.compile(r"[IW]\d{4,8} [\d:.]+ +\d+ \S+:\d+\] "
                           r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                           r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")


@contextlib.contextmanager
def _without_native_noise() -> Iterator[None]:
    """Runs the block with file descriptor 2 sent to a file, then writes back every line but _NATIVE_NOISE's.

    Measured with mediapipe 0.10.11 and 0.10.21: neither GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL changes these
    lines (0.10.21 logs through absl, TFLite prints on its own), and absl's InitializeLog / SetStderrThreshold are
    not reachable from Python (the bindings export only their init function), so the lines are taken out where
    they are written. Other threads' stderr written meanwhile comes out at the end, in order, not lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr (a GUI launcher): nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _NATIVE_NOISE.match(line)]
            data = "".join(kept).encode("utf-8")
            while data:
                data = data[os.write(2, data):]


def _run(rgb: np.ndarray, max_hands: int, detection_confidence: float, presence_confidence: float) -> List[Hand]:
    height, width = rgb.shape[:2]
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ValueError(f"internal: a {width}x{height} image reached MediaPipe unbounded")
    (result,) = _each(lambda image: _graph(max_hands, detection_confidence, presence_confidence).process(
        {"image": image}), [rgb])
    if not result.multi_hand_landmarks:
        return []
    palms = [_palm_box_and_score(d) for d in (result.palm_detections or [])]
    hands = []
    for image_lms, world_lms, handedness in zip(result.multi_hand_landmarks, result.multi_hand_world_landmarks,
                                                result.multi_handedness):
        normalised = np.array([[p.x, p.y, p.z] for p in image_lms.landmark], dtype=np.float32)
        landmarks = normalised * np.array([width, height, width], dtype=np.float32)
        world = np.array([[p.x, p.y, p.z] for p in world_lms.landmark], dtype=np.float32)
        label = handedness.classification[0]
        hands.append(make_hand(
            handedness=_persons_own(label.label),
            score=_palm_score(normalised, palms, default=label.score),
            landmarks=landmarks, world_landmarks=world, handedness_score=label.score))
    return hands


def _persons_own(mediapipe_label: str) -> str:
    # The legacy graph assumes a mirrored selfie image; our images are not mirrored.
    return "right" if mediapipe_label.lower() == "left" else "left"


def _palm_box_and_score(detection) -> Tuple[Tuple[float, float, float, float], float]:
    b = detection.location_data.relative_bounding_box
    return (b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height), float(detection.score[0])


def _palm_score(normalised: np.ndarray, palms, default: float) -> float:
    """The score of the palm detection this hand came from: the one whose box centre is nearest the palm centre
    (wrist and the four finger bases)."""
    if not palms:
        return float(default)
    centre = normalised[[0, 5, 9, 13, 17], :2].mean(axis=0)
    distances = [np.hypot((b[0] + b[2]) / 2 - centre[0], (b[1] + b[3]) / 2 - centre[1]) for b, _ in palms]
    return palms[int(np.argmin(distances))][1]



# ---- the landmark model on a given region, and the pose model's arms ----------------------------------------

# MediaPipe's HandLandmarkCpu subgraph alone (no palm detector): it crops the region given as a rotated rectangle
# and emits the 21 landmarks only when its hand-presence score is above the threshold.
_LANDMARK_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:landmarks"
output_stream: "WORLD_LANDMARKS:world_landmarks"
output_stream: "HANDEDNESS:handedness"
node {
  calculator: "HandLandmarkCpu"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:landmarks"
  output_stream: "WORLD_LANDMARKS:world_landmarks"
  output_stream: "HANDEDNESS:handedness"
}
"""


def _landmark_graph(presence_confidence: float):
    return _cached(("landmarks", float(presence_confidence)), lambda: _solution(
        _text_graph(_LANDMARK_GRAPH), side_inputs={"model_complexity": 1},
        calculator_params={"handlandmarkcpu__ThresholdingCalculator.threshold": float(presence_confidence)},
        outputs=["landmarks", "world_landmarks", "handedness", "presence"], edit=_expose_presence))


def _expose_presence(config) -> None:
    """Makes the landmark subgraph's hand-presence score (the float its TensorsToFloatsCalculator reads from the
    model, before the threshold) an output of the graph named "presence"."""
    (floats,) = [node for node in config.node if node.calculator == "TensorsToFloatsCalculator"]
    (score,) = [stream.split(":")[-1] for stream in floats.output_stream if stream.startswith("FLOAT:")]
    config.node.add(calculator="PassThroughCalculator", input_stream=[score], output_stream=["presence"])
    config.output_stream.append("presence")


# A square region of the image for the landmark model: centre (image px), side (px), rotation (radians).
Region = Tuple[Tuple[float, float], float, float]


def landmarks_in_region(rgb: np.ndarray, centre_xy: Tuple[float, float], side: float, rotation: float,
                        presence_confidence: float) -> Optional[Hand]:
    """The landmark model alone on the square region of `side` px centred at `centre_xy` (image pixels; it may
    reach past the image's edge), turned by `rotation` radians (MediaPipe's convention: the angle that brings the
    wrist-to-middle-finger direction upright). None when the model's hand-presence score is below
    `presence_confidence` (0: the model always answers). The hand's `score` is that presence score."""
    return landmarks_in_regions(rgb, [(centre_xy, side, rotation)], presence_confidence)[0]


def landmarks_in_regions(rgb: np.ndarray, regions: Sequence[Region], presence_confidence: float
                         ) -> List[Optional[Hand]]:
    """`landmarks_in_region` for each region, in order, in one batch."""
    rgb = _check_rgb(rgb)
    return _each(lambda region: _landmarks(rgb, region, presence_confidence), list(regions))


def _landmarks(rgb: np.ndarray, region: Region, presence_confidence: float) -> Optional[Hand]:
    from mediapipe.framework.formats import rect_pb2

    centre_xy, side, rotation = region
    crop, scale, origin = _region_crop(rgb, centre_xy, side)
    height, width = crop.shape[:2]
    cx, cy = (centre_xy[0] - origin[0]) * scale, (centre_xy[1] - origin[1]) * scale
    roi = rect_pb2.NormalizedRect(x_center=cx / width, y_center=cy / height, width=side * scale / width,
                                  height=side * scale / height, rotation=rotation)
    result = _landmark_graph(presence_confidence).process({"image": crop, "roi": roi})
    if result.landmarks is None:
        return None
    normalised = np.array([[p.x, p.y, p.z] for p in result.landmarks.landmark], dtype=np.float32)
    landmarks = (normalised * np.array([width, height, width], dtype=np.float32) / np.float32(scale)
                 + np.array([origin[0], origin[1], 0.0], dtype=np.float32))
    world = np.array([[p.x, p.y, p.z] for p in result.world_landmarks.landmark], dtype=np.float32)
    label = result.handedness.classification[0]
    return make_hand(_persons_own(label.label), float(result.presence), landmarks, world, label.score)


# The landmark model sees 224 px: a region is cut from the image with this much room around its square (enough
# for any rotation: half its diagonal is 0.71 of its side) and shrunk so that its square is at most
# _LANDMARK_INPUT px, so that MediaPipe copies and warps a small image rather than the whole picture for every
# region it looks at (a 512 px crop costs 6 ms more per region than a 336 px one, measured).
_REGION_ROOM = 0.75
_LANDMARK_INPUT = 224


def _region_crop(rgb: np.ndarray, centre_xy: Tuple[float, float], side: float
                 ) -> Tuple[np.ndarray, float, Tuple[int, int]]:
    """The part of the image around a region (clamped to the image, never empty), the scale it was shrunk by
    and its origin in the image: image px p = crop px / scale + origin."""
    import cv2

    height, width = rgb.shape[:2]
    reach = _REGION_ROOM * side
    x0 = int(min(max(centre_xy[0] - reach, 0), width - 1))
    y0 = int(min(max(centre_xy[1] - reach, 0), height - 1))
    x1 = int(max(min(centre_xy[0] + reach + 1, width), x0 + 1))
    y1 = int(max(min(centre_xy[1] + reach + 1, height), y0 + 1))
    crop = rgb[y0:y1, x0:x1]
    scale = min(1.0, _LANDMARK_INPUT / max(side, 1.0))
    if scale < 1.0:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop), scale, (x0, y0)


@dataclass(frozen=True)
class Arm:
    """One arm of a person found by MediaPipe's pose model, in image pixels."""
    side: str                       # "left" / "right": the person's own
    elbow: np.ndarray               # (2,)
    wrist: np.ndarray               # (2,)
    hand_points: np.ndarray         # (3, 2): pinky, index and thumb points (the pose model's, coarse)
    visibility: float               # the wrist's visibility, 0..1


# The pose model's landmark indices: (elbow, wrist, pinky, index, thumb) of the person's left and right arm.
# The pose detector's threshold (it finds a person by the face and body; stylized people score low).
POSE_DETECTION = 0.5
_POSE_ARMS = {"left": (13, 15, 17, 19, 21), "right": (14, 16, 18, 20, 22)}
# MediaPipe's pose graph keeps only the pose detector's first person; its detector subgraph alone gives them all,
# and its landmark subgraph reads one person's region, so each person's region goes to it in turn.
_POSE_DETECTOR_GRAPH = """
input_stream: "IMAGE:image"
output_stream: "DETECTIONS:detections"
node {
  calculator: "PoseDetectionCpu"
  input_stream: "IMAGE:image"
  output_stream: "DETECTIONS:detections"
}
"""
_POSE_LANDMARK_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:landmarks"
node {
  calculator: "PoseLandmarkByRoiCpu"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:landmarks"
}
"""
# MediaPipe's person region (pose_detection_to_roi): centred on the detector's hip-centre keypoint, turned so that
# the line to its second keypoint points up, a square of twice that line grown 1.25 times.
_PERSON_SCALE = 2 * 1.25


def _pose_detector_graph():
    return _cached(("pose detector",), lambda: _solution(
        _text_graph(_POSE_DETECTOR_GRAPH), side_inputs={},
        calculator_params={"posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": POSE_DETECTION},
        outputs=["detections"]))


def _pose_landmark_graph():
    return _cached(("pose landmarks",), lambda: _solution(
        _text_graph(_POSE_LANDMARK_GRAPH), side_inputs={"model_complexity": 1, "enable_segmentation": False},
        outputs=["landmarks"]))


def pose_arms(rgb: np.ndarray, max_people: int = 1) -> List[Arm]:
    """Both arms of each of the (at most `max_people`) people the pose detector finds, most confident first; [] if
    none. As MediaPipe's pose graph does for its one person: the detector finds a person by the face and body, the
    landmark model reads the person's region."""
    rgb = _check_rgb(rgb)
    small, scale = bounded(rgb)
    height, width = small.shape[:2]
    (found,) = _each(lambda image: _pose_detector_graph().process({"image": image}), [small])
    people = sorted(found.detections or [], key=lambda d: -d.score[0])[:max(0, int(max_people))]
    results = _each(lambda region: _pose_landmark_graph().process({"image": small, "roi": region}),
                    [_person_region(person, width, height) for person in people])
    arms = []
    for result in results:
        if result.landmarks is None:
            continue
        points = np.array([[p.x * width, p.y * height] for p in result.landmarks.landmark]) / scale
        visibility = np.array([p.visibility for p in result.landmarks.landmark])
        arms += [Arm(side, points[e], points[w], points[[pk, ix, th]], float(visibility[w]))
                 for side, (e, w, pk, ix, th) in _POSE_ARMS.items()]
    return arms


def _person_region(detection, width: int, height: int):
    """The region (a NormalizedRect of the `width` × `height` picture) the pose landmark model reads for one
    person the pose detector found (_PERSON_SCALE)."""
    from mediapipe.framework.formats import rect_pb2

    hip, top = detection.location_data.relative_keypoints[0], detection.location_data.relative_keypoints[1]
    dx, dy = (top.x - hip.x) * width, (top.y - hip.y) * height
    side = _PERSON_SCALE * math.hypot(dx, dy)
    return rect_pb2.NormalizedRect(x_center=hip.x, y_center=hip.y, width=side / width, height=side / height,
                                   rotation=upright_rotation(dx, dy))


def upright_rotation(dx: float, dy: float) -> float:
    """MediaPipe's region rotation (its DetectionsToRects rule) for a direction (dx, dy) in image pixels (x right,
    y down) that should point up in the region: wrist to middle finger for a hand, hip to head for a person. The
    angle from that direction to straight up, normalised to [-π, π)."""
    return wrapped_angle(math.pi / 2 - math.atan2(-dy, dx))


def wrapped_angle(angle: float) -> float:
    """The same angle (rad) in [-π, π)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


# ---- the palm detector alone, and its candidates' regions ----------------------------------------------------

_PALM_GRAPH = """
input_stream: "IMAGE:image"
output_stream: "DETECTIONS:detections"
node {
  calculator: "PalmDetectionCpu"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_stream: "IMAGE:image"
  output_stream: "DETECTIONS:detections"
}
"""
# MediaPipe's palm-to-hand region (palm_detection_detection_to_roi): turned so that wrist → middle-finger base
# (palm keypoints 0 and 2) points up, shifted half the palm box towards the fingers, squared and grown 2.6 times.
_ROI_SCALE = 2.6
_ROI_SHIFT_Y = -0.5


@dataclass(frozen=True)
class PalmCandidate:
    score: float
    centre: Tuple[float, float]     # the hand region's centre, image px
    side: float                     # its side, px
    rotation: float                 # radians, MediaPipe's convention (see landmarks_in_region)


def palm_candidates(rgb: np.ndarray, min_score: float) -> List[PalmCandidate]:
    """Every palm the palm detector scores at least `min_score` (after its own non-maximum suppression), most
    confident first, each as the region the landmark model is to look at (as MediaPipe's hand graph makes it)."""
    return palm_candidates_each([(rgb, min_score)])[0]


def palm_candidates_each(looks: Sequence[Tuple[np.ndarray, float]]) -> List[List[PalmCandidate]]:
    """`palm_candidates` of each (image, min_score), in order, in one batch."""
    return _each(lambda look: _palms(*look), [(_check_rgb(rgb), min_score) for rgb, min_score in looks])


def _palms(rgb: np.ndarray, min_score: float) -> List[PalmCandidate]:
    small, scale = bounded(rgb)
    height, width = small.shape[:2]

    def build():
        return _solution(_text_graph(_PALM_GRAPH), side_inputs={"model_complexity": 1},
                         calculator_params={"palmdetectioncpu__TensorsToDetectionsCalculator.min_score_thresh":
                                            float(min_score)},
                         outputs=["detections"])

    result = _cached(("palms", float(min_score)), build).process({"image": small})
    candidates = [_palm_region(d, width, height, scale) for d in (result.detections or [])]
    return sorted(candidates, key=lambda c: -c.score)


def _palm_region(detection, width: int, height: int, scale: float) -> PalmCandidate:
    box = detection.location_data.relative_bounding_box
    wrist, middle = detection.location_data.relative_keypoints[0], detection.location_data.relative_keypoints[2]
    rotation = upright_rotation((middle.x - wrist.x) * width, (middle.y - wrist.y) * height)
    w, h = box.width * width, box.height * height
    cx = (box.xmin + box.width / 2) * width - h * _ROI_SHIFT_Y * math.sin(rotation)
    cy = (box.ymin + box.height / 2) * height + h * _ROI_SHIFT_Y * math.cos(rotation)
    return PalmCandidate(float(detection.score[0]), (cx / scale, cy / scale), max(w, h) * _ROI_SCALE / scale,
                         rotation)
