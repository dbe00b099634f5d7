"""The Inception-v3 feature extractor of FID (the TensorFlow "2015-12-05" graph ported to PyTorch, as pytorch-fid
uses it), returning the 2048-d final average-pool features.

The network is torchvision's Inception-v3 layout (module names Conv2d_1a_3x3 … Mixed_7c, fc with 1008 classes)
with the FID graph's differences: the average pools inside the A, C and E blocks ignore the zero padding
(TensorFlow's behaviour) and the last E block pools with a max instead of an average. Written here so that
torchvision is not needed; the weights file is the user's (`pt_inception-2015-12-05-6726825d.pth`), since no
weights can be downloaded by this code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # the smallest input the stride-2 stages accept
FEATURE_DIM = 2048


class InceptionWeightsError(ValueError):
    """The FID Inception weights are missing or are not the expected file; the message says where to get them."""


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's eps 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 "SAME" average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        # The FID graph's last block (Mixed_7c) pools with a max; Mixed_7b averages as TensorFlow does.
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → (B, 2048) pool features. Each image is resized (bilinear) to
    `input_size` (299 for FID; tests use the minimum, 75, to stay fast) and scaled to [-1, 1]."""

    def __init__(self, input_size: int = FID_INPUT_SIZE) -> None:
        super().__init__()
        if input_size < MIN_INPUT_SIZE:
            raise ValueError(f"Inception-v3 needs inputs of at least {MIN_INPUT_SIZE} px, got {input_size}")
        self.input_size = input_size
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        # The classifier is unused for features but is part of the weights file (1008 ImageNet-2015 classes).
        self.fc = nn.Linear(FEATURE_DIM, 1008)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def missing_weights_message(path: Union[str, Path]) -> str:
    return (f"FID Inception weights not found at {path}. Download {FID_WEIGHTS_NAME} (pytorch-fid's GitHub "
            f"release 'fid_weights': {FID_WEIGHTS_URL}) and pass its path with --inception.")


def load_state_dict_file(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(missing_weights_message(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        from lib_handrefiner.safe_pickle import load_torch_file

        state = load_torch_file(path)
    except Exception as error:  # a truncated download or another kind of file
        raise InceptionWeightsError(f"cannot read {path} as Inception weights ({error}); it should be "
                                    f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}") from error
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path} holds a {type(state).__name__}, not a state dict; expected "
                                    f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}")
    return state


def load_fid_inception(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                       input_size: int = FID_INPUT_SIZE) -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of `path` (.pth via the restricted unpickler, or .safetensors),
    in eval mode. Every parameter and batch-norm statistic must be in the file (the batch counters may be
    absent: old files predate them)."""
    state = load_state_dict_file(path)
    model = FIDInceptionV3(input_size=input_size)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # right names, wrong shapes
        raise InceptionWeightsError(f"{path} does not fit the FID Inception-v3 ({error}); expected "
                                    f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}") from error
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise InceptionWeightsError(
            f"{path} is not the FID Inception-v3 weights: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); expected "
            f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL}")
    return model.to(device).eval()


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """An RGB uint8 H×W×3 image as a (1, 3, H, W) float tensor in [0, 1] (what the extractor takes)."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Iterable[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """(N, D) float32 features of RGB uint8 images of any sizes (each is resized inside the extractor on its
    own, so sizes may differ; batching only groups the forward passes)."""
    device = next(extractor.parameters()).device
    rows: List[np.ndarray] = []
    batch: List[torch.Tensor] = []

    def flush() -> None:
        rows.append(extractor(torch.cat(batch).to(device)).float().cpu().numpy())
        batch.clear()

    for rgb in images:
        batch.append(_resized(image_tensor(rgb), extractor))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM), np.float32)


def _resized(x: torch.Tensor, extractor: nn.Module) -> torch.Tensor:
    size = getattr(extractor, "input_size", None)
    if size is None:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)



def random_fid_inception(seed: int = 0, input_size: int = MIN_INPUT_SIZE) -> FIDInceptionV3:
    """The same architecture with seeded random weights, for tests and the pipeline's tiny runs: its features
    are not FID's. He-normal convolutions keep the activations' scale through the 94 layers (PyTorch's default
    init shrinks it to ~1e-8, which would make every image look the same)."""
    generator = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3(input_size=input_size)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
    return model.eval()
