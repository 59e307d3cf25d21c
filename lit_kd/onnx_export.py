"""ONNX export of a trained network and its validation in ONNX Runtime and DeepSparse (:func:`export_checkpoint`:
``lit-kd export`` and the study's export stages).

An FP32 network is exported by ``torch.onnx.export`` alone; a SparseML QAT network needs sparseml's exporter to turn
fake quantization into integer ops (the ``sparse`` extra). DeepSparse validates an export only where it is installed.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lit_kd.evaluation import fraction_equal, top1

MIN_FP32_AGREEMENT = 0.995
MIN_OPSET, MAX_OPSET = 7, 20  # torch's TorchScript exporter (also the one sparseml's exporter is driven with)
EXPORT_DEFAULTS = {"opset": 13, "images": 1000, "batch_size": 64}  # lit-kd export and the study's export stages
INTEGER_OPS = ("QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")


IO_NAMES = {"input_names": ["input"], "output_names": ["logits"], "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}


def export_onnx_model(network: nn.Module, out: str | Path, opset: int = 13, qat: bool = False) -> Path:
    """Export ``network`` (eval mode, moved to the CPU) with a dynamic batch dimension; a QAT network becomes
    integer ops through sparseml's exporter (the ``sparse`` extra), an FP32 one goes through ``torch.onnx.export``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    sample = torch.zeros(1, 3, 32, 32)
    with warnings.catch_warnings():  # the TorchScript exporter's tracing notes are expected here, not news
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        if not qat:
            torch.onnx.export(network, (sample,), str(out), opset_version=opset, dynamo=False, **IO_NAMES)
            return out
        return _export_qat(network, sample, out, opset)


def _export_qat(network: nn.Module, sample: torch.Tensor, out: Path, opset: int) -> Path:
    from lit_kd.compat.extras import require

    require("sparseml", "exporting a SparseML QAT network with integer ops")
    from lit_kd.compat.sparseml import EXPORT_KWARGS, apply_sparseml_compat

    apply_sparseml_compat()
    from sparseml.pytorch.utils import export_onnx

    sparseml_log = logging.getLogger("sparseml")
    level = sparseml_log.level
    sparseml_log.setLevel(logging.WARNING)  # one INFO line per graph transform otherwise
    try:
        export_onnx(network, sample, str(out), opset=opset, convert_qat=True, **IO_NAMES, **EXPORT_KWARGS)
    finally:
        sparseml_log.setLevel(level)
    return out


def graph_facts(path: Path) -> dict:
    """``onnx.checker`` passes; the opset, op counts and dynamic batch of the written model."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = Counter(node.op_type for node in model.graph.node)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return {
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "dynamic_batch": bool(batch_dim.dim_param),
        "integer_ops": {op: ops[op] for op in INTEGER_OPS if ops[op]},
        "op_counts": dict(sorted(ops.items())),
    }


# ---------------------------------------------------------------------------------------------- validation
def padded(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``x`` padded with zero images to a full batch (DeepSparse engines have a fixed batch size)."""
    missing = batch_size - len(x)
    return x if missing == 0 else np.concatenate([x, np.zeros((missing, *x.shape[1:]), dtype=x.dtype)])


