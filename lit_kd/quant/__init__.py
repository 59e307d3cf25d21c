"""Quantization: our own post-training quantization (simulated, 2-16 bits) and PyTorch's own PTQ."""

from lit_kd.quant.affine import dequantize, fake_quantize, qparams, qrange
from lit_kd.quant.affine import quantize as quantize_tensor
from lit_kd.quant.bit_search import search_bits
from lit_kd.quant.observers import OBSERVERS, make_observer
from lit_kd.quant.ptq import calibration_batches, fold_batchnorm, quantize, quantized_layers

__all__ = [
    "OBSERVERS",
    "calibration_batches",
    "dequantize",
    "fake_quantize",
    "fold_batchnorm",
    "make_observer",
    "qparams",
    "qrange",
    "quantize",
    "quantize_tensor",
    "quantized_layers",
    "search_bits",
]
