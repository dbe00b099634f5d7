"""Deterministic stand-ins for Mesh Graphormer's weights (no real weights may be shipped), shared by the Graphormer
tests and by the script that made tests/data/graphormer_reference.npz with the official code (see
tests/data/README.md): the same rules must give the same numbers there and here.

- `seeded_state_dict(entries)`: a random state dict for the released keys, one generator per key (seeded from the
  key's name, so the order of building does not matter), scaled so that activations stay finite and varied
  through the 100-odd layers of HRNet-W64.
- `fixed_input()`: the (1, 3, 224, 224) input.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

import torch

MANIFEST = Path(__file__).parent / "data" / "graphormer_manifest.json"

SEED = 20240601
# Chosen by measuring activations of HRNet-W64 on fixed_input(): feature maps stay between ~0.1 and ~6 in
# standard deviation through the four stages (no overflow, no collapse), the grid features change by ~10 % and
# the output vertices by ~13 % between two different inputs (the image matters, not only the biases).
GAIN = 1.4                        # weights: N(0, GAIN² / fan_in)
SCALE_LOW, SCALE_HIGH = 0.4, 0.7  # BatchNorm / LayerNorm scales: uniform in this range
SHIFT = 0.02                      # biases and running means: N(0, SHIFT²)
VAR_LOW, VAR_HIGH = 0.75, 1.25    # BatchNorm running variances: uniform in this range (positive)


def manifest_entries() -> List[Dict]:
    """The released keys as {"key", "shape", "dtype"} records (the shared manifest's form), from the trimmed copy."""
    keys = json.loads(MANIFEST.read_text())["keys"]
    return [{"key": k, "shape": s, "dtype": "int64" if k.endswith(".num_batches_tracked") else "float32"}
            for k, s in keys.items()]


def seeded_tensor(key: str, shape: Sequence[int], dtype: str = "float32", seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    shape = tuple(shape)
    name = key.rsplit(".", 1)[-1]
    if dtype == "int64":                                   # BatchNorm's num_batches_tracked
        return torch.zeros(shape, dtype=torch.int64)
    if name == "running_var":
        return VAR_LOW + (VAR_HIGH - VAR_LOW) * torch.rand(shape, generator=g)
    if len(shape) >= 2:
        # The graph convolution stores its weight (in, out); every other matrix is (out, in, …).
        fan_in = shape[0] if key.endswith("graph_conv.conv.weight") else int(torch.tensor(shape[1:]).prod())
        return torch.randn(shape, generator=g) * (GAIN / fan_in ** 0.5)
    if name == "weight":                                   # BatchNorm / LayerNorm scales
        return SCALE_LOW + (SCALE_HIGH - SCALE_LOW) * torch.rand(shape, generator=g)
    return SHIFT * torch.randn(shape, generator=g)          # biases, running means


def seeded_state_dict(entries: Iterable[Mapping], seed: int = SEED) -> Dict[str, torch.Tensor]:
    """entries: the manifest's {"key", "shape", "dtype"} records."""
    return {e["key"]: seeded_tensor(e["key"], e["shape"], e["dtype"], seed) for e in entries}


def fixed_input(seed: int = SEED) -> torch.Tensor:
    """An ImageNet-normalised-looking (1, 3, 224, 224) image: smooth colour fields plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 14, 14, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(1, 3, 224, 224, generator=g)


# ---- the released files, with random weights -----------------------------------------------------------------

def mesh_shaped_heads(state: Dict[str, torch.Tensor], upsampling: torch.Tensor, scale: float = 8.0) -> None:
    """Makes the seeded random network's output land in its crop like a trained one's (in place): each encoder's
    shortcut carries the template's xyz through (its first three outputs = its first three inputs) while the
    encoder's own contribution is scaled down 1000×; the learned 195 → 778 upsampling is `upsampling` (e.g. the
    sampling file's U); the camera head predicts (scale, 0, 0). Everything else stays random, so the image still
    changes the mesh (by millimetres)."""
    for i in range(3):
        state[f"trans_encoder.{i}.cls_head.weight"].mul_(1e-3)
        state[f"trans_encoder.{i}.cls_head.bias"].mul_(1e-3)
        residual = state[f"trans_encoder.{i}.residual.weight"]
        residual[:3] = 0.0
        residual[:3, :3] = torch.eye(3)
        state[f"trans_encoder.{i}.residual.bias"][:3] = 0.0
    state["upsampling.weight"].copy_(upsampling)
    state["upsampling.bias"].zero_()
    state["cam_param_fc3.weight"].mul_(1e-3)
    state["cam_param_fc3.bias"].copy_(torch.tensor([scale, 0.0, 0.0]))


def write_released_layout(path, state: Dict[str, torch.Tensor]) -> None:
    """`state` as MeshGraphormer's release stores it: torch.save of the hand network's state_dict() (an OrderedDict
    with its module metadata) in the legacy, non-zip format. (The real file is 3,447 bytes longer: its module
    tree has more parameterless modules, each with a metadata entry.)"""
    from lib_handrefiner.mesh.graphormer.network import GraphormerHandNetwork

    with torch.device("meta"):
        network = GraphormerHandNetwork()
    network.load_state_dict(state, strict=True, assign=True)
    torch.save(network.state_dict(), path, _use_new_zipfile_serialization=False)
