"""HRNet-W64 (the image-classification variant, HRNetV2 cls) as Mesh Graphormer uses it: the backbone returns the
2048-d globally pooled feature and the 1024×7×7 grid feature (for a 224² input) that feeds the grid tokens.

Module names and registration order follow the released `graphormer_hand_state_dict.bin` (keys `backbone.…`), so
its state dict loads strictly. The ImageNet classifier (`classifier`, Linear 2048→1000) is in the checkpoint but
unused. Stage layout of W64: stage 1 one branch of 4 bottlenecks (64 ch); stages 2–4 with 2/3/4 branches of width
64·2^i, 4 basic blocks per branch, in 1/4/3 modules; every module fuses all branches into each branch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StageConfig:
    modules: int
    blocks: Tuple[int, ...]    # blocks per branch (the number of branches is its length)
    channels: Tuple[int, ...]  # width per branch (before the block's expansion)
    bottleneck: bool = False


W64_STAGES = (
    StageConfig(1, (4,), (64,), bottleneck=True),
    StageConfig(1, (4, 4), (64, 128)),
    StageConfig(4, (4, 4, 4), (64, 128, 256)),
    StageConfig(3, (4, 4, 4, 4), (64, 128, 256, 512)),
)
HEAD_CHANNELS = (32, 64, 128, 256)  # per branch; ×4 by the head's bottleneck → 128, 256, 512, 1024
FEATURE_DIM = 2048
GRID_DIM = HEAD_CHANNELS[-1] * 4


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = False) -> nn.Sequential:
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _bn(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


def _blocks(block: type, cin: int, planes: int, count: int, stride: int = 1) -> nn.Sequential:
    """`count` blocks; the first projects the input (1×1 conv + BN) when its width or stride changes."""
    cout = planes * block.expansion
    downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
    return nn.Sequential(block(cin, planes, stride, downsample),
                         *[block(cout, planes) for _ in range(count - 1)])


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output branch sums all branches brought to its resolution
    (higher resolution: strided 3×3 convs; lower: 1×1 conv + nearest upsampling)."""

    def __init__(self, blocks: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_blocks(BasicBlock, c, c, n) for n, c in zip(blocks, channels))
        self.fuse_layers = nn.ModuleList(nn.ModuleList(self._fuse(j, i, channels) for j in range(len(channels)))
                                         for i in range(len(channels)))
        self.relu = nn.ReLU(False)

    @staticmethod
    def _fuse(source: int, target: int, channels: Sequence[int]) -> Optional[nn.Module]:
        if source == target:
            return None
        if source > target:
            return nn.Sequential(nn.Conv2d(channels[source], channels[target], 1, 1, 0, bias=False),
                                 _bn(channels[target]),
                                 nn.Upsample(scale_factor=2 ** (source - target), mode="nearest"))
        steps = target - source
        return nn.Sequential(*[
            _conv_bn(channels[source], channels[target] if k == steps - 1 else channels[source], 3, 2,
                     relu=k < steps - 1)
            for k in range(steps)])

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, layers in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else layers[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else layers[j](xs[j]))
            fused.append(self.relu(y))
        return fused


class HRNetW64(nn.Module):
    def __init__(self, stages: Sequence[StageConfig] = W64_STAGES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        first = stages[0]
        self.layer1 = _blocks(Bottleneck, 64, first.channels[0], first.blocks[0])
        previous = [first.channels[0] * Bottleneck.expansion]
        for index, stage in enumerate(stages[1:], start=1):
            setattr(self, f"transition{index}", self._transition(previous, stage.channels))
            setattr(self, f"stage{index + 1}", nn.Sequential(
                *[HighResolutionModule(stage.blocks, stage.channels) for _ in range(stage.modules)]))
            previous = list(stage.channels)
        self.num_stages = len(stages)
        self.incre_modules = nn.ModuleList(_blocks(Bottleneck, c, h, 1) for c, h in zip(previous, HEAD_CHANNELS))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(nn.Conv2d(HEAD_CHANNELS[i] * 4, HEAD_CHANNELS[i + 1] * 4, 3, 2, 1),
                          _bn(HEAD_CHANNELS[i + 1] * 4), nn.ReLU(inplace=True))
            for i in range(len(HEAD_CHANNELS) - 1))
        self.final_layer = nn.Sequential(nn.Conv2d(GRID_DIM, FEATURE_DIM, 1, 1, 0), _bn(FEATURE_DIM),
                                         nn.ReLU(inplace=True))
        self.classifier = nn.Linear(FEATURE_DIM, 1000)  # in the checkpoint; not used

    @staticmethod
    def _transition(previous: Sequence[int], current: Sequence[int]) -> nn.ModuleList:
        """Existing branches whose width changes get a 3×3 conv; a new branch comes from the lowest-resolution
        one by a strided 3×3 conv."""
        layers: List[Optional[nn.Module]] = []
        for i, channels in enumerate(current):
            if i < len(previous):
                layers.append(_conv_bn(previous[i], channels, 3, relu=True) if previous[i] != channels else None)
            else:
                layers.append(nn.Sequential(*[
                    _conv_bn(previous[-1], channels if k == i - len(previous) else previous[-1], 3, 2, relu=True)
                    for k in range(i + 1 - len(previous))]))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 2048) pooled feature and (B, 1024, H/32, W/32) grid feature."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for index in range(1, self.num_stages):
            transition = getattr(self, f"transition{index}")
            # Every transition conv reads the previous stage's lowest-resolution output (for W64 only new
            # branches have one, after stage 1, which has a single output).
            xs = [ys[i] if t is None else t(ys[-1]) for i, t in enumerate(transition)]
            ys = getattr(self, f"stage{index + 1}")(xs)
        y = self.incre_modules[0](ys[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](ys[i + 1]) + down(y)
        pooled = self.final_layer(y).mean(dim=(2, 3))
        return pooled, y
