"""Our own W8A8 post-training quantization written as an ONNX QDQ model (ONNX Runtime, OpenVINO).

:func:`export_qdq` takes a model made by :func:`lit_kd.quant.quantize` at 8 bits (BatchNorm folded, every Conv2d /
Linear input quantized to uint8 with its calibrated scale and zero point, weights int8 symmetric per channel) and
writes the same arithmetic as ONNX: ``QuantizeLinear -> DequantizeLinear`` on each weighted layer's input, and the
weight stored as its int8 codes behind a ``DequantizeLinear``. ReLU, pooling and residual additions stay float, as
in the simulation, so the file classifies like the simulated model (top-1 agreement >= 99 % on CIFAR-10, tested).
ONNX Runtime fuses ``DQ -> Conv -> Relu -> Q`` into QLinearConv; OpenVINO reads the pairs as FakeQuantize and runs
the convolutions in INT8.

Activations are written as int8 by default (S8S8): code ``u - 128`` with zero point ``z - 128`` is the very same grid
as our uint8 code ``u`` with zero point ``z``, and it keeps ONNX Runtime off its U8S8 kernels, whose 16-bit
intermediate sums can saturate on x86 CPUs without VNNI (ONNX Runtime's own advice for QDQ models). ``activations=
"uint8"`` writes the uint8 form, which is the one for OpenVINO (``OPENVINO_ACTIVATIONS``): its CPU plugin runs
convolutions on uint8 inputs with zero points in INT8, but ran every convolution of the int8 form in f32.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lit_kd.quant.layers import QuantizedLayer
from lit_kd.quant.ptq import quantized_layers

QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
ACTIVATION_OFFSET = {"int8": 128, "uint8": 0}
OPENVINO_ACTIVATIONS = "uint8"  # the activation form OpenVINO runs as INT8 kernels (lit_kd.openvino_engine.kernel_precisions)


class _QdqLayer(nn.Module):
    """A :class:`QuantizedLayer` as torch fake-quantize ops, which the TorchScript ONNX exporter writes as Q/DQ."""

    def __init__(self, layer: QuantizedLayer, path: str, activations: str = "int8"):
        super().__init__()
        q = layer.input_quantizer
        if layer.weight_bits != 8 or q.bits != 8 or not layer.weight_symmetric or q.symmetric:
            raise ValueError(
                f"layer {path!r}: the QDQ export needs W8 symmetric weights and A8 asymmetric inputs (lit_kd.quant.quantize "
                f"with weight_bits=8, act_bits=8), got W{layer.weight_bits} A{q.bits}"
            )
        self.layer = layer.layer
        self.input_scale, self.input_zero_point = float(q.scale), int(q.zero_point)
        self.offset = ACTIVATION_OFFSET[activations]  # int8: the same grid shifted by -128
        self.register_buffer("weight_scale", layer.weight_scale.reshape(-1).float().clone())
        self.per_channel = layer.weight_axis is not None

    def forward(self, x: Tensor) -> Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point - self.offset, -self.offset, 255 - self.offset)
        w = self.layer.weight
        if self.per_channel:
            zero = torch.zeros(len(self.weight_scale), dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(w, self.weight_scale, zero, 0, -128, 127)
        else:
            w = torch.fake_quantize_per_tensor_affine(w, float(self.weight_scale[0]), 0, -128, 127)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def qdq_network(qmodel: nn.Module, activations: str = "int8") -> nn.Module:
    """A CPU copy of an 8-bit ``quantize()``-d model with each :class:`QuantizedLayer` as fake-quantize ops."""
    layers = quantized_layers(qmodel)
    if not layers:
        raise ValueError("export_qdq expects a model returned by lit_kd.quant.quantize(); it has no QuantizedLayer")
    model = copy.deepcopy(qmodel).cpu().eval()
    for path, layer in quantized_layers(model).items():
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, _QdqLayer(layer, path, activations))
    return model


def fold_weight_quantization(model) -> int:
    """Replace every ``QuantizeLinear`` of a constant float tensor (a weight) by its int8 codes as an initializer, so
    the file stores INT8 weights; returns how many were folded."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    folded, keep = 0, []
    for node in model.graph.node:
        x = value(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if x is None or x.dtype != np.float32:
            keep.append(node)
            continue
        scale, zero = value(node.input[1]), value(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if scale.ndim:
            shape[axis] = -1
        codes = np.clip(np.rint(x / scale.reshape(shape)) + zero.reshape(shape).astype(np.float32), -128, 127).astype(zero.dtype)
        model.graph.initializer.append(numpy_helper.from_array(codes, node.output[0]))
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


def export_qdq(qmodel: nn.Module, out: str | Path, image_shape: tuple[int, int, int] = (3, 32, 32), activations: str = "int8") -> Path:
    """Write the 8-bit quantized ``qmodel`` as an ONNX QDQ model taking ``input`` (N x C x H x W, N dynamic) and
    returning ``logits``; int8 weights are stored as initializers, activations as ``activations`` (``int8`` or
    ``uint8``, the same grid). Returns ``out``."""
    import onnx

    if activations not in ACTIVATION_OFFSET:
        raise ValueError(f"activations must be one of {list(ACTIVATION_OFFSET)}, got {activations!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = qdq_network(qmodel, activations)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (torch.zeros(1, *image_shape),),
            str(tmp),
            opset_version=QDQ_OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load(str(tmp))
    fold_weight_quantization(model)
    unused = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out
