"""PyTorch's own post-training quantization, for comparison with ours: fp16 and real INT8 kernels.

INT8 uses ``torch.ao.quantization`` FX graph mode (``prepare_fx`` / ``convert_fx``) with the ``x86`` backend
(fbgemm/oneDNN kernels, per-channel symmetric int8 weights, uint8 activations observed by histograms). torch 2.14
still ships this API and it still produces real quantized kernels; the newer PT2E flow moved to the separate
torchao package and lowers through ``torch.compile``/Inductor, so for eager CPU inference FX mode is the path
that gives INT8 kernels here. Eager mode would need hand-placed Quant/DeQuant stubs and ``FloatFunctional`` adds
in every model; FX finds them by tracing, so it also works on models we did not write.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch import Tensor

from lit_kd.quant.ptq import calibration_batches, check_supported


class HalfPrecision(nn.Module):
    """``model`` in float16; takes and returns float32 tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval().half()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half()).float()


def to_fp16(model: nn.Module) -> nn.Module:
    return HalfPrecision(model)


def quantize_int8(model: nn.Module, calib_data: Iterable, calib_batches: int | None = None, backend: str = "x86") -> nn.Module:
    """A real INT8 copy of ``model`` (FX graph mode, static quantization calibrated on ``calib_data``)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_supported(model)
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not available; this build has {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend
    batches = [x.cpu() for x in calibration_batches(calib_data, calib_batches)]
    float_model = copy.deepcopy(model).cpu().eval()
    prepared = prepare_fx(float_model, get_default_qconfig_mapping(backend), (batches[0][:1],))
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return convert_fx(prepared).eval()
