"""``lit-kd ptq``: quantize a trained checkpoint at several bit widths and methods, print a table, write JSON.

Every configuration is evaluated on the test set: our simulated PTQ (per bit width, observer, rounding, weight
granularity, with and without the first and last layers kept at 8 bits) and PyTorch's own fp16 and INT8 (FX,
x86) models calibrated on the same batches. Accuracy drops are against the FP32 model on the same images.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from lit_kd.atomic import write_text
from lit_kd.commands.arguments import fail, load_float_network, require_data, require_file, require_output, require_positive
from lit_kd.quant.affine import check_bits
from lit_kd.quant.integer_model import to_int8_model
from lit_kd.quant.observers import OBSERVERS
from lit_kd.quant.ptq import ROUNDINGS, quantize
from lit_kd.quant.torch_ptq import quantize_int8, to_fp16

PROG = "lit-kd ptq"
EVAL_BATCH = 250  # images per evaluation batch: on 2 CPU cores ResNet-20 runs about 3x faster than at 1000


def predictions(model: nn.Module, batches: Iterable) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x, _ in batches])


def accuracy(model: nn.Module, batches: Iterable) -> float:
    batches = list(batches)
    return (predictions(model, batches) == torch.cat([y for _, y in batches])).float().mean().item()


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
    p.add_argument("--granularity", nargs="+", default=["per_channel"], choices=["per_channel", "per_tensor"])
    p.add_argument("--first-last-8bit", choices=["no", "yes", "both"], default="both", help="keep first and last layers at 8 bits")
    p.add_argument("--bias-correction", action="store_true", help="also rows with empirical bias correction")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument("--adaround-iterations", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images (default all)")
    p.add_argument("--no-pytorch", action="store_true", help="skip PyTorch's fp16 / INT8 rows")
    p.add_argument("--threads", type=int, default=os.cpu_count())
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
    search.add_argument("--cost", choices=["bits", "bops"], default="bits", help="what the allocation minimises")
    search.add_argument("--eval-images", type=int, default=5000, help="training images held out to evaluate allocations on")
    search.add_argument("--evaluations", type=int, default=8, help="evenly spaced allocations evaluated for the front")
    p.add_argument("--out", default="results/ptq.json")
    return p


QAT_ADVICE = (
    "Give the float checkpoint the QAT run started from (its init_ckpt); the QAT run's own INT8 model is its "
    "int8_model.pt (lit_kd.quant.torch_qat.load_int8_model)."
)


def load_data(source: str, val_split: int = 0):
    """The CIFAR-10 data module, read now: a source that cannot be read is a one-line error (exit status 1)."""
    from lit_kd.data import CIFAR10DataModule

    data = CIFAR10DataModule(source, val_split=val_split)
    try:
        data.setup()
    except (FileNotFoundError, ValueError) as err:
        fail(PROG, f"--data: {err}")
    return data


def run_study(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = load_float_network(PROG, args.ckpt, QAT_ADVICE)
    data = load_data(args.data)
    calib = list(data.normalized_batches("train", args.batch_size, args.calib_batches * args.batch_size, shuffle=True))
    test = list(data.normalized_batches("test", EVAL_BATCH, args.test_images))
    labels = torch.cat([y for _, y in test])
    fp32_pred = predictions(model, test)
    fp32 = (fp32_pred == labels).float().mean().item()
    rows = [
        {
            "runtime": "fp32",
            "weight_bits": 32,
            "act_bits": 32,
            "method": "-",
            "granularity": "-",
            "first_last_8bit": False,
            "acc": fp32,
            "agree_fp32": 1.0,
            "seconds": 0.0,
        }
    ]

    def add(runtime, wb, ab, method, granularity, first_last, build):
        start = time.perf_counter()
        qmodel = build()
        pred = predictions(qmodel, test)
        rows.append(
            {
                "runtime": runtime,
                "weight_bits": wb,
                "act_bits": ab,
                "method": method,
                "granularity": granularity,
                "first_last_8bit": first_last,
                "acc": (pred == labels).float().mean().item(),
                "agree_fp32": (pred == fp32_pred).float().mean().item(),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print_row(rows[-1], fp32)
        return qmodel, pred

    if not args.no_pytorch:
        add("pytorch", 16, 16, "fp16", "-", False, lambda: to_fp16(model))
        add("pytorch", 8, 8, "fx x86 histogram", "per_channel", False, lambda: quantize_int8(model, calib))
    first_last = {"no": [False], "yes": [True], "both": [False, True]}[args.first_last_8bit]
    widths = [(b, b) for b in args.bits] + [(b, 8) for b in args.weight_only_bits]
    corrections = [False, True] if args.bias_correction else [False]
    for (wb, ab), observer, rounding, gran, fl, bc in itertools.product(
        widths, args.observer, args.rounding, args.granularity, first_last, corrections
    ):
        weights = f" (weights {args.weight_observer})" if args.weight_observer and args.weight_observer != observer else ""
        method = observer + weights + ("" if rounding == "nearest" else f" + {rounding}") + (" + bias corr." if bc else "")
        qmodel, pred = add(
            "ours",
            wb,
            ab,
            method,
            gran,
            fl,
            partial(
                quantize,
                model,
                calib,
                wb,
                ab,
                observer,
                per_channel=gran == "per_channel",
                rounding=rounding,
                keep_first_last_8bit=fl,
                bias_correction=bc,
                adaround_iterations=args.adaround_iterations,
                weight_observer=args.weight_observer,
            ),
        )
        if (wb, ab, rounding, fl, bc) == (8, 8, "nearest", False, False):  # the same model in integer arithmetic
            _, int_pred = add("ours int", 8, 8, method + " (int8 x int8 -> int32)", gran, fl, partial(to_int8_model, qmodel))
            rows[-1]["agree_simulation"] = (int_pred == pred).float().mean().item()
    return {
        "checkpoint": str(args.ckpt),
        "fp32_acc": fp32,
        "test_images": sum(len(y) for _, y in test),
        "calib_images": sum(len(x) for x, _ in calib),
        "threads": args.threads,
        "rows": rows,
    }


def print_row(row: dict, fp32: float) -> None:
    print(
        f"{row['runtime']:8s} W{row['weight_bits']}A{row['act_bits']} {row['method']:28s} {row['granularity']:12s} "
        f"first/last 8b={row['first_last_8bit']!s:5s} acc={row['acc']:.4f}"
        f" agree={row['agree_fp32']:.4f} drop={100 * (fp32 - row['acc']):+.2f} pts ({row['seconds']} s)",
        flush=True,
    )


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    fp32 = result["fp32_acc"]
    table = Table(title=f"Post-training quantization of {result['checkpoint']} ({result['test_images']} test images)")
    for col in ("runtime", "bits (W/A)", "method", "granularity", "first/last 8-bit", "test acc", "drop vs FP32", "same top-1 as FP32"):
        table.add_column(col, justify="left" if col in ("runtime", "method", "granularity") else "right")
    for r in result["rows"]:
        table.add_row(
            r["runtime"],
            f"{r['weight_bits']}/{r['act_bits']}",
            r["method"],
            r["granularity"],
            "yes" if r["first_last_8bit"] else "no",
            f"{100 * r['acc']:.2f} %",
            f"{100 * (fp32 - r['acc']):.2f} pts",
            f"{100 * r['agree_fp32']:.2f} %",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # logs and pipes get the full table


def run_search(args: argparse.Namespace) -> dict:
    """``--max-drop``: the cheapest per-layer weight widths within the budget on held-out training images (never the
    test set), then test accuracy of FP32, the chosen allocation and the uniform widths."""
    from lit_kd.quant.bit_search import search_bits
    from lit_kd.quant.cost_model import average_bits, size_bytes
    from lit_kd.quant.search_report import pareto_plot

    torch.set_num_threads(args.threads)
    model = load_float_network(PROG, args.ckpt, QAT_ADVICE)
    available = len(load_data(args.data).splits["train"])
    if args.eval_images >= available:
        fail(PROG, f"--eval-images {args.eval_images} leaves no training images to calibrate on ({available} in --data)")
    data = load_data(args.data, val_split=args.eval_images)
    calib = list(data.normalized_batches("train", args.batch_size, args.calib_batches * args.batch_size, shuffle=True))
    held_out = list(data.normalized_batches("val", EVAL_BATCH))
    test = list(data.normalized_batches("test", EVAL_BATCH, args.test_images))
    options = {
        "observer": args.observer[0],
        "weight_observer": args.weight_observer,
        "per_channel": args.granularity[0] == "per_channel",
        "rounding": args.rounding[0],
        "bias_correction": args.bias_correction,
        "adaround_iterations": args.adaround_iterations,
    }
    start = time.perf_counter()
    out = Path(args.out)
    act_bits = {"default": args.act_bits, **args.layer_act_bits} if args.layer_act_bits else args.act_bits
    try:
        result = search_bits(
            model,
            calib,
            held_out,
            args.max_drop / 100,
            tuple(args.candidates),
            args.cost,
            act_bits=act_bits,
            evaluations=args.evaluations,
            cache=out.with_suffix(".cache.json"),
            progress=lambda s: print(s, flush=True),
            **options,
        )
    except ValueError as err:  # e.g. --layer-act-bits naming a module that is not a Conv2d/Linear layer of the model
        fail(PROG, str(err))
    seconds = time.perf_counter() - start
    test_acc = {"fp32": accuracy(model, test)}
    for name, point in [("chosen", result.chosen), *((p.label, p) for p in result.uniform)]:
        test_acc[name] = accuracy(quantize(model, calib, point.weight_bits, result.layer_act_bits, **options), test)
    layers = result.layers
    fp32_bytes = sum(v["params"] for v in layers.values()) * 4
    summary = {
        "checkpoint": str(args.ckpt),
        "search_seconds": round(seconds, 1),  # this attempt's wall time (a resumed search reuses earlier measurements)
        "search_measured_seconds": round(result.measured_seconds, 1),  # every measurement's time, over all attempts
        "threads": args.threads,
        "options": options,
        "eval_images": args.eval_images,
        "test_images": sum(len(y) for _, y in test),
        "test_acc": test_acc,
        "chosen_average_weight_bits": average_bits(result.chosen.weight_bits, layers),
        "chosen_weight_bytes": size_bytes(result.chosen.weight_bits, layers),
        "fp32_weight_bytes": fp32_bytes,
        "uniform_int8_weight_bytes": fp32_bytes / 4,
        "search": result.as_dict(),
    }
    print_search(summary, result)
    summary["plot"] = str(pareto_plot(result, out.with_suffix(".png")))
    return summary


def print_search(summary: dict, result) -> None:
    from rich.console import Console
    from rich.table import Table

    chosen = result.chosen.weight_bits
    table = Table(title=f"Chosen allocation within {100 * result.max_drop:.2f} points on {summary['eval_images']} held-out images")
    for col in ("layer", "params", "bits (W/A)", "sensitivity (loss increase at that width)"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for path, facts in result.layers.items():
        act = result.layer_act_bits[path]
        table.add_row(path, f"{facts['params']:,}", f"{chosen[path]}/{act}", f"{result.sensitivity[path][chosen[path]]:+.4f}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    t = summary["test_acc"]
    console.print(
        f"average weight bits {summary['chosen_average_weight_bits']:.2f}; weights {summary['chosen_weight_bytes'] / 1024:.1f} KiB "
        f"vs FP32 {summary['fp32_weight_bytes'] / 1024:.1f} KiB and uniform INT8 {summary['uniform_int8_weight_bytes'] / 1024:.1f} KiB"
    )
    console.print(
        "test accuracy: "
        + ", ".join(f"{k} {100 * v:.2f} %" for k, v in t.items())
        + f" (search {summary['search_seconds']} s; its measurements {summary['search_measured_seconds']} s over all attempts)"
    )


def parse_layer_bits(cli: argparse.ArgumentParser, flag: str, values: list[str]) -> dict[str, int]:
    """``["conv1=8", "linear=8"]`` -> ``{"conv1": 8, "linear": 8}`` (a usage error names a malformed item)."""
    parsed = {}
    for item in values:
        path, sep, bits = item.partition("=")
        if not sep or not path or not bits.strip().isdigit():
            cli.error(f"{flag}: expected LAYER=BITS (e.g. conv1=8), got {item!r}")
        parsed[path] = int(bits)
    return parsed


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    search = args.max_drop is not None
    if search and args.max_drop < 0:
        cli.error(f"--max-drop is an accuracy budget in points, >= 0; got {args.max_drop}")
    require_positive(cli, args, "calib_batches", "batch_size", "threads", "test_images", "adaround_iterations")
    if search:
        require_positive(cli, args, "eval_images", "evaluations")
    if args.layer_act_bits and not search:
        cli.error("--layer-act-bits applies to a --max-drop search (the table's rows use --first-last-8bit)")
    if search:
        args.layer_act_bits = parse_layer_bits(cli, "--layer-act-bits", args.layer_act_bits)
    widths = (
        [("--candidates", b) for b in args.candidates]
        + [("--act-bits", args.act_bits)]
        + [(f"--layer-act-bits {path}", b) for path, b in args.layer_act_bits.items()]
        if search
        else [("--bits", b) for b in args.bits] + [("--weight-only-bits", b) for b in args.weight_only_bits]
    )
    for flag, bits in widths:
        try:
            check_bits(bits, f"{flag} width")
        except ValueError as err:
            cli.error(str(err))
    require_file(cli, "--ckpt", args.ckpt)
    require_data(cli, args.data)
    out = require_output(cli, args.out)
    result = run_search(args) if search else run_study(args)
    if not search:
        print_table(result)
    write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}" + (f" and {result['plot']}" if search else ""))
    return result
