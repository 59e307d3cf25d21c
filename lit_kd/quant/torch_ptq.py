"""PyTorch's own post-training quantization, for comparison with ours: fp16 and real INT8 kernels.

INT8 has two flows (``flow``). ``fx``: ``torch.ao.quantization`` FX graph mode (``prepare_fx`` / ``convert_fx``) with
the ``x86`` backend (fbgemm/oneDNN kernels, per-channel symmetric int8 weights, uint8 activations observed by
histograms, 7-bit activation range), runnable eagerly; torch 2.14 still ships it, deprecated upstream. ``pt2e``:
PyTorch's maintained flow (:mod:`lit_kd.quant.pt2e`: ``torch.export``, torchao's ``X86InductorQuantizer``, the same
weight and observer choices with all 256 activation codes), whose INT8 kernels come from ``torch.compile``. Both
find quantization points by tracing, so they work on models we did not write.
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


def quantize_int8(
    model: nn.Module, calib_data: Iterable, calib_batches: int | None = None, backend: str = "x86", flow: str = "fx"
) -> nn.Module:
    """A real INT8 copy of ``model`` (static quantization calibrated on ``calib_data``): FX graph mode, or with
    ``flow="pt2e"`` the PT2E program compiled to INT8 kernels (x86 only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from lit_kd.quant.pt2e import check_flow, quantize_pt2e_ptq

    if check_flow(flow) == "pt2e":
        if backend != "x86":
            raise ValueError(f"flow 'pt2e' quantizes for x86 (X86InductorQuantizer); backend {backend!r} is FX-only")
        return quantize_pt2e_ptq(model, calib_data, calib_batches, compile=True)
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
