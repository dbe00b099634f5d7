"""`GraphormerMeshModel`: a hand's mesh from Mesh Graphormer, exactly as HandRefiner's official preprocessor
(preprocessor/meshgraphormer.py, get_depth and run_inference) makes and renders it.

Per hand, from MediaPipe's landmarks:
1. the keypoint extrema as whole pixels (int() of landmark × size), the centre (x_c, y_c) = ((min + max) // 2),
   the crop side L = (1.6 × the longer extent) // 2 × 2, the crop [x_c − L/2 + 1, x_c + L/2] (both ends
   included) of the image zero-padded by half its size on each side (beyond that also zero, where the official
   code would cut the crop short);
2. a left hand mirrored (MANO is a right hand); the crop resized to 224² (bicubic when L < 224, area otherwise)
   in float64, then to uint8 (truncated; values the bicubic overshoot puts outside 0…255 are clipped, where the
   official cast wraps them around: the one deliberate difference), ImageNet-normalised;
3. the network: camera (s, tx, ty) and 778 vertices; the perspective camera with focal length 1000 · L/224 px at
   (−tx, −ty, −2f/(L·s + 1e-9)), principal point the crop's centre, one ray per pixel centre of the L × L crop
   (`PerspectiveView`, cast by depth.py), hits on back faces discarded, depth normalised over this hand;
4. for a left hand the depth is the mirrored render's, mirrored back: here the mesh (and camera) are mirrored
   about the camera's x, with the faces' winding reversed, which casts the same rays into the same geometry;
5. the 21 joints (MANO's regressor plus five fingertip vertices) projected with the same camera, for adaptive
   MPJPE; hands are pasted in decreasing MediaPipe z of the middle knuckle (landmark 9), nearer ones last.

The HandMesh's vertices and joints are these projections in image pixels, z = (depth − the wrist's) in pixels
at the wrist's depth, so everything that reads a mesh's 2D projection keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from lib_handrefiner.detection import Hand
from lib_handrefiner.masking import keypoint_extrema
from lib_handrefiner.mesh import HandMesh, ModelsDir, PerspectiveView
from lib_handrefiner.mesh.graphormer import files, mano
from lib_handrefiner.mesh.graphormer.network import INPUT_SIZE, GraphormerHandNetwork

NAME = "graphormer"
CROP_FACTOR = 1.6
FOCAL_AT_224 = 1000.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PASTE_ORDER_LANDMARK = 9  # the middle finger's knuckle: the official code sorts hands by its MediaPipe z


@dataclass(frozen=True)
class Crop:
    """A hand's square crop: its top-left pixel in the image and its side L (even)."""
    x0: int
    y0: int
    side: int


