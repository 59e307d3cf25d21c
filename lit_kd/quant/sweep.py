"""The post-training quantization sweep behind ``lit-kd ptq`` and the study's ptq stages: a trained network quantized
at several bit widths and methods, each configuration evaluated on the test set, or (with ``max_drop``) a
mixed-precision search of per-layer weight widths.

Every configuration is evaluated on the test set: our simulated PTQ (per bit width, observer, rounding, weight
granularity, with and without the first and last layers kept at 8 bits), PyTorch's own INT8 (``torch_flow``: PT2E by
default, or FX; x86; fp16 with ``pytorch_fp16``) and, with ``engine`` naming ``nncf``, NNCF's INT8 PTQ in OpenVINO
(presets, and accuracy control within ``nncf_max_drop`` points on held-out training images; no rows, and the JSON's
``engines_not_installed`` names it, where the ``openvino`` extra is missing), all calibrated on the same images.
Accuracy drops are against the FP32 model on the same images; with ``held_out`` also on ``eval_images`` training
images held out from calibration (``held_out_acc``: a choice that never reads the test set, the held_out protocol).
With ``export_dir`` the INT8 models are also written as files a user deploys and checked on the test set after
writing (:mod:`lit_kd.quant.deployables`).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from lit_kd.compat.extras import missing_extras
from lit_kd.evaluation import accuracy, fraction_equal, labels, predictions
from lit_kd.quant.affine import check_bits
from lit_kd.quant.deployables import write_nncf, write_ours, write_pytorch_int8
from lit_kd.quant.integer_model import to_int8_model
from lit_kd.quant.observers import OBSERVERS
from lit_kd.quant.pt2e import FLOWS
from lit_kd.quant.ptq import ROUNDINGS, quantize
from lit_kd.quant.torch_ptq import quantize_int8, to_fp16

EVAL_BATCH = 250  # images per evaluation batch: on 2 CPU cores ResNet-20 runs about 3x faster than at 1000
GRANULARITIES = ("per_channel", "per_tensor")
FIRST_LAST = {"no": [False], "yes": [True], "both": [False, True]}
COSTS = ("bits", "bops")
ENGINES = ("ours", "nncf")
ENGINE_PACKAGES = {"nncf": ("nncf", "openvino")}  # an engine whose packages are missing makes no rows ("not installed")
NNCF_PRESETS = ("performance", "mixed")
PTQ_QAT_ADVICE = (
    "Give the float checkpoint the QAT run started from (its init_ckpt); the QAT run's own INT8 model is its "
    "int8_model.pt2 or, from a flow fx run, int8_model.pt (lit_kd.artifacts.load_model reads either)."
)


class PtqError(ValueError):
    """A sweep that cannot run on its inputs (data, budget, layer names); the message says why."""


@dataclass
class PtqSettings:
    """What ``lit-kd ptq`` takes besides ``--ckpt``, ``--data`` and ``--out`` (the same names and defaults)."""

    bits: list[int] = field(default_factory=lambda: [16, 8, 4, 2])
    weight_only_bits: list[int] = field(default_factory=list)
    observer: list[str] = field(default_factory=lambda: ["minmax"])
    weight_observer: str | None = None
    rounding: list[str] = field(default_factory=lambda: ["nearest"])
    granularity: list[str] = field(default_factory=lambda: ["per_channel"])
    first_last_8bit: str = "both"
    bias_correction: bool = False
    calib_batches: int = 8
    batch_size: int = 128
    adaround_iterations: int = 1000
    test_images: int | None = None
    no_pytorch: bool = False
    pytorch_fp16: bool = False
    engine: list[str] = field(default_factory=lambda: ["ours"])
    nncf_preset: list[str] = field(default_factory=lambda: ["performance", "mixed"])
    nncf_max_drop: float | None = None
    export_dir: str | None = None
    torch_flow: str = "pt2e"  # "fx" stays selectable: it runs without a C++ compiler (PT2E's INT8 kernels come from inductor)
    threads: int | None = field(default_factory=os.cpu_count)
    max_drop: float | None = None
    candidates: list[int] = field(default_factory=lambda: [2, 4, 8])
    act_bits: int = 8
    layer_act_bits: list[str] | dict[str, int] = field(default_factory=list)
    cost: str = "bits"
    eval_images: int = 5000
    evaluations: int = 8
    held_out: bool = False

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def search(self) -> bool:
        return self.max_drop is not None

    def problem(self) -> str | None:
        """The first usage error of these settings (as ``lit-kd ptq`` reports it), None when there is none. Parses
        ``layer_act_bits`` (``["conv1=8"]`` -> ``{"conv1": 8}``) on the way."""
        choices = [("--observer", o, OBSERVERS) for o in self.observer] + [("--rounding", r, ROUNDINGS) for r in self.rounding]
        choices += [("--granularity", g, GRANULARITIES) for g in self.granularity] + [("--cost", self.cost, COSTS)]
        choices += [("--first-last-8bit", self.first_last_8bit, tuple(FIRST_LAST)), ("--torch-flow", self.torch_flow, FLOWS)]
        choices += [("--weight-observer", self.weight_observer, OBSERVERS)] if self.weight_observer is not None else []
        choices += [("--engine", e, ENGINES) for e in self.engine] + [("--nncf-preset", p, NNCF_PRESETS) for p in self.nncf_preset]
        for flag, value, allowed in choices:
            if value not in allowed:
                return f"argument {flag}: invalid choice: {value!r} (choose from {', '.join(map(repr, allowed))})"
        if self.search and self.max_drop < 0:
            return f"--max-drop is an accuracy budget in points, >= 0; got {self.max_drop}"
        if self.nncf_max_drop is not None and self.nncf_max_drop < 0:
            return f"--nncf-max-drop is an accuracy budget in points, >= 0; got {self.nncf_max_drop}"
        if self.search and ("nncf" in self.engine or self.export_dir):
            return "--engine nncf and --export-dir make table rows and files; run them without --max-drop (NNCF's budget: --nncf-max-drop)"
        if self.held_out and self.search:
            return "--held-out applies to the table; a --max-drop search always measures on --eval-images held-out images"
        if self.nncf_max_drop is not None and "nncf" not in self.engine:
            return "--nncf-max-drop applies to NNCF's accuracy control: add --engine nncf"
        names = ["calib_batches", "batch_size", "threads", "test_images", "adaround_iterations"]
        for name in names + (["eval_images", "evaluations"] if self.search or self.held_out or self.nncf_max_drop is not None else []):
            value = getattr(self, name)
            if value is not None and value < 1:
                return f"--{name.replace('_', '-')} must be >= 1, got {value}"
        if self.layer_act_bits and not self.search:
            return "--layer-act-bits applies to a --max-drop search (the table's rows use --first-last-8bit)"
        if self.search and not isinstance(self.layer_act_bits, dict):
            try:
                self.layer_act_bits = parse_layer_bits("--layer-act-bits", self.layer_act_bits)
            except ValueError as err:
                return str(err)
        widths = (
            [("--candidates", b) for b in self.candidates]
            + [("--act-bits", self.act_bits)]
            + [(f"--layer-act-bits {path}", b) for path, b in dict(self.layer_act_bits).items()]
            if self.search
            else [("--bits", b) for b in self.bits] + [("--weight-only-bits", b) for b in self.weight_only_bits]
        )
        for flag, bits in widths:
            try:
                check_bits(bits, f"{flag} width")
            except ValueError as err:
                return str(err)
        return None


def parse_layer_bits(flag: str, values: list[str]) -> dict[str, int]:
    """``["conv1=8", "linear=8"]`` -> ``{"conv1": 8, "linear": 8}`` (a ValueError names a malformed item)."""
    parsed = {}
    for item in values:
        path, sep, bits = item.partition("=")
        if not sep or not path or not bits.strip().isdigit():
            raise ValueError(f"{flag}: expected LAYER=BITS (e.g. conv1=8), got {item!r}")
        parsed[path] = int(bits)
    return parsed


def load_data(source: str, val_split: int = 0):
    """The CIFAR-10 data module, read now, ``val_split`` (``--eval-images``) stratified training images held out: those
    a fit stage with the same ``val_split`` validates on. Data that cannot be read, or too many held out: :class:`PtqError`."""
    from lit_kd.data import CIFAR10DataModule

    data = CIFAR10DataModule(source, val_split=val_split)
    try:
        data.setup()
    except (FileNotFoundError, ValueError) as err:
        if val_split and "leaves no training images" in str(err):
            available = len(load_data(source).splits["train"])
            raise PtqError(f"--eval-images {val_split} leaves no training images to calibrate on ({available} in --data)") from None
        raise PtqError(f"--data: {err}") from None
    return data


def ptq_table(model: nn.Module, ckpt: str, data_source: str, s: PtqSettings) -> dict:
    """Every configuration of ``s`` on the test set (and with ``held_out`` on held-out images), printed as measured."""
    torch.set_num_threads(s.threads)
    held_out_images = s.eval_images if s.nncf_max_drop is not None or s.held_out else 0  # NNCF's accuracy control, rows
    data = load_data(data_source, val_split=held_out_images)
    calib = list(data.normalized_batches("train", s.batch_size, s.calib_batches * s.batch_size, shuffle=True))
    test = list(data.normalized_batches("test", EVAL_BATCH, s.test_images))
    held = list(data.normalized_batches("val", EVAL_BATCH)) if s.held_out else []
    out_dir = Path(s.export_dir) if s.export_dir else None
    missing = missing_extras(s.engine, ENGINE_PACKAGES)
    for engine, extra in missing.items():
        print(f"{engine}: not installed (pip install 'lit-kd[{extra}]'), no rows", flush=True)
    engines = [e for e in s.engine if e not in missing]
    deployables = []
    truth = labels(test)
    fp32_pred = predictions(model, test)
    fp32 = fraction_equal(fp32_pred, truth)
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
            **({"held_out_acc": accuracy(model, held)} if held else {}),
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
                "acc": fraction_equal(pred, truth),
                "agree_fp32": fraction_equal(pred, fp32_pred),
                "seconds": round(time.perf_counter() - start, 1),
                **({"held_out_acc": accuracy(qmodel, held)} if held else {}),
            }
        )
        print_row(rows[-1], fp32)
        return qmodel, pred

    if not s.no_pytorch:
        if s.pytorch_fp16:
            add("pytorch", 16, 16, "fp16", "-", False, lambda: to_fp16(model))
        int8, pred = add(
            "pytorch", 8, 8, f"{s.torch_flow} x86 histogram", "per_channel", False, lambda: quantize_int8(model, calib, flow=s.torch_flow)
        )
        if out_dir:
            deployables += write_pytorch_int8(int8, s.torch_flow, out_dir, rows[-1], pred, test, truth)
    if "nncf" in engines:
        from lit_kd.quant.nncf_ptq import method_name, nncf_network

        held_out = held or (list(data.normalized_batches("val", EVAL_BATCH)) if held_out_images else None)
        jobs = [(p, None) for p in s.nncf_preset] + ([(s.nncf_preset[-1], s.nncf_max_drop)] if s.nncf_max_drop is not None else [])
        for preset, budget in jobs:
            built: dict = {}

            def build(preset=preset, budget=budget, built=built):
                network, built["model"] = nncf_network(model, calib, s.threads, preset=preset, max_drop=budget, held_out=held_out)
                return network

            _, pred = add("openvino", 8, 8, method_name(preset, budget), "per_channel", False, build)
            if out_dir:
                name = f"nncf_{preset}" + ("_accuracy_control" if budget is not None else "")
                deployables += write_nncf(built["model"], name, out_dir, rows[-1], pred, test, truth)
    widths = [(b, b) for b in s.bits] + [(b, 8) for b in s.weight_only_bits]
    corrections = [False, True] if s.bias_correction else [False]
    ours = itertools.product(widths, s.observer, s.rounding, s.granularity, FIRST_LAST[s.first_last_8bit], corrections)
    exportable = []  # (row, model, test predictions) of our W8A8 rows
    for (wb, ab), observer, rounding, gran, fl, bc in ours if "ours" in engines else ():
        weights = f" (weights {s.weight_observer})" if s.weight_observer and s.weight_observer != observer else ""
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
                adaround_iterations=s.adaround_iterations,
                weight_observer=s.weight_observer,
            ),
        )
        if (wb, ab, rounding) == (8, 8, "nearest"):  # what the QDQ file can hold (AdaRound's choices are not kept)
            exportable.append((rows[-1], qmodel, pred))
            if not bc and not fl:  # the same model in integer arithmetic (first/last layers at 8 bits change nothing at W8A8)
                _, int_pred = add("ours int", 8, 8, method + " (int8 x int8 -> int32)", gran, fl, partial(to_int8_model, qmodel))
                rows[-1]["agree_simulation"] = fraction_equal(int_pred, pred)
    if out_dir and exportable:
        row, qmodel, pred = deployable_w8a8(exportable)
        deployables += write_ours(qmodel, out_dir, row, pred, test, truth)
    return {
        "checkpoint": str(ckpt),
        "fp32_acc": fp32,
        "test_images": len(truth),
        "calib_images": sum(len(x) for x, _ in calib),
        "threads": s.threads,
        "engines": engines,
        "engines_not_installed": list(missing),
        "rows": rows,
        **({"held_out_images": held_out_images} if held_out_images else {}),
        **({"export_dir": str(out_dir), "deployables": deployables} if out_dir else {}),
    }


def deployable_w8a8(exportable: list[tuple]) -> tuple:
    """Which of our W8A8 rows ``(row, model, test predictions)`` becomes ``ours_w8a8``: the best on the held-out
    training images where the rows have them (``--held-out``; the first of equals), else the first row (the first
    observer, without bias correction). Never chosen on the test set."""
    if all("held_out_acc" in row for row, _, _ in exportable):
        return max(exportable, key=lambda e: e[0]["held_out_acc"])
    return exportable[0]


def print_row(row: dict, fp32: float) -> None:
    held = f" held-out={row['held_out_acc']:.4f}" if "held_out_acc" in row else ""
    print(
        f"{row['runtime']:8s} W{row['weight_bits']}A{row['act_bits']} {row['method']:28s} {row['granularity']:12s} "
        f"first/last 8b={row['first_last_8bit']!s:5s} acc={row['acc']:.4f}"
        f" agree={row['agree_fp32']:.4f} drop={100 * (fp32 - row['acc']):+.2f} pts{held} ({row['seconds']} s)",
        flush=True,
    )


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    fp32 = result["fp32_acc"]
    table = Table(title=f"Post-training quantization of {result['checkpoint']} ({result['test_images']} test images)")
    held = "held_out_acc" in result["rows"][0]
    columns = ("runtime", "bits (W/A)", "method", "granularity", "first/last 8-bit", "test acc", "drop vs FP32", "same top-1 as FP32")
    for col in columns + ((f"acc on {result['held_out_images']} held-out",) if held else ()):
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
            *([f"{100 * r['held_out_acc']:.2f} %"] if held else []),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # logs and pipes get the full table


def ptq_search(model: nn.Module, ckpt: str, data_source: str, s: PtqSettings, out: Path) -> dict:
    """``max_drop``: the cheapest per-layer weight widths within the budget on held-out training images (never the
    test set), then test accuracy of FP32, the chosen allocation and the uniform widths."""
    from lit_kd.quant.bit_search import search_bits
    from lit_kd.quant.cost_model import average_bits, size_bytes
    from lit_kd.quant.search_report import pareto_plot, print_search

    torch.set_num_threads(s.threads)
    data = load_data(data_source, val_split=s.eval_images)
    calib = list(data.normalized_batches("train", s.batch_size, s.calib_batches * s.batch_size, shuffle=True))
    held_out = list(data.normalized_batches("val", EVAL_BATCH))
    test = list(data.normalized_batches("test", EVAL_BATCH, s.test_images))
    options = {
        "observer": s.observer[0],
        "weight_observer": s.weight_observer,
        "per_channel": s.granularity[0] == "per_channel",
        "rounding": s.rounding[0],
        "bias_correction": s.bias_correction,
        "adaround_iterations": s.adaround_iterations,
    }
    start = time.perf_counter()
    act_bits = {"default": s.act_bits, **s.layer_act_bits} if s.layer_act_bits else s.act_bits
    try:
        result = search_bits(
            model,
            calib,
            held_out,
            s.max_drop / 100,
            tuple(s.candidates),
            s.cost,
            act_bits=act_bits,
            evaluations=s.evaluations,
            cache=out.with_suffix(".cache.json"),
            progress=lambda line: print(line, flush=True),
            **options,
        )
    except ValueError as err:  # e.g. layer_act_bits naming a module that is not a Conv2d/Linear layer of the model
        raise PtqError(str(err)) from None
    seconds = time.perf_counter() - start
    test_acc = {"fp32": accuracy(model, test)}
    for name, point in [("chosen", result.chosen), *((p.label, p) for p in result.uniform)]:
        test_acc[name] = accuracy(quantize(model, calib, point.weight_bits, result.layer_act_bits, **options), test)
    layers = result.layers
    fp32_bytes = sum(v["params"] for v in layers.values()) * 4
    summary = {
        "checkpoint": str(ckpt),
        "search_seconds": round(seconds, 1),  # this attempt's wall time (a resumed search reuses earlier measurements)
        "search_measured_seconds": round(result.measured_seconds, 1),  # every measurement's time, over all attempts
        "threads": s.threads,
        "options": options,
        "eval_images": s.eval_images,
        "test_images": sum(len(y) for _, y in test),
        "test_acc": test_acc,
        "chosen_average_weight_bits": average_bits(result.chosen.weight_bits, layers),
        "chosen_weight_bytes": size_bytes(result.chosen.weight_bits, layers),
        "fp32_weight_bytes": fp32_bytes,
        "uniform_int8_weight_bytes": fp32_bytes / 4,
        "search": result.as_dict(),
    }
    print_search(summary, result)
    summary["plot"] = str(pareto_plot(result, out.with_suffix(".png"), s.eval_images))
    return summary


def run_ptq(model: nn.Module, ckpt: str, data_source: str, settings: PtqSettings, out: str | Path) -> dict:
    """The sweep (or the search, with ``max_drop``) of ``model`` (the float network of ``ckpt``), its table printed
    and its JSON written to ``out`` (atomically). Raises :class:`PtqError` for unusable inputs."""
    from lit_kd.atomic import write_json

    out = Path(out)
    result = ptq_search(model, ckpt, data_source, settings, out) if settings.search else ptq_table(model, ckpt, data_source, settings)
    if not settings.search:
        print_table(result)
    write_json(out, result)
    print(f"wrote {out}" + (f" and {result['plot']}" if settings.search else ""))
    return result
