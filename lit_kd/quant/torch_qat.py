"""torch.ao quantization-aware training (FX, x86): prepare a network, convert it to INT8, rebuild a saved INT8 model."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

INT8_FILE = "int8_model.pt"


def prepare_qat(network: nn.Module, backend: str, input_shape) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not available; this build has {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend
    device = next(network.parameters()).device
    example = torch.zeros(*input_shape, device=device)
    return prepare_qat_fx(network.train(), get_default_qat_qconfig_mapping(backend), (example,))


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The real INT8 model of a QAT-prepared network (a copy, on the CPU, in eval mode)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(copy.deepcopy(prepared).cpu().eval()).eval()


def save_int8_model(int8: nn.Module, recipe: dict, path: str | Path) -> Path:
    """Write ``int8_model.pt`` atomically: the converted state dict plus ``recipe`` (``network``,
    ``network_kwargs``, ``num_classes``, ``backend``, ``input_shape``: what :func:`load_int8_model` rebuilds it
    from). Tensors and plain data only, so it loads with ``weights_only=True``."""
    from lit_kd.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(dict(recipe) | {"state_dict": int8.state_dict()}, tmp)
    return Path(path)


def load_int8_model(path: str | Path) -> nn.Module:
    """Rebuild the INT8 model saved by :class:`QuantizationAwareTraining` (``int8_model.pt``); read with
    :func:`lit_kd.checkpoints.safe_load` (a file with pickled objects is refused)."""
    from lit_kd.checkpoints import instantiate_network, safe_load

    saved = safe_load(path)
    network = instantiate_network(saved["network"], saved["num_classes"], saved.get("network_kwargs"))
    int8 = convert_int8(prepare_qat(network, saved["backend"], saved["input_shape"]))
    int8.load_state_dict(saved["state_dict"])
    return int8