def official_crop(landmarks: np.ndarray) -> Crop:
    x_min, y_min, x_max, y_max = keypoint_extrema(landmarks)
    x_c, y_c = (x_min + x_max) // 2, (y_min + y_max) // 2
    side = int(max(x_max - x_min, y_max - y_min) * CROP_FACTOR // 2 * 2)
    side = max(side, 2)  # a hand of one pixel (the official code would fail on an empty crop)
    return Crop(x0=x_c - side // 2 + 1, y0=y_c - side // 2 + 1, side=side)


def network_input(rgb: np.ndarray, crop: Crop, mirror: bool) -> np.ndarray:
    """The (224, 224, 3) uint8 image the network sees: the crop (zero outside the image), mirrored for a left
    hand, resized as the official code resizes it (float64, bicubic up / area down, truncated to uint8)."""
    import cv2

    height, width = rgb.shape[:2]
    canvas = np.zeros((crop.side, crop.side, 3), dtype=np.float64)
    ix0, iy0 = max(crop.x0, 0), max(crop.y0, 0)
    ix1, iy1 = min(crop.x0 + crop.side, width), min(crop.y0 + crop.side, height)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0 - crop.y0:iy1 - crop.y0, ix0 - crop.x0:ix1 - crop.x0] = rgb[iy0:iy1, ix0:ix1, :3]
    if mirror:
        canvas = canvas[:, ::-1]
    interpolation = cv2.INTER_CUBIC if crop.side < INPUT_SIZE else cv2.INTER_AREA
    resized = cv2.resize(np.ascontiguousarray(canvas), (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
    return np.clip(resized, 0, 255).astype(np.uint8)


def official_camera(cam: np.ndarray, side: int) -> Tuple[float, np.ndarray]:
    """(focal length px, camera position in the mesh's frame) from the predicted (s, tx, ty), in the official
    code's float32 arithmetic."""
    focal = FOCAL_AT_224 * (side / INPUT_SIZE)
    s, tx, ty = (np.float32(c) for c in cam)
    tz = np.float32(-2 * focal) / (np.float32(side) * s + np.float32(1e-9))
    return focal, np.array([-tx, -ty, tz], dtype=np.float32).astype(np.float64)


def _project(points: np.ndarray, origin: np.ndarray, focal: float, principal: Tuple[float, float],
             reference_z: float) -> np.ndarray:
    """Image pixels (u, v) and z in pixels at `reference_z`'s scale, relative to it."""
    q = points - origin
    z = np.maximum(q[:, 2], 1e-6)  # points behind the camera (an untrained network) stay finite
    u = q[:, 0] / z * focal + principal[0]
    v = q[:, 1] / z * focal + principal[1]
    depth = (q[:, 2] - reference_z) * focal / max(reference_z, 1e-6)
    return np.stack([u, v, depth], axis=1).astype(np.float32)


def hand_mesh(camera: np.ndarray, vertices: np.ndarray, faces: np.ndarray, joint_regressor: np.ndarray, crop: Crop,
              mirror: bool, order: float) -> HandMesh:
    """The HandMesh of the network's output for one crop: camera (s, tx, ty), vertices (778, 3) in the network's
    frame, MANO's faces and (21, 778) joint regressor."""
    focal, origin = official_camera(camera, crop.side)
    vertices = np.asarray(vertices, dtype=np.float64)
    if mirror:
        vertices = vertices * np.array([-1.0, 1.0, 1.0]) + np.array([2.0 * origin[0], 0.0, 0.0])
        faces = faces[:, ::-1]
    joints = joint_regressor @ vertices
    principal = (crop.x0 + crop.side / 2.0, crop.y0 + crop.side / 2.0)
    wrist_z = float(joints[mano.WRIST, 2] - origin[2])
    view = PerspectiveView(vertices=vertices, origin=origin, focal=focal, principal=principal,
                           window=(crop.x0, crop.y0, crop.x0 + crop.side, crop.y0 + crop.side), order=order)
    return HandMesh(vertices=_project(vertices, origin, focal, principal, wrist_z),
                    faces=np.ascontiguousarray(faces, dtype=np.int32),
                    joints=_project(joints, origin, focal, principal, wrist_z), model=NAME, view=view)


class GraphormerMeshModel(torch.nn.Module):
    """Mesh Graphormer with the MANO data it needs; `fit(hand, rgb)` gives the HandMesh of one hand. A Module,
    so that `.to(device)` moves the network (it runs in the dtype it was loaded with)."""

    name = NAME
    # The adaptive pose check fits the refined image at the original hand's crop, as the official eval_mpjpe does.
    refits_original_crop = True

    def __init__(self, network: GraphormerHandNetwork, mano_model: mano.Mano, sampling: mano.MeshSampling) -> None:
        super().__init__()
        self.network = network.eval()
        joints, vertices_sub, _ = mano.template(mano_model, sampling)
        self.register_buffer("template_joints", torch.from_numpy(joints), persistent=False)
        self.register_buffer("template_vertices_sub", torch.from_numpy(vertices_sub), persistent=False)
        self.joint_regressor = mano.mesh_joint_regressor(mano_model).astype(np.float64)
        self.faces = mano_model.faces
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean[:, None, None], persistent=False)
        self.register_buffer("std", std[:, None, None], persistent=False)

    @property
    def device(self) -> torch.device:
        return self.template_joints.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(B, 224, 224, 3) uint8 RGB → cameras (B, 3) and vertices (B, 778, 3), float32 on the CPU."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = ((x - self.mean) / self.std).to(self.dtype)
        camera, _, _, vertices = self.network(x, self.template_joints, self.template_vertices_sub)
        return camera.float().cpu().numpy(), vertices.float().cpu().numpy()

    def fit(self, hand: Hand, rgb: np.ndarray, box: Optional[Sequence[float]] = None) -> HandMesh:
        """The mesh of the hand in the official crop around its landmarks, or around `box` (a user's box the
        landmark model alone found the hand in: the network then reads the hand from the crop, as in the paper)."""
        corners = None if box is None else np.array([[box[0], box[1], 0.0], [box[2], box[3], 0.0]])
        crop = official_crop(hand.landmarks if corners is None else corners)
        mirror = hand.handedness == "left"
        cameras, vertices = self.predict(network_input(rgb, crop, mirror)[None])
        return hand_mesh(cameras[0], vertices[0], self.faces, self.joint_regressor, crop, mirror,
                         order=float(hand.landmarks[PASTE_ORDER_LANDMARK, 2]))


def load_graphormer(models_dir: ModelsDir = None, device: str | torch.device = "cpu",
                    dtype: Optional[torch.dtype] = None) -> GraphormerMeshModel:
    """The mesh model from the three files in the models folder(s) (see files.search_folders); one
    GraphormerFileError naming every missing file, or the first wrong one."""
    folders = files.search_folders(models_dir)
    found = files.find_files(folders)
    missing = [name for name in files.FILE_NAMES if name not in found]
    if missing:
        raise files.GraphormerFileError(files.missing_message(missing, folders))
    mano_model = files.read_mano(found[files.MANO_MODEL.name])
    sampling = files.read_sampling(found[files.SAMPLING.name])
    network = load_network(found[files.NETWORK.name], sampling)
    return GraphormerMeshModel(network, mano_model, sampling).to(device=device, dtype=dtype or torch.float32)


def load_network(path, sampling: mano.MeshSampling) -> GraphormerHandNetwork:
    """The released network: built on the meta device (no memory, no random init), the file's tensors assigned."""
    state = files.read_network_state(path)
    with torch.device("meta"):
        network = GraphormerHandNetwork()
    files.check_state_keys(state, {k: v.shape for k, v in network.state_dict().items()}, path)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                            strict=True, assign=True)
    network.set_adjacency(mano.graph_adjacency(sampling.sub_adjacency))
    network.drop_unused()
    return network.eval()
