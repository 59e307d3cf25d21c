"""Our own post-training quantization: ``quantize(model, calib_data, ...)`` returns a simulated-quantized copy.

Steps: check that every layer with parameters is one we can handle; fold BatchNorm into the preceding conv
(``torch.fx`` tracing, then ``torch.fx.experimental.optimization.fuse``); wrap each Conv2d/Linear in a
:class:`QuantizedLayer`; collect activation statistics over the calibration batches with the float weights; weight
statistics in one pass; round weights to nearest or learn the rounding (AdaRound); optionally correct the bias
shift that quantization causes (empirical bias correction, Nagel et al. 2019, section 4.2). Layers are processed in
execution order, each seeing the already-quantized layers before it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lit_kd.quant.adaround import adaround
from lit_kd.quant.affine import check_bits
from lit_kd.quant.layers import WEIGHTED_LAYERS, ActivationQuantizer, QuantizedLayer
from lit_kd.quant.observers import OBSERVERS, make_observer

HANDLED_WITH_PARAMETERS = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
ROUNDINGS = ("nearest", "adaround")


def check_supported(model: nn.Module) -> None:
    """A clear error naming the first module with parameters or buffers of a type the quantizer cannot handle."""
    for path, module in model.named_modules():
        if isinstance(module, HANDLED_WITH_PARAMETERS):
            continue
        own = [n for n, t in list(module._parameters.items()) + list(module._buffers.items()) if t is not None]
        if own:
            raise ValueError(
                f"cannot quantize module {path or '<root>'!r} ({type(module).__name__}, holding {own}): the quantizer "
                "handles Conv2d, Linear and BatchNorm (folded) plus parameter-free layers (activations, pooling, "
                "residual additions)"
            )


def calibration_batches(calib_data: Iterable, max_batches: int | None = None) -> list[Tensor]:
    """The input tensors of ``calib_data`` (an iterable of input batches or of (input, label) batches)."""
    batches = []
    for batch in calib_data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration batches must be tensors or (input, label) pairs, got {type(x).__name__}")
        batches.append(x)
        if max_batches is not None and len(batches) >= max_batches:
            break
    if not batches:
        raise ValueError("calibration data is empty: expected an iterable of input batches or (input, label) batches")
    return batches


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with each BatchNorm that directly follows a conv folded into the conv."""
    from torch.fx.experimental.optimization import fuse

    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as err:
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx to fold BatchNorm ({type(err).__name__}: {err}); "
            "pass fold_bn=False to quantize without folding"
        ) from err
    return fuse(traced).eval()


def capture(model: nn.Module, module: nn.Module, batches: list[Tensor], what: str) -> Tensor:
    """The ``input`` or ``output`` of ``module`` for every calibration batch run through ``model``, concatenated."""
    seen: list[Tensor] = []

    def hook(_module, inputs, output):
        seen.append((inputs[0] if what == "input" else output).detach())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        handle.remove()
    return torch.cat(seen)


def execution_order(model: nn.Module, example: Tensor) -> list[str]:
    """Paths of the Conv2d/Linear layers in the order a forward pass calls them (each once)."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name) if name not in order else None)
        for name, m in model.named_modules()
        if isinstance(m, WEIGHTED_LAYERS)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def following_relu(model: nn.Module, path: str) -> Callable[[Tensor], Tensor] | None:
    """``F.relu`` when the output of the layer at ``path`` goes only into a ReLU in ``model``'s ``torch.fx`` graph,
    else None (also for models that are not traced, ``fold_bn=False``)."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op == "call_module" and node.target == path:
            users = list(node.users)
            return F.relu if len(users) == 1 and _is_relu(model, users[0]) else None
    return None


