"""The CIFAR ResNets of He et al. (2016), section 4.2: resnet20/32/44/56/110 (and resnet8, a tiny student).

Three stages of 16/32/64 channels with n basic blocks each (depth = 6n + 2), a 3x3 stem, global average pooling
and a linear classifier. The shortcut between stages is option A of the paper (parameter-free: subsample by 2 and
zero-pad the new channels) by default, option B (1x1 conv + BatchNorm) on request. Parameter names follow the widely
used public implementation (``conv1``, ``bn1``, ``layer1..3``, ``linear``), so its checkpoints load directly.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: take every other pixel and zero-pad the channels from ``in_planes`` to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        else:
            raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 conv), got {shortcut!r}")
        # registered after the shortcut, not right after bn2: module fusion (SparseML's QAT) fuses a conv with the
        # BN and ReLU that follow it in registration order, and this ReLU runs after the residual addition
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6 * blocks_per_stage + 2``; ``blocks_per_stage`` may also give each stage its own
    count, e.g. ``(3, 1, 3)``."""

    def __init__(self, blocks_per_stage, num_classes: int = 10, shortcut: str = "A", widths=(16, 32, 64)):
        super().__init__()
        counts = (blocks_per_stage,) * len(widths) if isinstance(blocks_per_stage, int) else tuple(blocks_per_stage)
        if len(counts) != len(widths) or min(counts) < 1:
            raise ValueError(f"blocks_per_stage must be >= 1 (one count, or one per stage of {len(widths)}), got {blocks_per_stage}")
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, (width, count) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, width, stride, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


def _cifar_resnet(depth: int):
    def build(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
        return CifarResNet((depth - 2) // 6, num_classes, shortcut)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} ({(depth - 2) // 6} basic blocks per stage)."
    return build


resnet8, resnet20, resnet32, resnet44, resnet56, resnet110 = (_cifar_resnet(d) for d in (8, 20, 32, 44, 56, 110))


def resnet20_trunc(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-20 with its middle stage cut to its first block (the one that makes the last stage's input channels),
    the way the ResNet-101 study cuts layer3: 3, 1 and 3 blocks; 232,602 parameters instead of 269,722."""
    return CifarResNet((3, 1, 3), num_classes, shortcut)


def resnet20_trunc3(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-20 with its last stage, the one that holds most parameters (203,520 of 269,722), cut to its first block
    (the one that widens to 64 channels), as the ResNet-101 task cuts layer3: 3, 3 and 1 blocks; 121,754 parameters,
    45 % of ResNet-20. The last stage's output keeps its shape, so feature distillation pairs still match."""
    return CifarResNet((3, 3, 1), num_classes, shortcut)
