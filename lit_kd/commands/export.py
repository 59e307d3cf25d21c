"""``lit-kd export``: a lit-kd checkpoint to ONNX, checked and validated in ONNX Runtime and DeepSparse.

    lit-kd export --ckpt best.ckpt --out model.onnx [--config run/config.yaml] [--opset 13] [--data DATA --images N]

Checkpoints: a classifier, a distilled student (only the student is exported), a pruned network, and a
SparseMLRecipe run whose network holds QAT modules. For the last, the recipe saved in the checkpoint (or the
config's SparseMLRecipe callback) gives the fresh network its QAT structure before the weights load, and
sparseml's exporter converts fake quantization into integer ops (QuantizeLinear, ConvInteger, MatMulInteger: the
format DeepSparse runs as INT8). ``--config`` (a run's ``config.yaml``) names the architecture and the recipe
instead of the checkpoint. Every export goes through sparseml's exporter with torch's TorchScript ONNX exporter
(:mod:`lit_kd.compat.sparseml`). The ONNX model takes ``input`` (N x 3 x 32 x 32, N dynamic) and returns ``logits``.

Every export is validated: ``onnx.checker``, then test images (``--images``, a stratified subset of the test split)
through PyTorch, ONNX Runtime and DeepSparse (batch size fixed per engine; the last batch is padded). The top-1
agreement of each runtime with PyTorch and each one's accuracy go to a table and to ``<out>.validation.json``
(``model.onnx`` -> ``model.validation.json``). The model is exported to a temporary file beside ``--out`` and
renamed to ``--out`` only after it passed. An FP32 export agreeing on fewer than 99.5 % of the images is an
error (exit status 1; the validation JSON is written, ``--out`` is not); an INT8 export is compared with its
fake-quantized PyTorch model and only reported. ``--openvino`` also converts the written ONNX file to an OpenVINO IR
(``model.xml`` + ``model.bin`` beside it; the ``openvino`` extra), validated on the same images against PyTorch.
Bad arguments exit with status 2, unreadable or unsuitable files
with status 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lit_kd.commands.arguments import fail, require_data, require_file, require_output, require_positive
from lit_kd.onnx_export import EXPORT_DEFAULTS, MAX_OPSET, MIN_OPSET, ExportError, ExportUsageError, export_checkpoint
from lit_kd.run_config import yaml_problem


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="lit-kd checkpoint (dense, distilled, pruned, SparseML pruned + QAT)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--config", help="the run's config.yaml: architecture and SparseMLRecipe callback (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=EXPORT_DEFAULTS["opset"], help="ONNX opset (>= 13 for QAT exports)")
    p.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10"), help="CIFAR-10 source for validation (default $LIT_KD_CIFAR10)")
    p.add_argument("--images", type=int, default=EXPORT_DEFAULTS["images"], help="test images to validate on")
    p.add_argument(
        "--batch-size", type=int, default=EXPORT_DEFAULTS["batch_size"], help="validation batch size (DeepSparse compiles for it)"
    )
    p.add_argument(
        "--openvino", action="store_true", help="also write an OpenVINO IR beside --out (model.xml + model.bin), validated likewise"
    )
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores for DeepSparse and ONNX Runtime threads")
    return p


def read_config(prog: str, path: str) -> None:
    """A run's config.yaml must be a YAML mapping; its syntax errors are reported with their line (exit status 1)."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        fail(prog, f"--config {yaml_problem(path, err)}")
    except (OSError, UnicodeDecodeError) as err:
        fail(prog, f"--config {path!r} cannot be read ({type(err).__name__}: {err})")
    if not isinstance(config, dict):
        fail(prog, f"--config {path!r} holds no mapping; expected a run's config.yaml (model:, data:, trainer:)")


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    require_file(cli, "--ckpt", args.ckpt)
    if args.config:
        require_file(cli, "--config", args.config, "config")
    if not args.data:
        cli.error("every export is validated on test images: give --data (a CIFAR-10 source) or set LIT_KD_CIFAR10")
    require_data(cli, args.data)
    require_positive(cli, args, "images", "batch_size", "cores")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        cli.error(f"--opset must be from {MIN_OPSET} to {MAX_OPSET} (the range of torch's TorchScript ONNX exporter), got {args.opset}")
    out = require_output(cli, args.out)
    if args.config:
        read_config(cli.prog, args.config)
    try:
        sizes = (args.images, args.batch_size, args.cores)
        return export_checkpoint(args.ckpt, out, args.config, args.opset, args.data, *sizes, openvino=args.openvino)
    except ExportUsageError as err:
        cli.error(str(err))
    except ExportError as err:
        fail(cli.prog, str(err))
