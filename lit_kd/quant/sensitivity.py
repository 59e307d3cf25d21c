"""Per-layer quantization sensitivity, the first step of the mixed-precision search (:mod:`lit_kd.quant.bit_search`).

For every Conv2d/Linear layer and candidate width, :func:`layer_sensitivity` quantizes that layer alone (its weights
at the width, its input at its activation width; every other layer left in float) and measures the increase of the
cross-entropy on the evaluation images over the float model (:func:`evaluate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_kd.quant.precision_cache import SearchCache
from lit_kd.quant.ptq import execution_order, fold_batchnorm, quantize


def evaluate(model: nn.Module, batches: list) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``(images, labels)`` batches.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> acc, loss = evaluate(model, [(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]))])
        >>> acc, round(loss, 4)
        (0.5, 1.5486)
    """
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            total += len(y)
    return correct / total, loss / total


def layer_sensitivity(
    model: nn.Module,
    calib: list,
    eval_batches: list,
    candidates: tuple[int, ...],
    act_bits: dict[str, int],
    quant_options: dict,
    cache: SearchCache,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, dict[int, float]]:
    """``{layer: {bits: loss increase}}`` with each layer quantized alone at each candidate width; widths already in
    ``cache`` are not measured again, each layer's new ones are added to it as soon as they are measured.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from lit_kd.quant.precision_cache import SearchCache
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
        >>> images = torch.randn(16, 3, 8, 8)
        >>> held_out = [(images, model(images).argmax(1))]
        >>> sens = layer_sensitivity(model, [images], held_out, (2, 8), {"0": 8, "3": 8}, {}, SearchCache(None, "k"))
        >>> {layer: sorted(by_width) for layer, by_width in sens.items()}
        {'0': [2, 8], '3': [2, 8]}
    """
    _, float_loss = evaluate(model, eval_batches)
    order = execution_order(fold_batchnorm(model), calib[0][:1])
    result: dict[str, dict[int, float]] = {}
    for path in order:
        cached = cache.sensitivity(path) or {}
        missing = [b for b in candidates if b not in cached]
        if missing:
            measured, start = {}, time.perf_counter()
            for bits in missing:
                qmodel = quantize(model, calib, {"default": None, path: bits}, {"default": None, path: act_bits[path]}, **quant_options)
                measured[bits] = evaluate(qmodel, eval_batches)[1] - float_loss
            cache.put_sensitivity(path, measured, time.perf_counter() - start)
            cached = {**cached, **measured}
        result[path] = {b: cached[b] for b in candidates}
        source = "" if missing == list(candidates) else f" ({len(candidates) - len(missing)} from {cache.path})"
        progress(f"sensitivity {path}: " + ", ".join(f"{b} bits {v:+.4f}" for b, v in result[path].items()) + source)
    return result
