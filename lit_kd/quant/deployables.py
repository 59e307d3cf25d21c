"""The quantized models of a PTQ run written as files a user deploys, each read back and checked on the test set.

- our W8A8 as an ONNX QDQ model (``ours_w8a8.onnx``, ONNX Runtime; int8 activations) and as an OpenVINO IR
  (``ours_w8a8.xml`` + ``.bin``; with the ``openvino`` extra) converted from the same quantization written with uint8
  activations, the form OpenVINO's CPU plugin runs as INT8 convolutions (with int8 activations and their nonzero zero
  points it ran every convolution in f32: 2,538 images/s against 14,044 at batch 32 for the ResNet-20 teacher);
- NNCF's INT8 models as OpenVINO IR (``nncf_<preset>.xml``);
- PyTorch's INT8 model: the PT2E program (the default flow) as a ``torch.export`` archive (``pytorch_int8.pt2``:
  :func:`lit_kd.quant.pt2e.load_program`, run through ``torch.compile``), or FX's as a frozen TorchScript program
  (``pytorch_int8.pt``: ``torch.jit.load``, x86 quantized kernels).

Every file is loaded back through :func:`lit_kd.artifacts.load_model` (what ``lit-kd classify`` and ``bench`` do)
and evaluated on the same test images as the row it came from: accuracy and top-1 agreement with that row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from lit_kd.evaluation import fraction_equal, predictions

TORCHSCRIPT_NAME = "pytorch_int8.pt"
PROGRAM_NAME = "pytorch_int8.pt2"


def save_torchscript(model: nn.Module, out: str | Path, example: torch.Tensor) -> Path:
    """A traced, frozen TorchScript program of ``model`` (e.g. PyTorch's FX INT8 model) written to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.jit.freeze(torch.jit.trace(model.eval(), example))
    tmp = out.with_name(out.name + ".tmp")
    torch.jit.save(program, str(tmp))
    tmp.replace(out)
    return out


def check_file(path: Path, engine: str, row: dict, row_pred: torch.Tensor, test: list, truth: torch.Tensor) -> dict:
    """Load ``path`` as a user would and evaluate it on ``test``: one entry of the JSON's ``deployables``."""
    from lit_kd.artifacts import PREDICT_KINDS, load_model

    network, kind = load_model(path, kinds=PREDICT_KINDS)
    pred = predictions(network, test)
    entry = {
        "file": str(path),
        "engine": engine,
        "kind": kind,
        "from_row": {k: row[k] for k in ("runtime", "weight_bits", "act_bits", "method", "granularity")},
        "acc": fraction_equal(pred, truth),
        "row_acc": row["acc"],
        "agree_row": fraction_equal(pred, row_pred),
    }
    print(
        f"wrote {path} ({engine}): test acc {100 * entry['acc']:.2f} % (row {100 * row['acc']:.2f} %), "
        f"same top-1 as the row on {100 * entry['agree_row']:.2f} %",
        flush=True,
    )
    return entry


def write_ours(qmodel: nn.Module, out_dir: Path, row: dict, row_pred, test, truth) -> list[dict]:
    """Our W8A8 model as ``ours_w8a8.onnx`` (QDQ) and, with the openvino extra, ``ours_w8a8.xml``."""
    from lit_kd.compat.extras import installed
    from lit_kd.quant.qdq_export import OPENVINO_ACTIVATIONS, export_qdq

    onnx_path = export_qdq(qmodel, out_dir / "ours_w8a8.onnx")
    entries = [check_file(onnx_path, "onnxruntime", row, row_pred, test, truth)]
    if installed("openvino"):
        from lit_kd.openvino_engine import convert, save_ir

        uint8 = export_qdq(qmodel, out_dir / "ours_w8a8.uint8.onnx.tmp", activations=OPENVINO_ACTIVATIONS)
        try:
            ir = save_ir(convert(uint8), out_dir / "ours_w8a8.xml")
        finally:
            uint8.unlink()
        entries.append(check_file(ir, "openvino", row, row_pred, test, truth))
    return entries


def write_nncf(model, name: str, out_dir: Path, row: dict, row_pred, test, truth) -> list[dict]:
    """An NNCF ``openvino.Model`` as ``<name>.xml`` + ``.bin``."""
    from lit_kd.openvino_engine import save_ir

    return [check_file(save_ir(model, out_dir / f"{name}.xml"), "openvino", row, row_pred, test, truth)]


def write_pytorch_int8(model: nn.Module, flow: str, out_dir: Path, row: dict, row_pred, test, truth) -> list[dict]:
    """PyTorch's INT8 model of ``flow``: PT2E's program as ``pytorch_int8.pt2`` (``torch.export``), FX's as
    ``pytorch_int8.pt`` (TorchScript)."""
    if flow == "pt2e":
        from lit_kd.quant.pt2e import save_program

        path = save_program(model, out_dir / PROGRAM_NAME, (1, *test[0][0].shape[1:]))
        return [check_file(path, "pytorch int8 (pt2e program, compiled)", row, row_pred, test, truth)]
    path = save_torchscript(model, out_dir / TORCHSCRIPT_NAME, test[0][0][:2])
    return [check_file(path, "pytorch int8 (torchscript)", row, row_pred, test, truth)]
