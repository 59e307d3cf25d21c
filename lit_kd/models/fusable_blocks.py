"""torchvision's residual blocks rebuilt with one ReLU module per use, registered in execution order.

Module-level fusion (SparseML's ``fuse_module_conv_bn_relus``, which its QuantizationModifier runs before QAT)
walks ``named_modules()`` and fuses a conv with the BatchNorm and the ReLU registered right after it. torchvision's
blocks share one ``relu`` module between two or three uses: it gets fused into the first conv and replaced by
``Identity``, which silently removes every other ReLU of the block, including the one after the residual addition.
A ReLU registered right after the last BatchNorm would be fused *before* the addition, which changes the function too.
Here every block registers ``relu1`` (``relu2``) after its BatchNorm, then the shortcut (``downsample``, an
``Identity`` when there is none), then ``relu_out``, which runs after the addition and never follows a BatchNorm in
registration order. Parameter and buffer names are torchvision's, so its weights and our older checkpoints load.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck


class FusableBasicBlock(nn.Module):
    """torchvision ``BasicBlock`` (3x3, 3x3, residual addition, ReLU) with its weights, fusion-safe."""

    expansion = 1

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU(inplace=True)
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()
        self.relu_out = nn.ReLU(inplace=True)
        self.stride = block.stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.downsample(x))


class FusableBottleneck(nn.Module):
    """torchvision ``Bottleneck`` (1x1, 3x3, 1x1, residual addition, ReLU) with its weights, fusion-safe."""

    expansion = 4

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU(inplace=True)
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU(inplace=True)
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()
        self.relu_out = nn.ReLU(inplace=True)
        self.stride = block.stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.downsample(x))


def make_blocks_fusable(model: nn.Module) -> nn.Module:
    """Replace every torchvision ``BasicBlock``/``Bottleneck`` inside ``model`` (in place) by its fusable twin."""
    for name, child in model.named_children():
        if isinstance(child, BasicBlock):
            setattr(model, name, FusableBasicBlock(child))
        elif isinstance(child, Bottleneck):
            setattr(model, name, FusableBottleneck(child))
        else:
            make_blocks_fusable(child)
    return model
