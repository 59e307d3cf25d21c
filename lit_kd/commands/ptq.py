"""``lit-kd ptq``: quantize a trained checkpoint at several bit widths and methods, print a table, write JSON.

Every configuration is evaluated on the test set: our simulated PTQ (per bit width, observer, rounding, weight
granularity, with and without the first and last layers kept at 8 bits), PyTorch's own INT8 (--torch-flow: PT2E by
default, or FX; x86; fp16 with --pytorch-fp16, slow on CPU) and, with --engine nncf, NNCF's INT8 PTQ in OpenVINO, all
calibrated on the same images. Accuracy drops are against the FP32 model on the same images. --export-dir DIR writes
the INT8 models as deployable files (ours_w8a8.onnx QDQ and ours_w8a8.xml, nncf_*.xml, and PyTorch's pytorch_int8.pt2
program, or pytorch_int8.pt TorchScript with --torch-flow fx), each checked on the test set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lit_kd.commands.arguments import fail, load_float_network, require_data, require_file, require_output
from lit_kd.compat.extras import MissingExtra, require
from lit_kd.quant.observers import OBSERVERS
from lit_kd.quant.pt2e import FLOWS
from lit_kd.quant.ptq import ROUNDINGS
from lit_kd.quant.sweep import COSTS, ENGINES, FIRST_LAST, GRANULARITIES, NNCF_PRESETS, PtqError, PtqSettings, run_ptq
from lit_kd.quant.sweep import PTQ_QAT_ADVICE as QAT_ADVICE

PROG = "lit-kd ptq"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--ckpt", required=True, help="lit-kd checkpoint (classifier or distilled student)")
    p.add_argument(
        "--data",
        default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"),
        help="CIFAR-10 source (default $LIT_KD_CIFAR10, else data/cifar10)",
    )
    p.add_argument("--bits", type=int, nargs="+", default=[16, 8, 4, 2], help="bit widths, weights and activations alike")
    p.add_argument(
        "--weight-only-bits", type=int, nargs="*", default=[], help="also weight-only rows at these widths (activations at 8 bits)"
    )
    p.add_argument("--observer", nargs="+", default=["minmax"], choices=OBSERVERS)
    p.add_argument(
        "--weight-observer", choices=OBSERVERS, default=None, help="observer for weights (default: the activation observer of the row)"
    )
    p.add_argument("--rounding", nargs="+", default=["nearest"], choices=ROUNDINGS)
    p.add_argument("--granularity", nargs="+", default=["per_channel"], choices=GRANULARITIES)
    p.add_argument("--first-last-8bit", choices=list(FIRST_LAST), default="both", help="keep first and last layers at 8 bits")
    p.add_argument("--bias-correction", action="store_true", help="also rows with empirical bias correction")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument("--adaround-iterations", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images (default all)")
    p.add_argument("--no-pytorch", action="store_true", help="skip PyTorch's INT8 (and fp16) rows")
    p.add_argument("--pytorch-fp16", action="store_true", help="also PyTorch's fp16 row (over 20 minutes for the test set on 2 cores)")
    p.add_argument(
        "--engine", nargs="+", default=["ours"], choices=ENGINES, help="whose PTQ makes rows: ours, nncf (OpenVINO; the openvino extra)"
    )
    p.add_argument("--nncf-preset", nargs="+", default=["performance", "mixed"], choices=NNCF_PRESETS, help="NNCF presets (rows)")
    p.add_argument(
        "--nncf-max-drop",
        type=float,
        help="also NNCF's quantize_with_accuracy_control within this many points on --eval-images held-out training images",
    )
    p.add_argument("--export-dir", metavar="DIR", help="write the INT8 models as deployable files here, each checked on the test set")
    p.add_argument(
        "--torch-flow",
        choices=FLOWS,
        default=PtqSettings.torch_flow,
        help="PyTorch INT8: pt2e (torch.export + X86InductorQuantizer, INT8 kernels from torch.compile, which needs a C++ "
        "compiler; the default) or fx (deprecated torch.ao FX graph mode: runs without a C++ toolchain)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--held-out",
        action="store_true",
        help="also evaluate every row on --eval-images training images held out from calibration (to choose a row without the test set)",
    )
    search = p.add_argument_group("mixed precision (with --max-drop: search per-layer weight widths instead of the table)")
    search.add_argument("--max-drop", type=float, help="accuracy budget in points on held-out training images, e.g. 1.0")
    search.add_argument("--candidates", type=int, nargs="+", default=[2, 4, 8], help="weight widths to choose from")
    search.add_argument("--act-bits", type=int, default=8, help="activation width of every layer's input during the search")
    search.add_argument(
        "--layer-act-bits",
        nargs="+",
        default=[],
        metavar="LAYER=BITS",
        help="other activation widths for some layers' inputs, e.g. conv1=8 linear=8 (the image and the pooled features)",
    )
    search.add_argument("--cost", choices=COSTS, default="bits", help="what the allocation minimises")
    search.add_argument("--eval-images", type=int, default=5000, help="held-out training images to evaluate allocations (or rows) on")
    search.add_argument("--evaluations", type=int, default=8, help="evenly spaced allocations evaluated for the front")
    p.add_argument("--out", default="results/ptq.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    settings = PtqSettings(**{name: getattr(args, name) for name in PtqSettings.names()})
    problem = settings.problem()
    if problem:
        cli.error(problem)
    require_file(cli, "--ckpt", args.ckpt)
    require_data(cli, args.data)
    out = require_output(cli, args.out)
    if args.export_dir and Path(args.export_dir).exists() and not Path(args.export_dir).is_dir():
        cli.error(f"--export-dir {args.export_dir!r} is a file; expected a directory (created when missing)")
    if "nncf" in args.engine:
        try:
            require("nncf", "--engine nncf")
            require("openvino", "--engine nncf")
        except MissingExtra as err:
            fail(PROG, str(err))
    model = load_float_network(PROG, args.ckpt, QAT_ADVICE)
    try:
        return run_ptq(model, args.ckpt, args.data, settings, out)
    except PtqError as err:
        fail(PROG, str(err))
