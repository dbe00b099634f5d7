"""The default mesh model: an anatomically proportioned hand built from the 21 landmarks alone (no weights, no
MANO).

The hand is a union of closed convex parts, each the convex hull of a few spheres (a "sphere-swept" solid;
two-sphere parts are built exactly as tapered capsules, the others with Qhull):
- each finger is a chain of tapered capsules MCP→PIP→DIP→tip (thumb MCP→IP→tip) whose neighbours share the
  joint sphere, so the chain is seamless; the last sphere sits 0.8 radius behind the tip landmark, so the rounded
  fingertip ends just past the landmark;
- the palm is a rounded slab: the hull of spheres at the four finger knuckles, both sides of the wrist and a
  short forearm stub;
- the thenar eminence (ball of the thumb) joins the thumb's base (landmarks 1, 2) to the palm.
Widths are fractions of the palm length, so they follow the hand's size; every part is watertight, which is all
the ray-cast depth renderer needs. The mesh always has five fingers, whatever the landmarks look like.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial import ConvexHull

from lib_handrefiner.detection import Hand
from lib_handrefiner.mesh import HandMesh

NAME = "landmarks"

WRIST, THUMB_CMC, THUMB_MCP, INDEX_MCP, MIDDLE_MCP, RING_MCP, PINKY_MCP = 0, 1, 2, 5, 9, 13, 17
FINGERTIPS = (4, 8, 12, 16, 20)

# Landmark chains and the radius (fraction of palm length) at each of their joints, tip last. Adult hands: a
# palm ~9.5 cm long, finger diameters ~2.2 cm (thumb) to ~1.6 cm (little finger) at the base, ~80 % of that at
# the tip; rounded up ~15 %, as thin fingers read as sticks to a depth ControlNet and Mesh Graphormer's
# fingers are as thick.
FINGER_CHAINS: Tuple[Tuple[Tuple[int, ...], Tuple[float, ...]], ...] = (
    ((2, 3, 4), (0.140, 0.124, 0.108)),
    ((5, 6, 7, 8), (0.121, 0.108, 0.097, 0.086)),
    ((9, 10, 11, 12), (0.126, 0.113, 0.100, 0.090)),
    ((13, 14, 15, 16), (0.119, 0.106, 0.095, 0.084)),
    ((17, 18, 19, 20), (0.105, 0.094, 0.084, 0.076)),
)

# Palm slab: knuckle spheres a little wider than the finger bases; a wrist ~60 % of the palm length wide.
KNUCKLE_RADII = {INDEX_MCP: 0.132, MIDDLE_MCP: 0.137, RING_MCP: 0.130, PINKY_MCP: 0.118}
WRIST_HALF_WIDTH = 0.21   # wrist sphere centres either side of the wrist landmark, fraction of palm length
WRIST_RADIUS = 0.135
FOREARM_LENGTH = 0.30     # the stub below the wrist, as in Mesh Graphormer's hand mesh
FOREARM_HALF_WIDTH = 0.17
FOREARM_RADIUS = 0.125
THENAR_RADII = (0.140, 0.130, 0.135)  # at the thumb CMC, the thumb side of the wrist, the palm under the index

OVERLAP_GAP = 1.3   # overlapping finger chains are pushed this far apart (× the sum of their radii)
TIP_BACK_OFF = 0.8  # fingertip sphere centre this many radii behind the tip landmark
SPHERE_POINTS = 40  # samples per sphere of the palm and thenar hulls
# Finger capsules: sides around, and latitude rings per rounded end; at 14 sides a finger 40 px wide deviates
# from a circle by under 0.5 px.
CAPSULE_SIDES = 14
CAPSULE_CAP_RINGS = 3


class LandmarkMeshModel:
    name = NAME

    def __init__(self, models_dir: object = None, device: object = None, dtype: object = None) -> None:
        del models_dir, device, dtype  # needs no files, runs no network

    def fit(self, hand: Hand, rgb: Optional[np.ndarray] = None, box: Optional[Sequence[float]] = None) -> HandMesh:
        return landmark_mesh(hand.landmarks)


def landmark_mesh(landmarks: np.ndarray) -> HandMesh:
    """A hand mesh around 21 landmarks in the image camera (pixels, z away from the viewer). Its joints are the
    landmarks, except where two neighbouring fingers run through each other (see `separate_fingers`)."""
    joints = separate_fingers(np.asarray(landmarks, dtype=np.float64).reshape(21, 3))
    parts = [_tapered_capsule(*spheres[0], *spheres[1]) if len(spheres) == 2 else _hull_of_spheres(spheres)
             for spheres in hand_parts(joints)]
    vertices, faces = _concatenate(parts)
    return HandMesh(vertices=vertices.astype(np.float32), faces=faces.astype(np.int32),
                    joints=joints.astype(np.float32), model=NAME)


def palm_length(joints: np.ndarray) -> float:
    """The wrist-to-middle-knuckle length, estimated from several palm distances and taking the largest, so a
    palm foreshortened along one direction (MediaPipe's z is compressed) still gets its real size."""
    d = lambda a, b: float(np.linalg.norm(joints[a] - joints[b]))  # noqa: E731
    estimates = (d(WRIST, MIDDLE_MCP), d(INDEX_MCP, PINKY_MCP) / 0.72, d(WRIST, INDEX_MCP) / 0.95,
                 d(WRIST, PINKY_MCP) / 0.85)
    return max(max(estimates), 1.0)


def separate_fingers(joints: np.ndarray) -> np.ndarray:
    """The joints with neighbouring long fingers pushed apart where they interpenetrate.

    On malformed hands MediaPipe often lays two finger chains over each other (e.g. index and middle on the one
    finger the image shows); a mesh of them would show four fingers, and the ControlNet would paint four. At each
    joint level (PIP, DIP, tip) two neighbours closer than the sum of their radii are pushed apart, each by half,
    moving the rest of the finger with the joint: along the line between them, or, where they nearly coincide,
    sideways in the knuckles' order; to touching, or, where one lies on the other, to a small gap. Fingers that
    touch, or pass in front of each other, are left alone.
    """
    joints = joints.copy()
    size = palm_length(joints)
    fingers = [chain for chain, _ in FINGER_CHAINS[1:]]
    radii = [r for _, r in FINGER_CHAINS[1:]]
    for level in (1, 2, 3):
        for _ in range(2):  # pushing one pair apart can press the next pair together
            for f in range(len(fingers) - 1):
                a, b = fingers[f], fingers[f + 1]
                touching = (radii[f][level] + radii[f + 1][level]) * size
                delta = joints[b[level]] - joints[a[level]]
                distance = float(np.linalg.norm(delta))
                if distance >= touching:
                    continue
                # Chains lying on each other: the landmarks say nothing about the gap, so leave a visible one.
                need = touching * (OVERLAP_GAP if distance < 0.5 * touching else 1.0)
                if distance > 0.3 * touching:
                    direction = delta / distance
                else:
                    direction = _sideways(joints, a, b)
                along = float(np.dot(delta, direction))
                # Move by s along `direction` so that |delta + s·direction| = need.
                s = -along + np.sqrt(along * along + need * need - distance * distance)
                joints[list(a[level:])] -= 0.5 * s * direction
                joints[list(b[level:])] += 0.5 * s * direction
    return joints


def _sideways(joints: np.ndarray, a: Tuple[int, ...], b: Tuple[int, ...]) -> np.ndarray:
    """Unit vector from finger a's knuckle towards finger b's, across finger a's first phalanx."""
    along = _unit(joints[a[1]] - joints[a[0]], (0.0, -1.0, 0.0))
    side = joints[b[0]] - joints[a[0]]
    side = side - np.dot(side, along) * along
    return _unit(side, _unit(np.cross(along, (0.0, 0.0, 1.0)), (1.0, 0.0, 0.0)))


Sphere = Tuple[np.ndarray, float]


def hand_parts(joints: np.ndarray) -> List[List[Sphere]]:
    """The hand's convex parts, each a list of (centre, radius) spheres whose convex hull is the part."""
    size = palm_length(joints)
    axis, across = _palm_frame(joints)
    parts: List[List[Sphere]] = []
    for chain, radii in FINGER_CHAINS:
        centres = [joints[i] for i in chain]
        centres[-1] = _behind_tip(joints[chain[-1]], joints[chain[-2]], radii[-1] * size)
        for k in range(len(chain) - 1):
            parts.append([(centres[k], radii[k] * size), (centres[k + 1], radii[k + 1] * size)])
    wrist = joints[WRIST]
    forearm = wrist - FOREARM_LENGTH * size * axis
    parts.append([(joints[i], r * size) for i, r in KNUCKLE_RADII.items()] + [
        (wrist + WRIST_HALF_WIDTH * size * across, WRIST_RADIUS * size),
        (wrist - WRIST_HALF_WIDTH * size * across, WRIST_RADIUS * size),
        (forearm + FOREARM_HALF_WIDTH * size * across, FOREARM_RADIUS * size),
        (forearm - FOREARM_HALF_WIDTH * size * across, FOREARM_RADIUS * size),
    ])
    cmc_r, wrist_r, palm_r = THENAR_RADII
    parts.append([
        (joints[THUMB_CMC], cmc_r * size),
        (joints[THUMB_MCP], FINGER_CHAINS[0][1][0] * size),
        (wrist + WRIST_HALF_WIDTH * size * across, wrist_r * size),
        (wrist + 0.4 * (joints[INDEX_MCP] - wrist), palm_r * size),
    ])
    return parts


def _unit(v: np.ndarray, fallback: Sequence[float]) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-6 else np.asarray(fallback, dtype=np.float64)


def _palm_frame(joints: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the palm (wrist → middle knuckle) and across it (towards the index/thumb side)."""
    axis = _unit(joints[MIDDLE_MCP] - joints[WRIST], (0.0, -1.0, 0.0))
    across = joints[INDEX_MCP] - joints[PINKY_MCP]
    across = across - np.dot(across, axis) * axis
    fallback = np.cross(axis, (0.0, 0.0, 1.0))
    return axis, _unit(across, _unit(fallback, (1.0, 0.0, 0.0)))


def _behind_tip(tip: np.ndarray, previous: np.ndarray, radius: float) -> np.ndarray:
    """The centre of the fingertip's sphere: most of a radius back from the tip landmark along the last phalanx
    (but not past the previous joint), so the rounded fingertip ends just past the landmark (which MediaPipe puts
    at the very tip) and the landmark's pixel is on the hand."""
    segment = tip - previous
    length = float(np.linalg.norm(segment))
    if length < 1e-6:
        return tip.copy()
    return tip - segment / length * min(TIP_BACK_OFF * radius, length)


@lru_cache(maxsize=4)
def _unit_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread points on the unit sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _hull_of_spheres(spheres: List[Sphere]) -> Tuple[np.ndarray, np.ndarray]:
    """The convex hull of sampled spheres as a closed mesh with outward-facing (counter-clockwise) triangles."""
    unit = _unit_sphere(SPHERE_POINTS)
    points = np.concatenate([centre + radius * unit for centre, radius in spheres])
    hull = ConvexHull(points)
    faces = hull.simplices.copy()
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), hull.equations[:, :3]) < 0
    faces[inward] = faces[inward][:, ::-1]
    used = np.unique(faces)
    remap = np.full(len(points), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return points[used], remap[faces]


def _tapered_capsule(c0: np.ndarray, r0: float, c1: np.ndarray, r1: float) -> Tuple[np.ndarray, np.ndarray]:
    """The convex hull of two spheres (a cone frustum tangent to both, with spherical ends) as a closed mesh with
    outward (counter-clockwise) triangles: rings of CAPSULE_SIDES vertices from the pole of sphere 0 to the pole of
    sphere 1. Where one sphere holds the other, the larger sphere."""
    axis = c1 - c0
    length = float(np.linalg.norm(axis))
    if length <= abs(r0 - r1) + 1e-6:
        centre, radius = (c0, r0) if r0 >= r1 else (c1, r1)
        u = np.array([0.0, 0.0, 1.0])
        latitudes = np.linspace(-np.pi / 2, np.pi / 2, 2 * CAPSULE_CAP_RINGS + 1)[1:-1]
        rings = [(centre, radius, t) for t in latitudes]
        poles = (centre - radius * u, centre + radius * u)
    else:
        u = axis / length
        # The tangent cone touches both spheres at latitude alpha (measured towards sphere 1).
        alpha = float(np.arcsin((r0 - r1) / length))
        rings = ([(c0, r0, t) for t in np.linspace(-np.pi / 2, alpha, CAPSULE_CAP_RINGS + 1)[1:]]
                 + [(c1, r1, t) for t in np.linspace(alpha, np.pi / 2, CAPSULE_CAP_RINGS + 1)[:-1]])
        poles = (c0 - r0 * u, c1 + r1 * u)
    e1 = _unit(np.cross(u, (0.0, 0.0, 1.0)), _unit(np.cross(u, (1.0, 0.0, 0.0)), (0.0, 1.0, 0.0)))
    e2 = np.cross(u, e1)  # (e1, e2, u) right-handed: the angle phi turns counter-clockwise about u
    phi = 2.0 * np.pi * np.arange(CAPSULE_SIDES) / CAPSULE_SIDES
    around = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    ring_points = [c + r * (np.cos(t) * around + np.sin(t) * u) for c, r, t in rings]
    vertices = np.concatenate(ring_points + [np.stack(poles)])
    n, k = len(rings), CAPSULE_SIDES
    ring = np.arange(n * k).reshape(n, k)
    nxt = np.roll(ring, -1, axis=1)
    a, b, c, d = ring[:-1], nxt[:-1], nxt[1:], ring[1:]
    bands = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    bottom, top = n * k, n * k + 1
    bottom_fan = np.stack([np.full(k, bottom), nxt[0], ring[0]], -1)
    top_fan = np.stack([np.full(k, top), ring[-1], nxt[-1]], -1)
    return vertices, np.concatenate([bands, bottom_fan, top_fan])


def _concatenate(parts: List[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([f + o for (_, f), o in zip(parts, offsets)]))
