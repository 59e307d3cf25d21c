"""OpenVINO as an engine (the optional extra ``openvino``): IR files from ONNX models or networks, and a compiled IR
called like a network.

- :func:`convert` reads an ``.onnx`` file, an ``.xml`` IR or an ``nn.Module`` into an ``openvino.Model``
  (``openvino.convert_model``); :func:`save_ir` writes ``model.xml`` + ``model.bin`` (FP32 weights kept as they are:
  no FP16 compression, so an FP32 IR classifies like its source).
- :class:`OpenVinoNetwork` compiles an IR on the CPU (``INFERENCE_NUM_THREADS``, or the ``THROUGHPUT`` hint) and
  runs float images (N, 3, H, W) to logits (``lit-kd classify --ckpt model.xml``). Float layers run in f32
  (``INFERENCE_PRECISION_HINT``): the plugin's default is bf16 on CPUs with AVX-512 BF16 or AMX, which changed 0.2 %
  of the teacher's top-1 predictions here.
- :func:`openvino_runner` is the timing entry of :mod:`lit_kd.speed`; :func:`kernel_precisions` says in which
  precision the compiled convolutions and fully connected layers run (an INT8 file whose layers run in f32 is not an
  INT8 model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lit_kd.compat.extras import require

IR_SUFFIX = ".xml"
HINTS = ("LATENCY", "THROUGHPUT")


def _openvino(feature: str):
    require("openvino", feature)
    import openvino

    return openvino


def convert(source: str | Path | nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32)):
    """An ``openvino.Model`` of an ``.onnx`` file, an ``.xml`` IR or a float network (batch dimension dynamic)."""
    ov = _openvino("converting a model to OpenVINO")
    if isinstance(source, nn.Module):
        network = source.cpu().eval()
        model = ov.convert_model(network, example_input=torch.zeros(1, *image_shape))
        model.reshape([-1, *image_shape])
        return model
    path = Path(source)
    if path.suffix.lower() == IR_SUFFIX:
        return ov.Core().read_model(str(path))
    return ov.convert_model(str(path))


def save_ir(model, out: str | Path) -> Path:
    """Write ``model`` (an ``openvino.Model``) as ``out`` (``.xml``) and its ``.bin`` beside it; returns ``out``."""
    ov = _openvino("writing an OpenVINO IR")
    out = Path(out)
    if out.suffix.lower() != IR_SUFFIX:
        raise ValueError(f"an OpenVINO IR is written as a .xml file (and its .bin), got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [o.get_names() for o in model.outputs]
    if len(model.outputs) == 1 and "logits" not in names[0]:
        model.outputs[0].get_tensor().set_names({"logits"})
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def compile_ir(model, threads: int | None = None, hint: str | None = None):
    """A CPU-compiled model: ``threads`` inference threads and/or a performance ``hint`` (LATENCY or THROUGHPUT)."""
    ov = _openvino("running an OpenVINO model")
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # else bf16 on CPUs with AVX-512 BF16 / AMX: FP32 layers drift
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if hint:
        if hint not in HINTS:
            raise ValueError(f"unknown OpenVINO performance hint {hint!r}; expected one of {HINTS}")
        config["PERFORMANCE_HINT"] = hint
    core = ov.Core()
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    return core.compile_model(model, "CPU", config)


class OpenVinoNetwork(nn.Module):
    """An OpenVINO IR (or ``openvino.Model``) compiled for the CPU, called like a network: float images in, logits out."""

    def __init__(self, model, threads: int | None = None):
        super().__init__()
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.with_suffix(".bin").is_file():
                raise FileNotFoundError(f"{str(path)!r} has no weights file {path.with_suffix('.bin').name!r} beside it")
        self.compiled = compile_ir(model, threads)
        self.request = self.compiled.create_infer_request()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().float().numpy())
        out = self.request.infer({0: x})
        return torch.from_numpy(np.array(out[self.compiled.output(0)]))


def openvino_runner(path: str | Path, cores: int, hint: str | None = None) -> Callable[[np.ndarray], object]:
    """``run(x)`` for timing: a synchronous infer request on a model compiled with ``cores`` threads (and ``hint``).
    With the THROUGHPUT hint, the batch is split into one request per stream the plugin chose, run asynchronously."""
    compiled = compile_ir(path, None if hint == "THROUGHPUT" else cores, hint)
    if hint != "THROUGHPUT":
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})
    ov = _openvino("running an OpenVINO model")
    streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = ov.AsyncInferQueue(compiled, streams)

    def run(x: np.ndarray) -> None:
        for part in np.array_split(x, min(streams, len(x))):
            queue.start_async({0: np.ascontiguousarray(part)})
        queue.wait_all()

    return run


def ir_problem(flag: str, path: str) -> str | None:
    """Why ``path`` is not an OpenVINO IR that reads (``.xml`` with its ``.bin``); None when it is."""
    p = Path(path)
    if not p.with_suffix(".bin").is_file():
        bin_name = p.with_suffix(".bin").name
        return f"{flag} {path!r} has no weights file {bin_name!r} beside it; expected an IR written by lit-kd export or ptq"
    try:
        convert(p)
    except ImportError:
        raise
    except Exception as err:  # openvino raises RuntimeError subclasses for unreadable IR
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return f"{flag} {path!r} is not an OpenVINO IR that OpenVINO can read ({detail})"
    return None


def kernel_precisions(source) -> dict[str, int]:
    """How many Convolution / FullyConnected layers of ``source`` (a path or ``openvino.Model``), compiled for the CPU,
    run in each precision: ``{"Convolution u8": 19, "FullyConnected u8": 1}``. Read from the compiled model's runtime
    graph (``layerType`` and ``runtimePrecision``)."""
    ov = _openvino("reading OpenVINO runtime precisions")
    compiled = ov.Core().compile_model(source if not isinstance(source, (str, Path)) else str(source), "CPU")
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            key = f"{layer} {info['runtimePrecision'].astype(str) if 'runtimePrecision' in info else 'unknown'}"
            counts[key] = counts.get(key, 0) + 1
    return counts
