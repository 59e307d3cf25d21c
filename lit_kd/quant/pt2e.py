"""PyTorch INT8 through PT2E: ``torch.export`` + torchao's ``X86InductorQuantizer``, run through ``torch.compile``.

PT2E is PyTorch's maintained quantization flow (``torch.ao.quantization``'s eager and FX modes are deprecated); its
entry points live in torchao (``torchao.quantization.pt2e``), not in torch 2.14. The network is captured with
``torch.export.export`` (batch dimension dynamic), annotated by ``X86InductorQuantizer`` with its default config
(per-channel symmetric int8 weights, uint8 activations on 0..255, histogram observers for PTQ, moving-average
fake-quantize for QAT), calibrated or trained, and converted (``convert_pt2e``) to a program of quantize/dequantize
ops around float ops. That program runs as it is (a reference, float arithmetic on int8 values) or through
:func:`compile_int8` (``torch.compile`` with Inductor freezing), which fuses the patterns into oneDNN INT8 kernels.

The converted program is saved with ``torch.export.save`` (:func:`save_program`, a ``.pt2`` zip archive of a JSON
graph and raw tensors) and read back by :func:`load_program`, which first refuses any archive entry that would be
unpickled.
"""

from __future__ import annotations

import copy
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from lit_kd.quant.ptq import calibration_batches, check_supported

FLOWS = ("pt2e", "fx")
PROGRAM_SUFFIX = ".pt2"
INT8_PROGRAM_FILE = "int8_model.pt2"
MAX_BATCH = 1 << 16


def check_flow(flow: str) -> str:
    """``flow`` when it is one of :data:`FLOWS` (PyTorch's quantization flows); a one-line ValueError otherwise."""
    if flow not in FLOWS:
        raise ValueError(f"unknown quantization flow {flow!r}; expected one of: {', '.join(FLOWS)}")
    return flow


def _torchao():
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as err:
        raise ImportError(f"the pt2e backend needs torchao (pip install torchao): {err}") from None
    return quantize_pt2e, x86_inductor_quantizer


def x86_quantizer(qat: bool = False, reduce_range: bool = False):
    """torchao's ``X86InductorQuantizer`` with its default (QAT) config on every op it supports."""
    _, x86 = _torchao()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range))
    return quantizer


def example_input(input_shape, device=None) -> torch.Tensor:
    """An example batch for export: at least 2 images (a batch of 1 would fix the batch dimension at 1)."""
    shape = tuple(input_shape)
    return torch.zeros(max(2, shape[0]), *shape[1:], device=device)


