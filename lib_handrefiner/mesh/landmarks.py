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
    parts = hand_parts(joints)
    capsules = iter(_tapered_capsules([spheres for spheres in parts if len(spheres) == 2]))
    vertices, faces = _concatenate([next(capsules) if len(spheres) == 2 else _hull_of_spheres(spheres)
                                    for spheres in parts])
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


def _tapered_capsules(pairs: Sequence[Tuple[Sphere, Sphere]]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Each pair of spheres' convex hull (a cone frustum tangent to both, with spherical ends) as a closed mesh with
    outward (counter-clockwise) triangles: rings of CAPSULE_SIDES vertices from the pole of sphere 0 to the pole of
    sphere 1; where one sphere holds the other, the larger sphere. All pairs at once (a hand has 14 and one
    capsule at a time cost ~9 ms of numpy overhead per hand)."""
    c0, c1 = (np.array([pair[k][0] for pair in pairs], dtype=np.float64).reshape(-1, 3) for k in (0, 1))
    r0, r1 = (np.array([pair[k][1] for pair in pairs], dtype=np.float64) for k in (0, 1))
    length = np.linalg.norm(c1 - c0, axis=1)
    held = length <= np.abs(r0 - r1) + 1e-6
    meshes: List[Optional[Tuple[np.ndarray, np.ndarray]]] = [None] * len(pairs)
    for i in np.flatnonzero(held):
        meshes[i] = _sphere(c0[i], r0[i]) if r0[i] >= r1[i] else _sphere(c1[i], r1[i])
    tapered = np.flatnonzero(~held)
    if len(tapered):
        c0, c1, r0, r1, length = c0[tapered], c1[tapered], r0[tapered], r1[tapered], length[tapered]
        u = (c1 - c0) / length[:, None]
        # The tangent cone touches both spheres at latitude alpha (measured towards sphere 1).
        alpha = np.arcsin((r0 - r1) / length)[:, None]
        steps = np.arange(1, CAPSULE_CAP_RINGS + 1) / CAPSULE_CAP_RINGS
        latitudes = np.concatenate([-np.pi / 2 + (alpha + np.pi / 2) * steps,
                                    alpha + (np.pi / 2 - alpha) * (steps - steps[0])], axis=1)
        sphere_of_ring = np.repeat([0, 1], CAPSULE_CAP_RINGS)
        centres = np.where(sphere_of_ring[None, :, None] == 0, c0[:, None], c1[:, None])
        radii = np.where(sphere_of_ring[None, :] == 0, r0[:, None], r1[:, None])
        rings = _rings(centres, radii, latitudes, u)
        poles = np.stack([c0 - r0[:, None] * u, c1 + r1[:, None] * u], axis=1)
        vertices = np.concatenate([rings, poles], axis=1)
        faces = _ring_faces(2 * CAPSULE_CAP_RINGS, CAPSULE_SIDES)
        for k, i in enumerate(tapered):
            meshes[i] = (vertices[k], faces)
    return meshes


def _sphere(centre: np.ndarray, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """A sphere as a closed mesh of the capsules' kind (rings about z from pole to pole)."""
    u = np.array([[0.0, 0.0, 1.0]])
    latitudes = np.linspace(-np.pi / 2, np.pi / 2, 2 * CAPSULE_CAP_RINGS + 1)[None, 1:-1]
    rings = _rings(np.broadcast_to(centre, (1, latitudes.shape[1], 3)), np.full(latitudes.shape, radius),
                   latitudes, u)[0]
    poles = np.stack([centre - radius * u[0], centre + radius * u[0]])
    return np.concatenate([rings, poles]), _ring_faces(latitudes.shape[1], CAPSULE_SIDES)


def _rings(centres: np.ndarray, radii: np.ndarray, latitudes: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(m, n·CAPSULE_SIDES, 3): for each of m axes `u` (m, 3), n rings of CAPSULE_SIDES points at the given
    latitudes (m, n) of spheres (centres (m, n, 3), radii (m, n)), turning counter-clockwise about u."""
    e1 = np.cross(u, (0.0, 0.0, 1.0))
    along_z = np.linalg.norm(e1, axis=1) <= 1e-6
    e1[along_z] = np.cross(u[along_z], (1.0, 0.0, 0.0))
    norms = np.linalg.norm(e1, axis=1)
    e1 = np.where(norms[:, None] > 1e-6, e1 / np.maximum(norms, 1e-12)[:, None], (0.0, 1.0, 0.0))
    e2 = np.cross(u, e1)  # (e1, e2, u) right-handed
    phi = 2.0 * np.pi * np.arange(CAPSULE_SIDES) / CAPSULE_SIDES
    around = np.cos(phi)[None, :, None] * e1[:, None] + np.sin(phi)[None, :, None] * e2[:, None]  # (m, k, 3)
    direction = (np.cos(latitudes)[:, :, None, None] * around[:, None]
                 + np.sin(latitudes)[:, :, None, None] * u[:, None, None])  # (m, n, k, 3)
    points = centres[:, :, None] + radii[:, :, None, None] * direction
    return points.reshape(len(u), -1, 3)


@lru_cache(maxsize=4)
def _ring_faces(n: int, k: int) -> np.ndarray:
    """Triangles of n rings of k vertices (ring by ring) closed by two poles after them (bottom, then top)."""
    ring = np.arange(n * k).reshape(n, k)
    nxt = np.roll(ring, -1, axis=1)
    a, b, c, d = ring[:-1], nxt[:-1], nxt[1:], ring[1:]
    bands = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    bottom, top = n * k, n * k + 1
    bottom_fan = np.stack([np.full(k, bottom), nxt[0], ring[0]], -1)
    top_fan = np.stack([np.full(k, top), ring[-1], nxt[-1]], -1)
    faces = np.concatenate([bands, bottom_fan, top_fan])
    faces.setflags(write=False)
    return faces


def _concatenate(parts: List[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([f + o for (_, f), o in zip(parts, offsets)]))
