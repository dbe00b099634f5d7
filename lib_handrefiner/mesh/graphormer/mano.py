"""The MANO hand model as Mesh Graphormer uses it: the template the network starts from, the mesh adjacency of
its graph convolution, the joint regressor of its 2D joints.

- `template(mano, sampling)`: MANO's right hand in its mean pose (manopth's ManoLayer with zero pose
  coefficients, zero shape and flat_hand_mean=False, i.e. the pose `hands_mean`), 21 joints (16 skeleton joints
  plus five fingertip vertices, in MediaPipe's order) and the 195 sub-sampled vertices, wrist-centred, metres.
- `graph_adjacency(a)`: the row-normalised adjacency with self-loops of the 195-vertex mesh (as the official code
  builds mano_195_adjmat_*.pt from mano_downsampling.npz's A[1]).
- `mesh_joint_regressor(mano)`: (21, 778), the joints of a predicted mesh (MeshGraphormer's MANO.get_3d_joints).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

NUM_VERTICES = 778
NUM_FACES = 1538
NUM_SKELETON_JOINTS = 16
NUM_SUB_VERTICES = 195
WRIST = 0
# MANO's 16 skeleton joints + 5 fingertips (appended as joints 16–20) → MediaPipe's 21-joint order (wrist, then
# thumb, index, middle, ring, little finger, base to tip).
TO_MEDIAPIPE_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# Fingertip vertices (thumb, index, middle, ring, little). manopth's layer takes the middle tip at 444 for the
# template; MeshGraphormer's joint regressor for predicted meshes takes 445. Both are kept as the originals have
# them: the template is what the network was trained with, the regressor is what HandRefiner's 2D joints use.
TEMPLATE_TIPS = (745, 317, 444, 556, 673)
REGRESSOR_TIPS = (745, 317, 445, 556, 673)


@dataclass(frozen=True)
class Mano:
    """The parts of MANO_RIGHT.pkl the hand network needs (float64, metres)."""
    v_template: np.ndarray   # (778, 3)
    faces: np.ndarray        # (1538, 3) int32
    J_regressor: np.ndarray  # (16, 778)
    weights: np.ndarray      # (778, 16) linear blend skinning weights
    posedirs: np.ndarray     # (778, 3, 135) pose blend shapes
    hands_mean: np.ndarray   # (45,) the mean pose, axis-angle per joint 1–15
    parents: Tuple[int, ...]  # (16,) kinematic tree, -1 for the root


@dataclass(frozen=True)
class MeshSampling:
    """The parts of mano_downsampling.npz the network needs."""
    downsample: np.ndarray     # (195, 778): D[0]
    sub_adjacency: np.ndarray  # (195, 195) 0/1: A[1]


def rodrigues(axis_angles: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle vectors → (N, 3, 3) rotation matrices."""
    angle = np.linalg.norm(axis_angles, axis=1, keepdims=True)
    axis = axis_angles / np.maximum(angle, 1e-12)
    x, y, z = axis.T
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=1).reshape(-1, 3, 3)
    s, c = np.sin(angle)[:, :, None], np.cos(angle)[:, :, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def posed_hand(mano: Mano, pose: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices (778, 3) and skeleton joints (16, 3) of MANO at zero shape in `pose` ((16, 3) axis-angle, root
    first): pose blend shapes, then linear blend skinning along the kinematic tree."""
    rotations = rodrigues(pose)
    pose_feature = (rotations[1:] - np.eye(3)).reshape(-1)
    v_posed = mano.v_template + mano.posedirs @ pose_feature
    rest_joints = mano.J_regressor @ mano.v_template
    transforms = np.zeros((NUM_SKELETON_JOINTS, 4, 4))
    for k, parent in enumerate(mano.parents):
        local = np.eye(4)
        local[:3, :3] = rotations[k]
        local[:3, 3] = rest_joints[k] - (rest_joints[parent] if parent >= 0 else 0.0)
        transforms[k] = local if parent < 0 else transforms[parent] @ local
    joints = transforms[:, :3, 3].copy()
    # Skinning transforms act on rest-pose coordinates: remove each joint's rest position first.
    skinning = transforms.copy()
    skinning[:, :3, 3] -= np.einsum("kij,kj->ki", transforms[:, :3, :3], rest_joints)
    blended = np.einsum("vk,kij->vij", mano.weights, skinning)
    vertices = np.einsum("vij,vj->vi", blended[:, :3, :3], v_posed) + blended[:, :3, 3]
    return vertices, joints


def template(mano: Mano, sampling: MeshSampling) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(joints (21, 3), sub-sampled vertices (195, 3), vertices (778, 3)) of MANO's mean-pose right hand,
    wrist-centred, metres, float32: the template Graphormer_Hand_Network.forward builds."""
    pose = np.concatenate([np.zeros(3), mano.hands_mean]).reshape(NUM_SKELETON_JOINTS, 3)
    vertices, skeleton = posed_hand(mano, pose)
    joints = np.concatenate([skeleton, vertices[list(TEMPLATE_TIPS)]])[list(TO_MEDIAPIPE_ORDER)]
    root = joints[WRIST]
    sub = sampling.downsample @ vertices
    return tuple((a - root).astype(np.float32) for a in (joints, sub, vertices))


def mesh_joint_regressor(mano: Mano) -> np.ndarray:
    """(21, 778) float32: MANO's joint regressor plus one-hot fingertips, in MediaPipe's order."""
    tips = np.zeros((len(REGRESSOR_TIPS), NUM_VERTICES))
    tips[np.arange(len(REGRESSOR_TIPS)), list(REGRESSOR_TIPS)] = 1.0
    return np.concatenate([mano.J_regressor, tips])[list(TO_MEDIAPIPE_ORDER)].astype(np.float32)


def graph_adjacency(adjacency: np.ndarray) -> torch.Tensor:
    """Row-normalised (A + I) of a 0/1 vertex adjacency (any non-zero counts as an edge), float32 dense."""
    a = (np.asarray(adjacency) != 0).astype(np.float64)
    np.fill_diagonal(a, 1.0)
    return torch.from_numpy(a / a.sum(axis=1, keepdims=True)).float()
