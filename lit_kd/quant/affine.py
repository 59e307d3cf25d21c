"""Uniform affine quantization: the integer grid of a bit width, scale and zero point, and (fake) quantization.

Conventions (the same formulas as ``torch.ao.quantization`` observers, so 8-bit results are comparable):

- asymmetric, ``bits`` b: unsigned grid ``[0, 2^b - 1]``; the range is widened to include 0, then
  ``scale = (max - min) / (2^b - 1)`` and ``zero_point = clamp(-round(min / scale), 0, 2^b - 1)``, so real 0 is
  exactly representable (zero padding and ReLU outputs stay exact).
- symmetric: signed grid ``[-2^(b-1), 2^(b-1) - 1]``, ``zero_point = 0`` and
  ``scale = max(|min|, |max|) / ((qmax - qmin) / 2)``.
- ``quantize(x) = clamp(round(x / scale) + zero_point, qmin, qmax)`` (round half to even, as ``torch.round``);
  ``dequantize(q) = (q - zero_point) * scale``. Per-channel parameters broadcast along ``axis``.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_BITS, MAX_BITS = 2, 16
EPS = torch.finfo(torch.float32).eps


def check_bits(bits: int, what: str = "bit width") -> int:
    """``bits`` as an int, or a clear error when it is not an integer from 2 to 16."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)``: signed for symmetric, unsigned for asymmetric quantization."""
    check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def qparams(min_val: Tensor, max_val: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point (float tensors of the shape of ``min_val``) for the observed range ``[min_val, max_val]``."""
    qmin, qmax = qrange(bits, symmetric)
    min_neg = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    max_pos = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    if symmetric:
        scale = torch.maximum(-min_neg, max_pos) / ((qmax - qmin) / 2)
        scale = torch.clamp(scale, min=EPS)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((max_pos - min_neg) / (qmax - qmin), min=EPS)
    zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax)
    return scale, zero_point


def _shape(param: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None or param.numel() == 1:
        return param.reshape(()) if param.numel() == 1 else param
    view = [1] * x.dim()
    view[axis] = -1
    return param.reshape(view)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool, axis: int | None = None) -> Tensor:
    """Integer codes of ``x`` (as a float tensor holding whole numbers in ``[qmin, qmax]``)."""
    qmin, qmax = qrange(bits, symmetric)
    scale, zero_point = _shape(scale, x, axis), _shape(zero_point, x, axis)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    return (q - _shape(zero_point, q, axis)) * _shape(scale, q, axis)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool, axis: int | None = None) -> Tensor:
    """``dequantize(quantize(x))``: the value the integer model computes with, in floating point."""
    return dequantize(quantize(x, scale, zero_point, bits, symmetric, axis), scale, zero_point, axis)
