"""``lit-kd export``: a lit-kd checkpoint to ONNX, checked and validated in ONNX Runtime and DeepSparse.

    lit-kd export --ckpt best.ckpt --out model.onnx [--config run/config.yaml] [--opset 13] [--data DATA --images N]

Checkpoints: a classifier, a distilled student (only the student is exported), a pruned network, and a
SparseMLRecipe run whose network holds QAT modules. For the last, the recipe saved in the checkpoint (or the
config's SparseMLRecipe callback) gives the fresh network its QAT structure before the weights load, and
sparseml's exporter converts fake quantization into integer ops (QuantizeLinear, ConvInteger, MatMulInteger: the
format DeepSparse runs as INT8). ``--config`` (a run's ``config.yaml``) names the architecture and the recipe
instead of the checkpoint. FP32 networks are exported by ``torch.onnx.export`` (TorchScript exporter); QAT networks
by sparseml's exporter (:mod:`lit_kd.compat.sparseml`, the ``sparse`` extra). DeepSparse validates where installed.
The ONNX model takes ``input`` (N x 3 x 32 x 32, N dynamic) and returns ``logits``.

Every export is validated: ``onnx.checker``, then test images (``--images``, a stratified subset of the test split)
through PyTorch, ONNX Runtime and DeepSparse (batch size fixed per engine; the last batch is padded). The top-1
agreement of each runtime with PyTorch and each one's accuracy go to a table and to ``<out>.validation.json``
(``model.onnx`` -> ``model.validation.json``). The model is exported to a temporary file beside ``--out`` and
renamed to ``--out`` only after it passed. An FP32 export agreeing on fewer than 99.5 % of the images is an
error (exit status 1; the validation JSON is written, ``--out`` is not); an INT8 export is compared with its
fake-quantized PyTorch model and only reported. Bad arguments exit with status 2, unreadable or unsuitable files
with status 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lit_kd.atomic import atomic_path, write_text
from lit_kd.checkpoints import load_for_export
from lit_kd.commands.arguments import checkpoint_error, fail, require_data, require_file, require_output, require_positive, yaml_problem
from lit_kd.onnx_export import MIN_FP32_AGREEMENT, export_onnx_model, graph_facts, validate, weight_sparsity

MIN_OPSET, MAX_OPSET = 7, 20  # torch's TorchScript exporter (also the one sparseml's exporter is driven with)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="lit-kd checkpoint (dense, distilled, pruned, SparseML pruned + QAT)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--config", help="the run's config.yaml: architecture and SparseMLRecipe callback (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13 for QAT exports)")
    p.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10"), help="CIFAR-10 source for validation (default $LIT_KD_CIFAR10)")
    p.add_argument("--images", type=int, default=1000, help="test images to validate on")
    p.add_argument("--batch-size", type=int, default=64, help="validation batch size (DeepSparse compiles for it)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores for DeepSparse and ONNX Runtime threads")
    return p


# ---------------------------------------------------------------------------------------------- export
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
    from lit_kd.data import CIFAR10DataModule

    try:
        network, qat = load_for_export(args.ckpt, args.config)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        message = checkpoint_error(args.ckpt, err)
        fail(cli.prog, message.replace("--ckpt:", "--ckpt / --config:") if args.config else message)
    if qat and args.opset < 13:
        cli.error(f"a QAT network is exported with integer ops from opset 13 on; got --opset {args.opset}")
    try:
        batches = list(CIFAR10DataModule(args.data).normalized_batches("test", args.batch_size, max_images=args.images))
    except (FileNotFoundError, ValueError) as err:
        fail(cli.prog, f"--data: {err}")
    with atomic_path(out) as tmp:  # renamed to --out only once validated; removed on every error
        export_onnx_model(network, tmp, args.opset, qat)
        facts = graph_facts(tmp)
        if qat and not facts["integer_ops"]:
            fail(cli.prog, f"the QAT export of {args.ckpt} holds no integer ops; sparseml's conversion did not apply (nothing written)")
        result = {
            "checkpoint": str(args.ckpt),
            "onnx": str(out),
            "precision": "int8" if qat else "fp32",
            "weight_sparsity": weight_sparsity(network),
            **facts,
            "validation": validate(tmp, network, batches, args.batch_size, args.cores),
        }
        print_table(result)
        agreement = {rt: result["validation"][rt].get("agreement") for rt in ("onnxruntime", "deepsparse")}
        low = {rt: a for rt, a in agreement.items() if a is not None and a < MIN_FP32_AGREEMENT}
        json_path = out.with_suffix(".validation.json")
        if low and not qat:  # the report stays, the model does not
            write_text(json_path, json.dumps(result | {"written": False}, indent=2) + "\n")
            fail(
                cli.prog,
                "the FP32 export disagrees with PyTorch: top-1 agreement "
                + ", ".join(f"{rt} {100 * a:.2f} %" for rt, a in low.items())
                + f" < {100 * MIN_FP32_AGREEMENT} %; "
                f"{out} not written, validation in {json_path}",
            )
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} (opset {facts['opset']}, {result['precision']}, input 'input' with dynamic batch, output 'logits') and {json_path}")
    return result
