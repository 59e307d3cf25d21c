"""What a per-layer weight-width allocation costs, for the mixed-precision search (:mod:`lit_kd.quant.bit_search`).

Cost: ``bits`` is the weights' storage, sum of parameters x width; ``bops`` is sum of MACs x weight width x
activation width (Baskin et al.), both counted over the quantized layers. :func:`layer_facts` counts a model's
parameters and MACs per layer; :func:`average_bits` and :func:`size_bytes` summarize an allocation for reports.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lit_kd.quant.ptq import execution_order, fold_batchnorm

COSTS = ("bits", "bops")


def layer_facts(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """Parameters of the weight and MACs per output, per quantizable layer in execution order.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> layer_facts(model, torch.randn(2, 3, 8, 8))
        {'0': {'params': 108, 'macs': 3888}, '3': {'params': 1440, 'macs': 1440}}
    """
    folded = fold_batchnorm(model)
    order = execution_order(folded, example[:1])
    shapes: dict[str, tuple] = {}

    def record(path: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output stays as it is
            shapes[path] = tuple(output.shape)

        return hook

    handles = [folded.get_submodule(p).register_forward_hook(record(p)) for p in order]
    with torch.no_grad():
        folded(example[:1])
    for h in handles:
        h.remove()
    facts = {}
    for path in order:
        weight = folded.get_submodule(path).weight
        spatial = math.prod(shapes[path][2:]) if len(shapes[path]) > 2 else 1
        facts[path] = {"params": weight.numel(), "macs": weight.numel() * spatial}
    return facts


def allocation_cost(weight_bits: dict[str, int], act_bits: int | dict[str, int], layers: dict[str, dict], kind: str) -> float:
    """Weight bits (``bits``) or bit operations (``bops``: MACs x weight width x activation width, per layer).

    Example::

        >>> layers = {"conv1": {"params": 100, "macs": 1000}, "linear": {"params": 50, "macs": 50}}
        >>> allocation_cost({"conv1": 8, "linear": 4}, 8, layers, "bits")
        1000.0
        >>> allocation_cost({"conv1": 8, "linear": 4}, {"conv1": 8, "linear": 4}, layers, "bops")
        64800.0
    """
    if kind == "bits":
        return float(sum(layers[p]["params"] * b for p, b in weight_bits.items()))
    act = act_bits if isinstance(act_bits, dict) else dict.fromkeys(weight_bits, act_bits)
    return float(sum(layers[p]["macs"] * b * act[p] for p, b in weight_bits.items()))


def average_bits(weight_bits: dict[str, int], layers: dict[str, dict]) -> float:
    """Parameter-weighted average weight width.

    Example::

        >>> layers = {"conv1": {"params": 100, "macs": 1000}, "linear": {"params": 300, "macs": 300}}
        >>> average_bits({"conv1": 8, "linear": 4}, layers)
        5.0
    """
    total = sum(layers[p]["params"] for p in weight_bits)
    return sum(layers[p]["params"] * b for p, b in weight_bits.items()) / total


def size_bytes(weight_bits: dict[str, int], layers: dict[str, dict]) -> float:
    """Storage of the quantized layers' weights (scales and biases not counted).

    Example::

        >>> layers = {"conv1": {"params": 100, "macs": 1000}, "linear": {"params": 300, "macs": 300}}
        >>> size_bytes({"conv1": 8, "linear": 4}, layers)
        250.0
    """
    return sum(layers[p]["params"] * b for p, b in weight_bits.items()) / 8
