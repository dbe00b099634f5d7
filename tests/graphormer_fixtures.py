"""Deterministic stand-ins for Mesh Graphormer's weights (no real weights may be shipped), shared by the Graphormer
tests and by the script that made tests/data/graphormer_reference.npz with the official code (see
tests/data/README.md): the same rules must give the same numbers there and here.

- `seeded_state_dict(entries)`: a random state dict for the released keys, one generator per key (seeded from the
  key's name, so the order of building does not matter), scaled so that activations stay finite and varied
  through the 100-odd layers of HRNet-W64.
- `fixed_input()`: the (1, 3, 224, 224) input.
"""
from __future__ import annotations

import zlib
from typing import Dict, Iterable, Mapping, Sequence

import torch

SEED = 20240601
# Chosen by measuring activations of HRNet-W64 on fixed_input(): feature maps stay between ~0.1 and ~6 in
# standard deviation through the four stages (no overflow, no collapse), the grid features change by ~10 % and
# the output vertices by ~13 % between two different inputs (the image matters, not only the biases).
GAIN = 1.4                        # weights: N(0, GAIN² / fan_in)
SCALE_LOW, SCALE_HIGH = 0.4, 0.7  # BatchNorm / LayerNorm scales: uniform in this range
SHIFT = 0.02                      # biases and running means: N(0, SHIFT²)
VAR_LOW, VAR_HIGH = 0.75, 1.25    # BatchNorm running variances: uniform in this range (positive)


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
