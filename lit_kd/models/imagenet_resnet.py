"""torchvision ResNets adapted to 32x32 inputs, and the truncated ResNet-101 distillation student.

The CIFAR adaptation replaces the 7x7 stride-2 stem and the max-pool by a 3x3 stride-1 convolution, so a 32x32
image reaches layer4 at 4x4 instead of 1x1. ``stem="imagenet"`` keeps torchvision's stem untouched: with
ImageNet ``weights`` that is the literal "replace only the final linear layer" fine-tune; with the CIFAR stem the
new stem is trained from scratch together with all other (pretrained) weights. Residual blocks are torchvision's
with one ReLU module per use (:mod:`lit_kd.models.fusable_blocks`), so SparseML's QAT fusion keeps their function.
"""

from __future__ import annotations

from urllib.error import URLError

import torch.nn as nn
import torchvision
from torchvision.models import ResNet

from lit_kd.models.fusable_blocks import make_blocks_fusable


def adapt_resnet(model: ResNet, num_classes: int, stem: str = "cifar") -> ResNet:
    """Swap the classifier for ``num_classes`` outputs and (``stem="cifar"``) the stem for a 3x3 stride-1 conv;
    residual blocks become their fusion-safe twins (same parameter names)."""
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif stem != "imagenet":
        raise ValueError(f"stem must be 'cifar' (3x3 stride 1, no max-pool) or 'imagenet', got {stem!r}")
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return make_blocks_fusable(model)


def torchvision_resnet(arch: str, num_classes: int = 10, weights: str | None = None, stem: str = "cifar") -> ResNet:
    """A torchvision ResNet (``resnet18/34/50/101``) for 32x32 inputs, optionally from ImageNet ``weights``.

    ``weights`` is a torchvision weight name (``"DEFAULT"``, ``"IMAGENET1K_V2"``, ...). torchvision looks for the
    file in ``$TORCH_HOME/hub/checkpoints`` first and downloads it otherwise.
    """
    builder = getattr(torchvision.models, arch)
    weight_enum = torchvision.models.get_model_weights(arch)[weights] if weights and weights != "DEFAULT" else None
    if weights == "DEFAULT":
        weight_enum = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        model = builder(weights=weight_enum)
    except (URLError, OSError, RuntimeError) as err:
        url = weight_enum.url if weight_enum is not None else "?"
        raise RuntimeError(
            f"could not load ImageNet weights {arch}/{weight_enum.name if weight_enum else weights} from {url} ({err}). "
            "This needs internet access, or the file placed in $TORCH_HOME/hub/checkpoints/ "
            f"(default ~/.cache/torch/hub/checkpoints/{url.rsplit('/', 1)[-1]}); use weights: null to train from scratch"
        ) from err
    return adapt_resnet(model, num_classes, stem)


def resnet18(num_classes: int = 10, weights: str | None = None, stem: str = "cifar") -> ResNet:
    return torchvision_resnet("resnet18", num_classes, weights, stem)


def resnet34(num_classes: int = 10, weights: str | None = None, stem: str = "cifar") -> ResNet:
    return torchvision_resnet("resnet34", num_classes, weights, stem)


def resnet50(num_classes: int = 10, weights: str | None = None, stem: str = "cifar") -> ResNet:
    return torchvision_resnet("resnet50", num_classes, weights, stem)


def resnet101(num_classes: int = 10, weights: str | None = None, stem: str = "cifar") -> ResNet:
    return torchvision_resnet("resnet101", num_classes, weights, stem)


def resnet101_trunc(num_classes: int = 10, stem: str = "cifar") -> ResNet:
    """The distillation student: an untrained ResNet-101 whose layer3 keeps only its first bottleneck block.

    That block maps layer2's 512 channels to the 1024 channels layer4 expects (stride 2, with its downsample
    branch); layer1, layer2 and layer4 are unchanged, so features of layer1/2/4 match the teacher's shapes.
    """
    model = resnet101(num_classes, None, stem)
    model.layer3 = nn.Sequential(model.layer3[0])
    return model