def batch_dim() -> tuple[dict]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def export(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> torch.fx.GraphModule:
    """``model`` captured by ``torch.export.export`` on ``example`` (in the model's current train/eval mode), as a
    module; the batch dimension stays dynamic unless ``dynamic_batch`` is False."""
    return torch.export.export(model, (example,), dynamic_shapes=batch_dim() if dynamic_batch else None).module()


def quantize_pt2e_ptq(
    model: nn.Module, calib_data: Iterable, calib_batches: int | None = None, compile: bool = False, reduce_range: bool = False
) -> nn.Module:
    """An INT8 copy of ``model`` (static PTQ, calibrated on ``calib_data``): the converted quantize/dequantize
    program, or with ``compile`` that program through :func:`compile_int8` (INT8 kernels)."""
    quantize_pt2e, _ = _torchao()
    check_supported(model)
    batches = [x.cpu() for x in calibration_batches(calib_data, calib_batches)]
    first = batches[0]
    example = first[:2] if len(first) >= 2 else first.expand(2, *first.shape[1:])  # a batch of 1 would fix the size
    captured = export(copy.deepcopy(model).cpu().eval(), example)
    prepared = quantize_pt2e.prepare_pt2e(captured, x86_quantizer(reduce_range=reduce_range))
    with torch.no_grad():
        for x in batches:
            prepared(x)
    converted = allow_mode_calls(quantize_pt2e.convert_pt2e(prepared))
    return compile_int8(converted) if compile else converted


def allow_mode_calls(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``program`` with ``train()`` / ``eval()`` setting the flag only (torchao replaces them by methods that raise;
    a converted program computes the same in either mode)."""
    for name in ("train", "eval"):
        program.__dict__.pop(name, None)
    return program


class CompiledInt8(nn.Module):
    """A converted PT2E program run through ``torch.compile`` with Inductor freezing (which is what turns its
    quantize/dequantize patterns into INT8 kernels), always without autograd. Compiles on the first call of each
    batch shape."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.compiled = torch.compile(program)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config

        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self.compiled(x)


def compile_int8(program: nn.Module) -> nn.Module:
    return CompiledInt8(program)


class QatProgram(nn.Module):
    """A PT2E QAT program (``program``) whose BatchNorm and dropout ops take the form its ``training`` flag says at
    each call. Lightning switches modes by ``eval()`` and restores them by setting ``training`` directly; torchao's
    ``allow_exported_model_train_eval`` follows neither the flag nor the restore, and a forward pre-hook would act one
    call late (the module's ``forward`` is bound before hooks run)."""

    untappable = (
        "a PT2E QAT program calls no submodules (its graph is inlined), so forward hooks see no features; "
        "use QuantizationAwareTraining(flow='fx') for a distillation loss on features"
    )

    def __init__(self, program: torch.fx.GraphModule):
        super().__init__()
        self.program = allow_mode_calls(program)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        set_form(self.program, self.training)
        return self.program(x)


def set_form(program: torch.fx.GraphModule, training: bool) -> None:
    """Rewrite an exported program's BatchNorm and dropout ops into their train or eval form (nothing when already
    so), keeping the global random state (torchao draws random example inputs to match the patterns), so that a
    resumed run draws what an uninterrupted one does."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.export_utils import _EXPORTED_TRAINING_ATTR

    if getattr(program, _EXPORTED_TRAINING_ATTR, True) != training:
        with torch.random.fork_rng(devices=[]):
            (move_exported_model_to_train if training else move_exported_model_to_eval)(program)


def prepare_qat(network: nn.Module, input_shape, reduce_range: bool = False) -> QatProgram:
    """``network`` exported in train mode and prepared for QAT (``prepare_qat_pt2e``): conv + BatchNorm fused into a
    trainable pattern, fake-quantize modules on weights and activations, in a :class:`QatProgram`. Parameter names
    are the network's under ``program.``, the fake-quantize modules ``program.activation_post_process_<i>``, the same
    for every call, so a checkpoint's state dict loads into a new one. BatchNorm's ``num_batches_tracked`` counts
    eval-mode calls too (its increment is a separate graph op; unused with a ``momentum``)."""
    quantize_pt2e, _ = _torchao()
    device = next(network.parameters()).device
    with torch.random.fork_rng(devices=[]):  # torchao draws random example inputs to match patterns
        captured = export(network.train(), example_input(input_shape, device))
        prepared = quantize_pt2e.prepare_qat_pt2e(captured, x86_quantizer(qat=True, reduce_range=reduce_range))
    return QatProgram(prepared).train()


def fake_quantizers(prepared: nn.Module) -> list[nn.Module]:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]


def set_observers(prepared: nn.Module, enabled: bool) -> None:
    """Let the fake-quantize modules of a PT2E QAT program move their ranges (or stop them)."""
    for m in fake_quantizers(prepared):
        m.enable_observer(enabled)


def activation_ranges_observed(prepared: nn.Module) -> bool:
    """Whether every observer of a PT2E QAT program has seen data (not so after zero QAT steps)."""
    observers = [m.activation_post_process for m in fake_quantizers(prepared)]
    return all(o.min_val.numel() > 0 and bool(torch.isfinite(o.min_val).all()) for o in observers if hasattr(o, "min_val"))


def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every range of a PT2E QAT program from ``batches`` in eval mode (BatchNorm untouched), each the mean of the
    per-batch ranges; restores the mode and the observer switches. Returns the number of batches used."""
    fake_quants = [m for m in fake_quantizers(prepared) if hasattr(m.activation_post_process, "averaging_constant")]
    from lit_kd.quant.torch_qat import calibrate_fake_quants

    return calibrate_fake_quants(prepared, fake_quants, batches)


def convert_qat(prepared: nn.Module) -> torch.fx.GraphModule:
    """The converted INT8 program of a PT2E QAT program (a copy, on the CPU, BatchNorm in eval form)."""
    quantize_pt2e, _ = _torchao()
    network = copy.deepcopy(prepared.program if isinstance(prepared, QatProgram) else prepared).cpu()
    set_form(network, training=False)
    return allow_mode_calls(quantize_pt2e.convert_pt2e(network))


def save_program(program: nn.Module, path: str | Path, input_shape=(1, 3, 32, 32)) -> Path:
    """Write a converted program (:func:`quantize_pt2e_ptq`, :func:`convert_qat`) with ``torch.export.save``,
    atomically; the batch dimension stays dynamic."""
    import io

    from lit_kd.atomic import write_bytes

    program = program.program if isinstance(program, CompiledInt8) else program
    exported = torch.export.export(program, (example_input(input_shape),), dynamic_shapes=batch_dim())
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return write_bytes(path, buffer.getvalue())


_PLAIN = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}


def _config_problems(name: str, config: dict) -> list[str]:
    return [
        f"{name}:{fqn}"
        for fqn, meta in config.items()
        if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))
    ]


