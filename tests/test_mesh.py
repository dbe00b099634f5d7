"""The landmark mesh: watertight parts, five fingers, proportions that follow the hand, aligned with the
landmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from lib_handrefiner.detection import detect_hands, make_hand
from lib_handrefiner.imageio import load_image
from lib_handrefiner.mesh import HandMesh, MeshModelError, get_mesh_model, mesh_model_names, transform_mesh
from lib_handrefiner.mesh.landmarks import (
    FINGER_CHAINS,
    FINGERTIPS,
    hand_parts,
    landmark_mesh,
    palm_length,
    separate_fingers,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def flat_hand(scale: float = 1.0) -> np.ndarray:
    """A right hand, palm to the camera, fingers up and spread, z = 0: knuckles 80 px above the wrist."""
    lm = np.zeros((21, 3), np.float32)
    lm[0] = [100, 200, 0]
    lm[1:5] = [[130, 185, 0], [150, 160, 0], [165, 140, 0], [178, 122, 0]]
    for k, (x, angle) in enumerate([(125, 20), (105, 7), (85, -7), (65, -20)]):
        direction = np.array([np.sin(np.radians(angle)), -np.cos(np.radians(angle)), 0.0])
        length = [1.0, 1.1, 1.0, 0.8][k]
        for j, along in enumerate([0, 38, 62, 80]):
            lm[5 + 4 * k + j] = np.array([x, 120, 0]) + along * length * direction
    return lm * scale


@pytest.fixture(scope="module")
def example_hands():
    return {p.stem: (load_image(p), detect_hands(load_image(p))[0]) for p in sorted(EXAMPLES.glob("*.jpg"))}


def _components(mesh: HandMesh):
    o3d_mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices.astype(np.float64)),
                                         o3d.utility.Vector3iVector(mesh.faces))
    labels, _, _ = o3d_mesh.cluster_connected_triangles()
    labels = np.asarray(labels)
    for label in np.unique(labels):
        part = o3d.geometry.TriangleMesh(o3d_mesh)
        part.remove_triangles_by_mask(labels != label)
        part.remove_unreferenced_vertices()
        yield part


def _assert_closed_and_outward(mesh: HandMesh, n_parts: int = 16):
    parts = list(_components(mesh))
    assert len(parts) == n_parts  # 14 finger phalanx capsules + palm + thenar
    for part in parts:
        assert part.is_watertight() and part.is_orientable()
        assert part.get_volume() > 0
        # Outward orientation: signed volume from the triangle winding is positive.
        v, f = np.asarray(part.vertices), np.asarray(part.triangles)
        signed = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
        assert signed > 0


def test_registry():
    assert "landmarks" in mesh_model_names()
    assert get_mesh_model("landmarks").name == "landmarks"
    with pytest.raises(MeshModelError, match="available: auto, landmarks, graphormer"):
        get_mesh_model("nope")


def test_flat_hand_mesh_is_closed_and_sized():
    lm = flat_hand()
    mesh = landmark_mesh(lm)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.model == "landmarks"
    assert 1000 <= len(mesh.faces) <= 3500
    _assert_closed_and_outward(mesh)
    np.testing.assert_array_equal(mesh.joints, lm)
    size = palm_length(lm.astype(np.float64))
    assert np.linalg.norm(lm[0] - lm[9]) <= size <= 1.35 * np.linalg.norm(lm[0] - lm[9])
    # A thick hand, not a sheet or sticks: depth extent ~ a palm thickness (>= 0.2 palm lengths).
    assert np.ptp(mesh.vertices[:, 2]) > 0.2 * size


def test_fingertips_end_at_the_tip_landmarks():
    lm = flat_hand()
    mesh = landmark_mesh(lm)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    distances = scene.compute_distance(o3d.core.Tensor(lm[list(FINGERTIPS)])).numpy()
    assert np.all(distances < 0.03 * palm_length(lm.astype(np.float64)))
    # No finger grows past its tip by more than a fifth of its radius (fingers point up, -y).
    assert mesh.vertices[:, 1].min() >= lm[12, 1] - 0.2 * 0.09 * palm_length(lm.astype(np.float64)) - 0.5


def test_five_fingers_visible_in_a_row_across_the_fingers():
    from lib_handrefiner.depth import render_depth

    depth = render_depth([landmark_mesh(flat_hand())], 260, 260).depth
    runs = lambda row: np.flatnonzero(np.diff(np.r_[0, row > 0].astype(int)) == 1).size  # noqa: E731
    assert runs(depth[70]) == 4  # the four fingers, apart, above the knuckles
    assert runs(depth[130]) == 2  # the palm and the thumb beside it
    assert runs(depth[185]) == 1  # the palm and the thenar joined


def test_widths_scale_with_the_hand():
    small, big = landmark_mesh(flat_hand(1.0)), landmark_mesh(flat_hand(2.5))
    np.testing.assert_allclose(big.vertices, small.vertices * 2.5, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_always_five_fingers_and_closed_even_for_odd_landmarks(seed):
    rng = np.random.default_rng(seed)
    lm = (flat_hand() + rng.normal(0, 25, (21, 3))).astype(np.float32)
    _assert_closed_and_outward(landmark_mesh(lm))
    assert len(hand_parts(lm.astype(np.float64))) == 16


def test_degenerate_landmarks_still_give_a_closed_hand():
    lm = np.tile(np.array([[50.0, 50.0, 0.0]], np.float32), (21, 1))
    _assert_closed_and_outward(landmark_mesh(lm))


def test_a_phalanx_of_no_length_is_its_larger_joint_sphere_among_tapered_ones():
    # The 14 capsules are built together: a zero-length phalanx (index MCP on its PIP) becomes a sphere while
    # the other 13 stay tapered capsules, each still closed and outward.
    lm = flat_hand()
    lm[6] = lm[5]
    mesh = landmark_mesh(lm)
    _assert_closed_and_outward(mesh)
    joints = separate_fingers(lm.astype(np.float64))
    radius = FINGER_CHAINS[1][1][0] * palm_length(joints)
    near = np.linalg.norm(mesh.vertices - joints[5], axis=1)
    on_sphere = np.abs(near - radius) < 1e-3 * radius
    assert on_sphere.sum() >= 5 * 14 + 2  # the sphere's 5 rings and 2 poles


def test_example_meshes_align_with_their_landmarks(example_hands):
    from lib_handrefiner.depth import render_depth

    model = get_mesh_model()
    for name, (rgb, hand) in example_hands.items():
        mesh = model.fit(hand, rgb)
        _assert_closed_and_outward(mesh)
        # Joints are the landmarks, but for overlapping fingers pushed apart by a few pixels.
        assert np.abs(mesh.joints - hand.landmarks).max() < 0.08 * hand.size, name
        h, w = rgb.shape[:2]
        depth = render_depth([mesh], w, h).depth
        xy = np.floor(mesh.joints[:, :2]).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        assert np.all(depth[xy[inside, 1], xy[inside, 0]] > 0), name  # every joint is on the silhouette
        # The silhouette hugs the landmarks: its box is the keypoint box grown by at most ~half a palm length.
        ys, xs = np.nonzero(depth)
        x0, y0, x1, y1 = hand.keypoint_box
        grow = 0.5 * palm_length(hand.landmarks.astype(np.float64))
        assert xs.min() >= x0 - grow and xs.max() <= x1 + grow and ys.min() >= y0 - grow, name


def test_transform_mesh_into_a_crop():
    mesh = landmark_mesh(flat_hand())
    moved = transform_mesh(mesh, 2.0, (50.0, 20.0))
    np.testing.assert_allclose(moved.vertices, (mesh.vertices - [50, 20, 0]) * 2, rtol=1e-6)
    np.testing.assert_allclose(moved.joints, (mesh.joints - [50, 20, 0]) * 2, rtol=1e-6)
    assert moved.faces is mesh.faces


def test_fit_uses_the_hand_landmarks():
    hand = make_hand("right", 0.9, flat_hand(), np.zeros((21, 3)))
    mesh = get_mesh_model().fit(hand, np.zeros((260, 260, 3), np.uint8))
    np.testing.assert_array_equal(mesh.joints, hand.landmarks)


def test_fingers_lying_on_each_other_are_pushed_apart():
    lm = flat_hand().astype(np.float64)
    lm[[10, 11, 12]] = lm[[6, 7, 8]] + [1.0, 0.0, 0.0]  # the middle finger drawn over the index finger
    separated = separate_fingers(lm)
    size = palm_length(lm)
    levels = ((6, 10, 0.108 + 0.113), (7, 11, 0.097 + 0.100), (8, 12, 0.086 + 0.090))  # PIP, DIP, tip radii
    for index_joint, middle_joint, radii_sum in levels:
        gap = np.linalg.norm(separated[middle_joint] - separated[index_joint])
        assert gap >= radii_sum * size * 0.999
        # Pushed sideways in the knuckles' order: the middle finger ends up on the pinky side (smaller x here).
        assert separated[middle_joint, 0] < separated[index_joint, 0]
    np.testing.assert_array_equal(separated[[0, 1, 2, 3, 4, 5, 9, 13, 17]], lm[[0, 1, 2, 3, 4, 5, 9, 13, 17]])
    mesh = landmark_mesh(lm)
    np.testing.assert_allclose(mesh.joints, separated, atol=1e-4)
    _assert_closed_and_outward(mesh)


def test_apart_fingers_keep_their_landmarks():
    lm = flat_hand().astype(np.float64)
    np.testing.assert_array_equal(separate_fingers(lm), lm)
