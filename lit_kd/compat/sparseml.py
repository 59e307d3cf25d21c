"""sparseml 1.8 on torch 2.14: the two fixes it needs, in one place.

1. QConfig: sparseml tags each ``torch.quantization.QConfig`` it builds with ``qconfig.quantization_scheme = ...``.
   In torch 2.14 QConfig is a namedtuple subclass with ``__slots__ = ()``, so that assignment raises
   ``AttributeError: 'QConfig' object has no attribute 'quantization_scheme'`` and every QuantizationModifier
   fails. :func:`patch_sparseml_qconfig` points sparseml's quantization modules at a view of
   ``torch.quantization`` whose ``QConfig`` is a subclass without ``__slots__`` (so it has a ``__dict__``); it is
   still a torch QConfig for every ``isinstance`` check, and torch itself is left untouched.
2. ONNX export: ``torch.onnx.export`` defaults to the dynamo exporter in torch 2.14, which needs onnxscript and
   does not take sparseml's QAT graphs; sparseml passes ``export_kwargs`` through to ``torch.onnx.export``, so
   :data:`EXPORT_KWARGS` (``dynamo=False``, the TorchScript exporter sparseml was written for) goes with every export.

:func:`apply_sparseml_compat` applies both (idempotent); the SparseML callback and ``lit-kd export`` call it.
"""

from __future__ import annotations

import os
import types

import torch

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # sparseml/deepsparse send usage events unless told not to

EXPORT_KWARGS = {"dynamo": False}


class SchemeQConfig(torch.ao.quantization.QConfig):
    """A torch QConfig that can carry sparseml's ``quantization_scheme`` attribute (no ``__slots__``)."""


class _TorchQuantizationView(types.ModuleType):
    """``torch.quantization`` with ``QConfig`` replaced by :class:`SchemeQConfig`."""

    QConfig = SchemeQConfig

    def __getattr__(self, name: str):
        return getattr(torch.quantization, name)


def patch_sparseml_qconfig() -> None:
    from sparseml.pytorch.sparsification.quantization import helpers, quantization_scheme

    view = _TorchQuantizationView("torch.quantization (lit_kd view)")
    for module in (helpers, quantization_scheme):
        if not isinstance(module.torch_quantization, _TorchQuantizationView):
            module.torch_quantization = view


def apply_sparseml_compat() -> None:
    patch_sparseml_qconfig()
