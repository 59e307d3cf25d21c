"""An integer-arithmetic INT8 model built from our own 8-bit quantization (the check that the simulation is exact).

Each 8-bit :class:`~lit_kd.quant.layers.QuantizedLayer` of a model made by :func:`lit_kd.quant.quantize` becomes an
:class:`Int8Layer` that computes as an integer kernel does: the input becomes uint8 codes with the layer's own scale
and zero point, the weight is the layer's int8 codes, the multiply-accumulate is an int8 x int8 -> int32 matrix
product (``torch._int_mm``; convolutions are unfolded to a matrix first), the activation zero point is handled by
the usual integer correction term, and the int32 accumulator is rescaled by ``input_scale * weight_scale`` and the
float bias added. ReLU, pooling and residual additions run in float between layers, as in the simulation.

PyTorch's quantized Conv2d/Linear modules (fbgemm) would also requantize every output to uint8, a rounding step the
simulation does not model; the int32 accumulator here keeps the comparison exact. PyTorch's own INT8 model
(:func:`lit_kd.quant.torch_ptq.quantize_int8`) is compared separately.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lit_kd.quant.affine import quantize as quantize_codes
from lit_kd.quant.layers import QuantizedLayer
from lit_kd.quant.ptq import quantized_layers

UINT8_OFFSET = 128  # uint8 code u is fed to the int8 product as u - 128


class Int8Layer(nn.Module):
    """A Conv2d (``groups=1``, zero padding) or Linear computed with int8 codes and int32 accumulation."""

    def __init__(self, layer: QuantizedLayer, path: str = "?"):
        super().__init__()
        quantizer, float_layer = layer.input_quantizer, layer.layer
        if layer.weight_bits != 8 or quantizer.bits != 8 or not layer.weight_symmetric or quantizer.symmetric:
            raise ValueError(
                f"layer {path!r}: the INT8 model needs 8-bit symmetric weights and 8-bit asymmetric activations, got "
                f"W{layer.weight_bits} ({'symmetric' if layer.weight_symmetric else 'asymmetric'}) "
                f"A{quantizer.bits} ({'symmetric' if quantizer.symmetric else 'asymmetric'})"
            )
        if isinstance(float_layer, nn.Conv2d) and (float_layer.groups != 1 or float_layer.padding_mode != "zeros"):
            raise ValueError(f"layer {path!r}: the INT8 model handles convolutions with groups=1 and zero padding only")
        c = float_layer
        # convolution geometry as plain tuples (kernel, dilation, padding, stride); None for Linear
        self.geometry = (c.kernel_size, c.dilation, c.padding, c.stride) if isinstance(c, nn.Conv2d) else None
        self.input_scale, self.input_zero_point = float(quantizer.scale), int(quantizer.zero_point)
        codes = layer.weight_int.reshape(layer.weight_int.shape[0], -1)  # (out, in * kh * kw)
        self.register_buffer("weight_codes", codes.t().contiguous().to(torch.int8))
        # sum_k (u - 128) w + (128 - zp) sum_k w  ==  sum_k (u - zp) w
        self.register_buffer("zero_point_term", (UINT8_OFFSET - self.input_zero_point) * codes.sum(dim=1).to(torch.int32))
        scale = layer.weight_scale.reshape(-1).double() * self.input_scale
        self.register_buffer("output_scale", scale.float())
        bias = float_layer.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        zp = self.input_zero_point
        shifted = quantize_codes(x.float(), torch.tensor(self.input_scale), torch.tensor(float(zp)), 8, False) - zp
        if self.geometry is None:
            rows, out_shape = shifted.reshape(-1, shifted.shape[-1]), (*x.shape[:-1], -1)
        else:
            kernel, dilation, padding, stride = self.geometry
            n, _, h, w = x.shape
            ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
            wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
            cols = F.unfold(shifted, kernel, dilation, padding, stride)  # zero padding = code zp
            rows = cols.transpose(1, 2).reshape(n * ho * wo, -1)
        rows = (rows + (zp - UINT8_OFFSET)).round().to(torch.int8)  # u - 128, in [-128, 127]
        acc = torch._int_mm(rows, self.weight_codes) + self.zero_point_term  # int32, exact
        y = acc.float() * self.output_scale
        if self.bias is not None:
            y = y + self.bias
        if self.geometry is None:
            return y.reshape(out_shape)
        return y.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)


def to_int8_model(qmodel: nn.Module) -> nn.Module:
    """A CPU copy of an 8-bit ``quantize()``-d model whose weighted layers compute in integer arithmetic."""
    layers = quantized_layers(qmodel)
    if not layers:
        raise ValueError("to_int8_model expects a model returned by lit_kd.quant.quantize(); it has no QuantizedLayer")
    model = copy.deepcopy(qmodel).cpu().eval()
    for path, layer in quantized_layers(model).items():
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, Int8Layer(layer, path))
    return model
