"""torch.ao quantization-aware training (FX, x86): prepare a network, convert it to INT8, rebuild a saved INT8 model."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn
from torch.ao.quantization import (
    FakeQuantize,
    FakeQuantizeBase,
    MovingAverageMinMaxObserver,
    QConfig,
    QConfigMapping,
    get_default_qat_qconfig_mapping,
)

INT8_FILE = "int8_model.pt"


class Int8CodesFakeQuantize(FakeQuantize):
    """Activation fake-quantize that rounds onto the codes the converted INT8 model stores (quint8: 0..255), with the
    scale and zero point its observer computes on the reduced 0..127 range (``reduce_range``, x86 and fbgemm).

    ``convert_fx`` keeps only the scale and zero point, so INT8 kernels clip at code 255, about twice the observed
    maximum; torch's fake-quantize clips at code 127, the observed maximum itself, and trains a network that differs
    from its INT8 model wherever activations outgrow the lagging moving-average range. The reduced range is kept
    because it matters: without AVX-512 VNNI, x86 kernels add pairs of uint8 x int8 products in saturating int16
    (``vpmaddubsw``), exact only for activation codes below 128 (what the observed range maps to).
    """

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min: int = 0, quant_max: int = 255, **observer_kwargs):
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        self.codes = (quant_min, quant_max)  # the observer's quant_min/quant_max are the reduced range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self.calculate_qparams()
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            x = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *self.codes)
        return x


def qat_qconfig_mapping(backend: str) -> QConfigMapping:
    """torch's default QAT qconfig mapping for ``backend``, its reduced-range activation fake-quantizers (x86,
    fbgemm) replaced by :class:`Int8CodesFakeQuantize`; qnnpack and onednn already fake-quantize on 0..255."""
    mapping = get_default_qat_qconfig_mapping(backend)
    default = mapping.global_qconfig.activation
    if not default.p.keywords.get("reduce_range"):
        return mapping
    activation = Int8CodesFakeQuantize.with_args(**default.p.keywords)
    mapping.set_global(QConfig(activation=activation, weight=mapping.global_qconfig.weight))
    for pattern, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is not None and qconfig.activation is default:
            mapping.set_object_type(pattern, QConfig(activation=activation, weight=qconfig.weight))
    return mapping


def prepare_qat(network: nn.Module, backend: str, input_shape) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not available; this build has {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend
    device = next(network.parameters()).device
    example = torch.zeros(*input_shape, device=device)
    return prepare_qat_fx(network.train(), qat_qconfig_mapping(backend), (example,))


def activation_ranges_observed(prepared: nn.Module) -> bool:
    """Whether every activation observer of a QAT-prepared network has seen data (not so after zero QAT steps)."""
    observers = [m.activation_post_process for m in prepared.modules() if isinstance(m, FakeQuantizeBase) and m.dtype == torch.quint8]
    return all(bool(torch.isfinite(o.min_val).all()) for o in observers if hasattr(o, "min_val"))


def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every quantization range of a QAT-prepared network from ``batches`` of its input, as post-training
    quantization does: in eval mode (BatchNorm statistics untouched), each range the mean of the per-batch ranges (the
    moving averages restarted, with constant 1/k at batch k). Restores the modes and observer switches; returns the
    number of batches used."""
    fake_quants = [
        m for m in prepared.modules() if isinstance(m, FakeQuantizeBase) and hasattr(m.activation_post_process, "averaging_constant")
    ]
    return calibrate_fake_quants(prepared, fake_quants, batches)


def calibrate_fake_quants(prepared: nn.Module, fake_quants: list, batches: Iterable[torch.Tensor]) -> int:
    """Each range of ``fake_quants`` (in ``prepared``) the mean of the per-batch ranges over ``batches``, in eval mode;
    modes and observer switches restored. Returns the number of batches used."""
    saved = [(m.activation_post_process.averaging_constant, m.observer_enabled.clone()) for m in fake_quants]
    training = prepared.training
    prepared.eval()
    for m in fake_quants:
        m.observer_enabled.fill_(1)
    count = 0
    with torch.no_grad():
        for count, x in enumerate(batches, 1):
            for m in fake_quants:
                m.activation_post_process.averaging_constant = 1.0 / count
            prepared(x)
    for m, (constant, enabled) in zip(fake_quants, saved):
        m.activation_post_process.averaging_constant = constant
        m.observer_enabled.copy_(enabled)
    prepared.train(training)
    return count


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The real INT8 model of a QAT-prepared network (a copy, on the CPU, in eval mode)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(copy.deepcopy(prepared).cpu().eval()).eval()


class OnCpu(nn.Module):
    """A CPU-only module (a converted INT8 model) called with batches on any device: the batch goes to the CPU, the
    output comes back to the batch's device. Moving the wrapper (``.to(device)``, ``.cuda()``) leaves it on the CPU."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.detach().float().cpu()).to(x.device)

    def _apply(self, fn, recurse=True):
        return self


def save_int8_model(int8: nn.Module, recipe: dict, path: str | Path) -> Path:
    """Write ``int8_model.pt`` atomically: the converted state dict plus ``recipe`` (``network``,
    ``network_kwargs``, ``num_classes``, ``backend``, ``input_shape``: what :func:`load_int8_model` rebuilds it
    from). Tensors and plain data only, so it loads with ``weights_only=True``."""
    from lit_kd.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(dict(recipe) | {"state_dict": int8.state_dict()}, tmp)
    return Path(path)


REBUILD_NOTES = (  # UserWarnings torch emits while loading quantized tensors and converting an uncalibrated network
    "TypedStorage is deprecated",
    "torch.quantize_per_tensor, torch.quantize_per_channel",
    "Please use quant_min and quant_max",
    "must run observer before calling calculate_qparams",
)
INT8_KEYS = {"network", "num_classes", "backend", "input_shape", "state_dict"}


@contextlib.contextmanager
def quiet_rebuild():
    """Silence torch's notes on reading quantized tensors and on converting a network whose observers never ran
    (its quantization parameters are overwritten by the saved state dict right after)."""
    with warnings.catch_warnings():
        for message in REBUILD_NOTES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def is_int8_model(saved) -> bool:
    """Whether a loaded file is an INT8 model written by :func:`save_int8_model` (not a checkpoint)."""
    return isinstance(saved, dict) and INT8_KEYS <= set(saved) and "hyper_parameters" not in saved


def int8_model_from(saved: dict) -> nn.Module:
    """The INT8 model described by the content of an ``int8_model.pt`` (see :func:`save_int8_model`)."""
    from lit_kd.checkpoints import instantiate_network

    with quiet_rebuild():
        network = instantiate_network(saved["network"], saved["num_classes"], saved.get("network_kwargs"))
        int8 = convert_int8(prepare_qat(network, saved["backend"], saved["input_shape"]))
    int8.load_state_dict(saved["state_dict"])
    return int8


def load_int8_model(path: str | Path) -> nn.Module:
    """Rebuild the INT8 model saved by :class:`QuantizationAwareTraining` (``int8_model.pt``); read with
    :func:`lit_kd.checkpoints.safe_load` (a file with pickled objects is refused)."""
    from lit_kd.checkpoints import safe_load

    with quiet_rebuild():
        return int8_model_from(safe_load(path))
