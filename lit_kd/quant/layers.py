"""Simulated-quantization building blocks: an activation quantizer and a weighted layer with quantized weights.

Activations are quantized where they enter a weighted layer (Conv2d or Linear): every multiply-accumulate then
works on integer-representable inputs and weights, while ReLU, pooling and residual additions run on those
dequantized values in floating point (what integer kernels with fused requantization approximate).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lit_kd.quant.affine import check_bits, dequantize, fake_quantize, quantize
from lit_kd.quant.observers import Observer

WEIGHTED_LAYERS = (nn.Conv2d, nn.Linear)


class ActivationQuantizer(nn.Module):
    """Observes its input while ``observing``; once ``calibrate``d, fake-quantizes it to ``bits`` bits."""

    def __init__(self, observer: Observer, bits: int, symmetric: bool = False):
        super().__init__()
        self.observer, self.bits, self.symmetric = observer, check_bits(bits, "activation bit width"), symmetric
        self.observing, self.enabled = False, False
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))

    def calibrate(self) -> None:
        """Fix scale and zero point from what the observer saw; from now on the input is quantized."""
        self.scale, self.zero_point = self.observer.qparams(self.bits, self.symmetric)
        self.observing, self.enabled = False, True

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observer(x)
        if self.enabled:
            return fake_quantize(x, self.scale, self.zero_point, self.bits, self.symmetric)
        return x

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, enabled={self.enabled}"


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear whose input goes through ``input_quantizer`` and whose weight is quantized.

    ``layer.weight`` holds the dequantized weight (what the simulation computes with); ``weight_int`` the integer
    codes, with ``weight_scale`` and ``weight_zero_point`` per output channel (or one each)."""

    def __init__(self, layer: nn.Module, input_quantizer: ActivationQuantizer, weight_bits: int, weight_symmetric: bool):
        super().__init__()
        if not isinstance(layer, WEIGHTED_LAYERS):
            raise TypeError(f"QuantizedLayer wraps Conv2d or Linear, got {type(layer).__name__}")
        self.layer, self.input_quantizer = layer, input_quantizer
        self.weight_bits, self.weight_symmetric = check_bits(weight_bits, "weight bit width"), weight_symmetric
        self.register_buffer("weight_scale", torch.tensor(1.0))
        self.register_buffer("weight_zero_point", torch.tensor(0.0))
        self.register_buffer("weight_int", torch.tensor([]))

    @property
    def weight_axis(self) -> int | None:
        return 0 if self.weight_scale.numel() > 1 else None

    def set_weight_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        self.weight_scale, self.weight_zero_point = scale.reshape(-1).clone(), zero_point.reshape(-1).clone()

    def weight_codes(self, weight: Tensor) -> Tensor:
        """Integer codes of ``weight`` by rounding to nearest."""
        return quantize(weight, self.weight_scale, self.weight_zero_point, self.weight_bits, self.weight_symmetric, self.weight_axis)

    def set_weight_codes(self, codes: Tensor) -> None:
        """Store the integer codes and put their dequantized values into ``layer.weight``."""
        self.weight_int = codes.to(torch.int32)
        with torch.no_grad():
            self.layer.weight.copy_(dequantize(codes.float(), self.weight_scale, self.weight_zero_point, self.weight_axis))

    def fake_quantize_weight(self, weight: Tensor) -> Tensor:
        return fake_quantize(weight, self.weight_scale, self.weight_zero_point, self.weight_bits, self.weight_symmetric, self.weight_axis)

    def forward_with_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer on its quantized input with a given weight (used while learning the rounding)."""
        x = self.input_quantizer(x)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.input_quantizer(x))

    def extra_repr(self) -> str:
        granularity = "per-channel" if self.weight_axis is not None else "per-tensor"
        return f"weight_bits={self.weight_bits}, weight_symmetric={self.weight_symmetric}, {granularity}"
