"""NNCF post-training quantization (OpenVINO), the baseline beside our own PTQ (the optional extra ``openvino``).

:func:`nncf_quantize` converts a float network to OpenVINO and quantizes it to INT8 with ``nncf.quantize`` (preset
``performance``: symmetric activations, NNCF's default; ``mixed``: asymmetric activations), calibrated on the very
images our PTQ calibrates on (one image per NNCF sample, every image used). With ``max_drop`` (points) and held-out
images it runs ``nncf.quantize_with_accuracy_control`` instead: layers go back to float until top-1 accuracy on
the held-out images is within ``max_drop`` of FP32 (absolute drop, the budget of our mixed-precision search). The
result is an ``openvino.Model`` (run it with :class:`lit_kd.openvino_engine.OpenVinoNetwork`, write it with
:func:`lit_kd.openvino_engine.save_ir`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from lit_kd.compat.extras import require
from lit_kd.openvino_engine import OpenVinoNetwork, convert

PRESETS = ("performance", "mixed")


def _images(batches: Iterable) -> list[np.ndarray]:
    """One float32 array of shape (1, C, H, W) per image of ``batches`` (tensors or (images, labels) pairs)."""
    items = []
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        items += [np.ascontiguousarray(x[i : i + 1].cpu().float().numpy()) for i in range(len(x))]
    if not items:
        raise ValueError("NNCF quantization needs calibration images, got none")
    return items


def method_name(preset: str, max_drop: float | None = None) -> str:
    """The ``method`` of a PTQ table row: ``nncf performance``, ``nncf mixed``, ``nncf accuracy control (<= 1.00 pts)``."""
    if max_drop is not None:
        return f"nncf {preset} + accuracy control (<= {max_drop:.2f} pts)"
    return f"nncf {preset}"


def nncf_quantize(
    network: nn.Module,
    calib: Iterable,
    preset: str = "performance",
    max_drop: float | None = None,
    held_out: list | None = None,
    threads: int | None = None,
):
    """An INT8 ``openvino.Model`` of ``network`` (see the module docstring). ``held_out`` is a list of (images,
    labels) batches, needed with ``max_drop`` (in accuracy points, e.g. 1.0)."""
    require("nncf", "NNCF post-training quantization")
    import nncf

    if preset not in PRESETS:
        raise ValueError(f"unknown NNCF preset {preset!r}; expected one of {PRESETS}")
    items = _images(calib)
    logging.getLogger("nncf").setLevel(logging.WARNING)
    model = convert(network)
    dataset = nncf.Dataset(items)
    kind = nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    if max_drop is None:
        return nncf.quantize(model, dataset, preset=kind, subset_size=len(items))
    if max_drop < 0:
        raise ValueError(f"max_drop is an accuracy budget in points, >= 0; got {max_drop}")
    if not held_out:
        raise ValueError("NNCF accuracy control needs held-out (images, labels) batches to validate on, got none")
    pairs = [(x.cpu().float().numpy(), y.cpu().numpy()) for x, y in held_out]

    def validate(compiled, data) -> float:
        correct = total = 0
        for x, y in data:
            logits = compiled(x)[0]
            correct += int((np.argmax(logits, axis=1) == y).sum())
            total += len(y)
        return correct / total

    return nncf.quantize_with_accuracy_control(
        model,
        dataset,
        nncf.Dataset(pairs, lambda item: item[0]),
        validation_fn=validate,
        max_drop=max_drop / 100,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=kind,
        subset_size=len(items),
    )


def nncf_network(network: nn.Module, calib: Iterable, threads: int | None = None, **options) -> tuple[nn.Module, object]:
    """:func:`nncf_quantize` compiled for the CPU with ``threads`` threads: (callable network, ``openvino.Model``)."""
    model = nncf_quantize(network, calib, threads=threads, **options)
    with torch.no_grad():
        return OpenVinoNetwork(model, threads), model