def _sample_inputs_problem(name: str, data: bytes) -> list[str]:
    import io

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return [name]
    return []


def unsafe_entries(path: str | Path) -> list[str]:
    """Entries of a ``torch.export.save`` archive that ``torch.export.load`` would unpickle, or that this check does
    not know: everything but the archive markers, the JSON graphs and configs, raw weight and tensor-constant files,
    and sample inputs that load with ``weights_only=True``. A program of plain tensors has none."""
    found = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            rel = name.split("/", 1)[1] if "/" in name else name
            folder, _, base = rel.rpartition("/")
            if rel in _PLAIN or (folder == "models" and base.endswith(".json")):
                continue
            if folder in ("data/weights", "data/constants") and base.endswith("_config.json"):
                found += _config_problems(name, json.loads(archive.read(name)).get("config", {}))
            elif (folder, base[:7]) == ("data/weights", "weight_") or (folder, base[:7]) == ("data/constants", "tensor_"):
                continue
            elif folder == "data/sample_inputs" and base.endswith(".pt"):
                found += _sample_inputs_problem(name, archive.read(name))
            else:
                found.append(name)
    return found


PROGRAM_EXPECTED = "expected a PT2E INT8 program of plain tensors as lit-kd writes (lit_kd.quant.pt2e.save_program)"


def load_program(path: str | Path) -> nn.Module:
    """The converted program saved by :func:`save_program`, as a module. An archive with an entry that would be
    unpickled (see :func:`unsafe_entries`) is refused with a one-line ValueError naming the file and what was expected,
    so loading a file runs no code from it; so is a file that is no ``torch.export`` archive."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a torch.export archive (.pt2); {PROGRAM_EXPECTED}")
    unsafe = unsafe_entries(path)
    if unsafe:
        raise ValueError(f"{str(path)!r} has entries that are unknown or would be unpickled ({', '.join(unsafe[:3])}); {PROGRAM_EXPECTED}")
    _torchao()  # registers the quantize/dequantize ops the graph calls (a fresh process has not imported torchao yet)
    try:
        program = torch.export.load(path).module()
    except Exception as err:  # torch.export raises KeyError, RuntimeError, SerializeError ... for archives it cannot read
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{str(path)!r} is not a program torch.export.load can read ({detail}); {PROGRAM_EXPECTED}") from None
    return allow_mode_calls(program)
