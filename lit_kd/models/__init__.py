"""Architectures as plain ``nn.Module``s (no Lightning), built by name with :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from lit_kd.models.cifar_resnet import (
    CifarResNet,
    resnet8,
    resnet20,
    resnet20_trunc,
    resnet20_trunc3,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from lit_kd.models.feature_taps import FeatureTaps
from lit_kd.models.imagenet_resnet import resnet18, resnet34, resnet50, resnet101, resnet101_trunc
from lit_kd.models.summary import model_summary, print_summary, summary_totals

MODELS: dict[str, Callable[..., nn.Module]] = {
    f.__name__: f
    for f in (
        resnet18,
        resnet34,
        resnet50,
        resnet101,
        resnet101_trunc,
        resnet8,
        resnet20,
        resnet20_trunc,
        resnet20_trunc3,
        resnet32,
        resnet44,
        resnet56,
        resnet110,
    )
}


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered architecture by name (see ``MODELS``); extra keyword arguments go to its builder."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)} (or pass any nn.Module via class_path)")
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "CifarResNet", "FeatureTaps", "build_model", "model_summary", "print_summary", "summary_totals", *MODELS]