def validate(path: Path, network: nn.Module, batches: list, batch_size: int, cores: int) -> dict:
    """Top-1 agreement with ``network`` and accuracy of ONNX Runtime and DeepSparse on ``batches``; DeepSparse's
    entry is ``{"installed": False}`` where the ``sparse`` extra is not installed."""
    from lit_kd.compat.extras import installed
    from lit_kd.speed import onnxruntime_session

    session = onnxruntime_session(path, cores)
    runtimes = {"onnxruntime": lambda x: session.run(["logits"], {"input": x})[0]}
    if installed("deepsparse"):
        from deepsparse import compile_model

        engine = compile_model(str(path), batch_size=batch_size, num_cores=cores)
        runtimes["deepsparse"] = lambda x: engine([padded(x, batch_size)])[0][: len(x)]
    logits = {"pytorch": [], **{runtime: [] for runtime in runtimes}}
    network = network.cpu().eval()
    with torch.no_grad():
        for images, _ in batches:
            x = images.numpy().astype(np.float32)
            logits["pytorch"].append(network(images).numpy())
            for runtime, run in runtimes.items():
                logits[runtime].append(run(x))
    labels = torch.cat([y for _, y in batches]).numpy()
    reference = np.concatenate(logits["pytorch"])
    result = {
        "images": len(labels),
        "batch_size": batch_size,
        "cores": cores,
        "pytorch": {"acc": fraction_equal(top1(reference), labels)},
    }
    if "deepsparse" not in runtimes:
        result["deepsparse"] = {"installed": False}
    for runtime in runtimes:
        out = np.concatenate(logits[runtime])
        result[runtime] = {
            "acc": fraction_equal(top1(out), labels),
            "agreement": fraction_equal(top1(out), top1(reference)),
            "max_abs_logit_diff": float(np.abs(out - reference).max()),
        }
    return result


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX classifier run by ONNX Runtime on the CPU, called like a network: float images (N, 3, H, W) in, logits
    out (``lit-kd classify --ckpt model.onnx``). A model exported with a fixed batch size gets zero-padded batches."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        from lit_kd.speed import onnxruntime_session

        self.session = onnxruntime_session(path, threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().cpu().float().numpy()
        step = self.fixed_batch or len(x)
        outputs = [
            self.session.run(None, {self.input_name: padded(x[i : i + step], step)})[0][: len(x[i : i + step])]
            for i in range(0, len(x), step)
        ]
        return torch.from_numpy(np.concatenate(outputs))


def weight_sparsity(network: nn.Module) -> float:
    from lit_kd.sparse.counts import sparsity_counts

    zeros, total = sparsity_counts(network)
    return zeros / total if total else 0.0


# ---------------------------------------------------------------------------------------------- export a checkpoint
class ExportError(ValueError):
    """An export that cannot be made or did not pass validation; the message is the command's one line."""


class ExportUsageError(ExportError):
    """Arguments that do not fit the checkpoint (``lit-kd export`` reports it as a usage error, exit status 2)."""


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    v = result["validation"]
    table = Table(
        title=f"{Path(result['onnx']).name}: {result['precision']}, opset {result['opset']}, weight sparsity "
        f"{100 * result['weight_sparsity']:.1f} %, {v['images']} test images"
    )
    for col in ("runtime", "test acc", "same top-1 as PyTorch", "max |logit diff|"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    table.add_row(
        "pytorch" + (" (fake-quantized)" if result["precision"] == "int8" else ""), f"{100 * v['pytorch']['acc']:.2f} %", "-", "-"
    )
    for runtime in ("onnxruntime", "deepsparse"):
        r = v[runtime]
        if "acc" not in r:
            table.add_row(runtime, "not installed", "-", "-")
            continue
        table.add_row(runtime, f"{100 * r['acc']:.2f} %", f"{100 * r['agreement']:.2f} %", f"{r['max_abs_logit_diff']:.4f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _write_ir(onnx_path: Path, network: nn.Module, batches: list, cores: int, result: dict, strict: bool) -> Path:
    """``onnx_path`` as an OpenVINO IR beside it, its top-1 agreement with ``network`` in ``result["validation"]``; an
    FP32 IR agreeing on fewer than MIN_FP32_AGREEMENT of the images is an :class:`ExportError` (and removed)."""
    from lit_kd.compat.extras import MissingExtra
    from lit_kd.openvino_engine import OpenVinoNetwork, convert, save_ir

    ir = onnx_path.with_suffix(".xml")
    try:
        save_ir(convert(onnx_path), ir)
    except MissingExtra as err:
        raise ExportError(f"--openvino: {err}") from None
    engine, network = OpenVinoNetwork(ir, cores), network.cpu().eval()
    with torch.no_grad():
        out = torch.cat([engine(x) for x, _ in batches])
        reference = torch.cat([network(x) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    entry = {"acc": fraction_equal(top1(out), labels), "agreement": fraction_equal(top1(out), top1(reference))}
    entry["max_abs_logit_diff"] = float((out - reference).abs().max())
    result["validation"]["openvino"] = entry
    print(f"openvino IR {ir}: test acc {100 * entry['acc']:.2f} %, same top-1 as PyTorch on {100 * entry['agreement']:.2f} %")
    if strict and entry["agreement"] < MIN_FP32_AGREEMENT:
        ir.unlink(missing_ok=True)
        ir.with_suffix(".bin").unlink(missing_ok=True)
        raise ExportError(f"the FP32 OpenVINO IR agrees with PyTorch on {100 * entry['agreement']:.2f} % of the images; not written")
    return ir


def export_checkpoint(
    ckpt: str,
    out: str | Path,
    config: str | None,
    opset: int,
    data: str,
    images: int,
    batch_size: int,
    cores: int,
    openvino: bool = False,
) -> dict:
    """Export a checkpoint's network (:func:`lit_kd.artifacts.load_model`, float or SparseML QAT) to ``out``,
    validate it on ``images`` test images of ``data``, print the table and write ``<out>.validation.json``. The model
    is exported to a temporary file beside ``out`` and renamed only once it passed (see ``lit-kd export``). With
    ``openvino`` the ONNX file is also converted to an OpenVINO IR (``<out>.xml`` + ``.bin``, the ``openvino`` extra),
    validated on the same images (``validation["openvino"]``)."""
    from lit_kd.artifacts import ModelFileError, load_model
    from lit_kd.atomic import atomic_path, write_json
    from lit_kd.compat.extras import MissingExtra
    from lit_kd.data import CIFAR10DataModule

    out = Path(out)
    try:
        network, kind = load_model(ckpt, kinds=("float", "qat"), config=config)
    except ModelFileError as err:
        message = err.line()
        raise ExportError(message.replace("--ckpt:", "--ckpt / --config:") if config else message) from None
    except MissingExtra as err:  # a SparseML checkpoint where the sparse extra is not installed
        raise ExportError(str(err)) from None
    qat = kind == "qat"
    if qat and opset < 13:
        raise ExportUsageError(f"a QAT network is exported with integer ops from opset 13 on; got --opset {opset}")
    try:
        batches = list(CIFAR10DataModule(data).normalized_batches("test", batch_size, max_images=images))
    except (FileNotFoundError, ValueError) as err:
        raise ExportError(f"--data: {err}") from None
    with atomic_path(out) as tmp:  # renamed to out only once validated; removed on every error
        export_onnx_model(network, tmp, opset, qat)
        facts = graph_facts(tmp)
        if qat and not facts["integer_ops"]:
            raise ExportError(f"the QAT export of {ckpt} holds no integer ops; sparseml's conversion did not apply (nothing written)")
        result = {
            "checkpoint": str(ckpt),
            "onnx": str(out),
            "precision": "int8" if qat else "fp32",
            "weight_sparsity": weight_sparsity(network),
            **facts,
            "validation": validate(tmp, network, batches, batch_size, cores),
        }
        print_table(result)
        agreement = {rt: result["validation"][rt].get("agreement") for rt in ("onnxruntime", "deepsparse")}
        low = {rt: a for rt, a in agreement.items() if a is not None and a < MIN_FP32_AGREEMENT}
        json_path = out.with_suffix(".validation.json")
        if low and not qat:  # the report stays, the model does not
            write_json(json_path, result | {"written": False})
            raise ExportError(
                "the FP32 export disagrees with PyTorch: top-1 agreement "
                + ", ".join(f"{rt} {100 * a:.2f} %" for rt, a in low.items())
                + f" < {100 * MIN_FP32_AGREEMENT} %; "
                f"{out} not written, validation in {json_path}",
            )
    if openvino:
        result["openvino_ir"] = str(_write_ir(out, network, batches, cores, result, strict=not qat))
    write_json(json_path, result)
    print(f"wrote {out} (opset {facts['opset']}, {result['precision']}, input 'input' with dynamic batch, output 'logits') and {json_path}")
    return result