def _is_relu(model: nn.Module, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


Bits = int | Mapping[str, int | None]


def bits_per_layer(bits: Bits, order: list[str], what: str) -> dict[str, int | None]:
    """Widths by layer path from an int (every layer) or a mapping ``{"default": 4, "layer3.0.conv1": 2, ...}``
    (``default`` for the layers not named; without it every layer must be named). ``None`` leaves a layer in float."""
    if not isinstance(bits, Mapping):
        return {path: check_bits(bits, what) for path in order}
    unknown = sorted(set(bits) - set(order) - {"default"})
    if unknown:
        raise ValueError(f"{what}: {unknown} are not quantizable layers of the model; its Conv2d/Linear layers are {order}")
    missing = [p for p in order if p not in bits]
    if missing and "default" not in bits:
        raise ValueError(f"{what}: no width for {missing}; name every layer or give a 'default'")
    widths = {path: bits.get(path, bits.get("default")) for path in order}
    return {path: None if b is None else check_bits(b, f"{what} of {path}") for path, b in widths.items()}


def quantize(
    model: nn.Module,
    calib_data: Iterable,
    weight_bits: Bits = 8,
    act_bits: Bits = 8,
    observer: str = "minmax",
    per_channel: bool = True,
    rounding: str = "nearest",
    *,
    weight_observer: str | None = None,
    symmetric_weights: bool = True,
    symmetric_activations: bool = False,
    keep_first_last_8bit: bool = False,
    bias_correction: bool = False,
    calib_batches: int | None = None,
    fold_bn: bool = True,
    adaround_iterations: int = 1000,
    adaround_samples: int = 1024,
) -> nn.Module:
    """A simulated-quantized copy of ``model`` (eval mode; ``model`` itself is left untouched).

    Args:
        calib_data: iterable of input batches or (input, label) batches, already normalised as the model expects.
        weight_bits, act_bits: bit widths from 2 to 16 for weights and for activations entering weighted layers; an
            int for every layer, or a mapping from layer path to width with an optional ``default`` (mixed precision);
            ``None`` as a layer's weight width leaves that layer in float (not wrapped, not calibrated).
        observer: activation observer (``minmax``, ``moving_average``, ``percentile``, ``mse``); weights use the
            same unless ``weight_observer`` is given (``moving_average`` means ``minmax`` for weights).
        per_channel: one scale per output channel for weights (else one per tensor).
        rounding: ``nearest`` or ``adaround`` (learned rounding, ``adaround_iterations`` steps per layer on at most
            ``adaround_samples`` calibration images).
        symmetric_weights, symmetric_activations: signed grid with zero point 0, or unsigned grid with zero point.
        keep_first_last_8bit: first and last weighted layers at 8-bit weights and inputs (published PTQ convention).
        bias_correction: subtract the mean output shift each quantized layer causes on the calibration data.
        calib_batches: use at most this many batches of ``calib_data``.
        fold_bn: fold BatchNorm into the preceding conv before quantizing weights.
    """
    if not isinstance(weight_bits, Mapping):
        check_bits(weight_bits, "weight bit width")
    if not isinstance(act_bits, Mapping):
        check_bits(act_bits, "activation bit width")
    for name in (observer, weight_observer or observer):
        if name not in OBSERVERS:
            raise ValueError(f"unknown observer {name!r}; expected one of {list(OBSERVERS)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {list(ROUNDINGS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    counts = {"calib_batches": calib_batches, "adaround_iterations": adaround_iterations, "adaround_samples": adaround_samples}
    for what, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    check_supported(model)
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(
            f"model {type(model).__name__} has no parameters: nothing to quantize (expected a network with Conv2d or Linear layers)"
        )
    device = first.device
    batches = [x.to(device) for x in calibration_batches(calib_data, calib_batches)]

    float_model = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    qmodel = copy.deepcopy(float_model)
    try:
        order = execution_order(qmodel, batches[0][:2])
    except RuntimeError as err:
        raise ValueError(
            f"calibration batches of shape {tuple(batches[0].shape)} do not fit {type(model).__name__}: {str(err).splitlines()[0]}"
        ) from err
    if not order:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")

    wbits, abits = bits_per_layer(weight_bits, order, "weight bit width"), bits_per_layer(act_bits, order, "activation bit width")
    layers: dict[str, QuantizedLayer] = {}
    for path in order:
        wide = keep_first_last_8bit and path in (order[0], order[-1])
        wb, ab = (8, 8) if wide else (wbits[path], abits[path])
        if wb is None:
            continue
        if ab is None:
            raise ValueError(f"activation bit width of {path}: None (float) is only allowed where the weights stay float too")
        quantizer = ActivationQuantizer(make_observer(observer), ab, symmetric_activations)
        layers[path] = QuantizedLayer(qmodel.get_submodule(path), quantizer, wb, symmetric_weights)
        _replace(qmodel, path, layers[path])

    # activation statistics, float weights
    for layer in layers.values():
        layer.input_quantizer.observing = True
    with torch.no_grad():
        for x in batches:
            qmodel(x)
    for layer in layers.values():
        layer.input_quantizer.calibrate()

    # weight statistics in one pass, rounding to nearest
    wobs_name = weight_observer or ("minmax" if observer == "moving_average" else observer)
    for layer in layers.values():
        wobs = make_observer(wobs_name, axis=0 if per_channel else None).to(device)
        weight = layer.layer.weight.detach()
        wobs(weight)
        layer.set_weight_qparams(*wobs.qparams(layer.weight_bits, layer.weight_symmetric))
        layer.float_weight = weight.clone()  # plain attribute: not part of the state dict
        layer.set_weight_codes(layer.weight_codes(weight))

    if rounding == "adaround":
        sample = _limit(batches, adaround_samples)
        for path, layer in layers.items():
            with torch.no_grad():
                layer.layer.weight.copy_(layer.float_weight)
            inputs = capture(qmodel, layer, sample, "input")
            targets = capture(float_model, float_model.get_submodule(path), sample, "output")
            activation = following_relu(float_model, path)
            result = adaround(layer, inputs, targets, iterations=adaround_iterations, activation=activation)
            layer.set_weight_codes(result.codes)
            layer.rounding = result.kept

    if bias_correction:
        for path, layer in layers.items():
            expected = _channel_mean(capture(float_model, float_model.get_submodule(path), batches, "output"))
            actual = _channel_mean(capture(qmodel, layer, batches, "output"))
            if layer.layer.bias is None:
                layer.layer.bias = nn.Parameter(torch.zeros_like(expected))
            with torch.no_grad():
                layer.layer.bias += expected - actual

    for layer in layers.values():
        del layer.float_weight
    return qmodel.eval()


def _limit(batches: list[Tensor], samples: int) -> list[Tensor]:
    out, n = [], 0
    for x in batches:
        if n >= samples:
            break
        out.append(x[: samples - n])
        n += len(out[-1])
    return out


def _channel_mean(y: Tensor) -> Tensor:
    """Mean over every dimension but the channel dimension (1)."""
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    """The :class:`QuantizedLayer` modules of a quantized model, by path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, QuantizedLayer)}
