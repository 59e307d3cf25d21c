"""``lit-kd bench``: inference speed of ONNX models in DeepSparse and ONNX Runtime (and PyTorch) on CPU, in one run.

    lit-kd bench --baseline dense.onnx --sparse pruned_quantized.onnx [--ckpt dense.ckpt] [--cores 2]

Each ONNX file runs in a DeepSparse engine (compiled for batch 1 and for batch 32, ``num_cores = --cores``) and in
ONNX Runtime (``intra_op_num_threads = --cores``); with ``--ckpt`` (the dense checkpoint the baseline was exported
from) also in PyTorch FP32 eager and PyTorch INT8 (torch.ao FX, x86, calibrated on random inputs: speed does not
depend on the values), with ``torch.set_num_threads(--cores)``. Per setting: warm-up calls, then a fixed number of
timed calls on the same random batch; latency median and 90th percentile, and images per second from the median.
Ratios from the same run: DeepSparse pruned-quantized against ONNX Runtime dense FP32, PyTorch dense INT8 and
DeepSparse dense FP32. One runtime is set up and measured at a time. The JSON records the CPU (model, ISA, VNNI),
the core count and the load average when the run started (a warning is printed when other processes were using the
cores: engines that synchronise threads slow down by orders of magnitude then); the table is printed, and so are the
equivalent ``deepsparse.benchmark`` command lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lit_kd.commands.arguments import fail, load_float_network, require_file, require_output, require_positive

BATCHES = (1, 32)
BASELINE, SPARSE = "dense fp32", "pruned-quantized"
# what DeepSparse on the pruned-quantized model is compared with: name -> (model, runtime) of a row
REFERENCES = {
    "onnxruntime dense fp32": (BASELINE, "onnxruntime"),
    "pytorch dense int8": ("dense int8", "pytorch int8 (fx, x86)"),
    "deepsparse dense fp32": (BASELINE, "deepsparse"),
}


def parser(prog: str = "lit-kd bench", out: str = "results/sparse_speed.json") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="dense FP32 ONNX model (lit-kd export of the dense checkpoint)")
    p.add_argument("--sparse", help="pruned-quantized ONNX model (lit-kd export of the SparseML checkpoint)")
    p.add_argument("--ckpt", help="the dense lit-kd checkpoint: adds PyTorch FP32 eager and PyTorch INT8 rows")
    p.add_argument("--cores", type=int, default=2, help="cores for DeepSparse, ONNX Runtime and PyTorch threads")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before each measurement")
    p.add_argument("--iterations-b1", type=int, default=200, help="timed calls at batch 1")
    p.add_argument("--iterations-b32", type=int, default=30, help="timed calls at batch 32")
    p.add_argument("--out", default=out, help="JSON results")
    return p


def call_seconds(fn: Callable[[], object], warmup: int, iterations: int) -> list[float]:
    """Seconds of each of ``iterations`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def cpu_fields() -> list[dict[str, str]]:
    """One ``{key: value}`` per logical CPU from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = [block for block in text.split("\n\n") if block.strip()]
    return [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())) for block in blocks]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (benchmark JSON records it)."""
    return next((cpu["model name"] for cpu in cpu_fields() if "model name" in cpu), None) or platform.processor() or "unknown"


def cpu_info(cores: int) -> dict:
    """The CPU (model, widest vector ISA, VNNI, AMX, physical cores) read from /proc/cpuinfo, the cores used, the load."""
    cpus = cpu_fields()
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    isa = next(
        (name for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("sse4.2", "sse4_2")) if flag in flags), platform.machine()
    )
    physical = {(cpu.get("physical id"), cpu.get("core id")) for cpu in cpus if "core id" in cpu}
    return {
        "cpu": cpu_model(),
        "isa": isa,
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "amx": "amx_tile" in flags,
        "physical_cores": len(physical) or os.cpu_count(),
        "logical_cpus": os.cpu_count(),
        "cores_used": cores,
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }


def deepsparse_runner(path: str, cores: int) -> Callable[[np.ndarray], object]:
    """``run(x)`` on DeepSparse engines compiled for each batch size in BATCHES (an engine's batch size is fixed)."""
    from deepsparse import compile_model

    engines = {b: compile_model(path, batch_size=b, num_cores=cores) for b in BATCHES}
    return lambda x: engines[len(x)].run([x], val_inp=False)


def onnxruntime_runner(path: str, cores: int) -> Callable[[np.ndarray], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = cores, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})


def torch_runner(model: nn.Module, int8: bool) -> Callable[[np.ndarray], object]:
    """PyTorch FP32 eager, or INT8 (torch.ao FX, x86) calibrated on random inputs, of the dense model."""
    from lit_kd.quant.torch_ptq import quantize_int8

    model = quantize_int8(model.eval(), [torch.randn(32, 3, 32, 32) for _ in range(2)]) if int8 else model.eval()
    return lambda x: model(torch.from_numpy(x))


def time_runner(
    label: str, runtime: str, run: Callable[[np.ndarray], object], inputs: dict[int, np.ndarray], warmup: int, iterations: dict[int, int]
) -> list[dict]:
    rows = []
    for batch, x in inputs.items():
        seconds = call_seconds(partial(run, x), warmup, iterations[batch])
        median = statistics.median(seconds)
        rows.append(
            {
                "model": label,
                "runtime": runtime,
                "batch": batch,
                "iterations": len(seconds),
                "latency_ms_median": 1000 * median,
                "latency_ms_p90": 1000 * float(np.percentile(seconds, 90)),
                "images_per_s": batch / median,
            }
        )
        print(f"{label:16s} {runtime:22s} batch {batch:2d}: median {1000 * median:8.3f} ms, {batch / median:9.1f} img/s", flush=True)
    return rows


def measure(onnx_files: dict[str, str], torch_model: nn.Module | None, cores: int, warmup: int, iterations: dict[int, int]) -> list[dict]:
    """One row per (model, runtime, batch size). One runtime is built, measured and released at a time, so idle
    threads of another engine do not compete for the cores."""
    torch.set_num_threads(cores)
    torch.backends.quantized.engine = "x86"
    from lit_kd.compat.extras import installed

    engines = (("deepsparse", deepsparse_runner),) if installed("deepsparse") else ()
    settings = [
        (label, runtime, lambda p=path, f=factory: f(p, cores))
        for label, path in onnx_files.items()
        for runtime, factory in (*engines, ("onnxruntime", onnxruntime_runner))
    ]
    if torch_model is not None:
        settings += [
            (BASELINE, "pytorch fp32 eager", lambda: torch_runner(torch_model, int8=False)),
            ("dense int8", "pytorch int8 (fx, x86)", lambda: torch_runner(torch_model, int8=True)),
        ]
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, 32, 32), dtype=np.float32) for b in BATCHES}
    with torch.inference_mode():
        return [row for label, runtime, build in settings for row in time_runner(label, runtime, build(), inputs, warmup, iterations)]


def ratios(rows: list[dict]) -> dict[str, float]:
    """Images per second of DeepSparse pruned-quantized over each reference, per batch size (same run)."""

    def ips(model: str, runtime: str, batch: int) -> float | None:
        return next((r["images_per_s"] for r in rows if (r["model"], r["runtime"], r["batch"]) == (model, runtime, batch)), None)

    out = {}
    for batch in BATCHES:
        sparse = ips(SPARSE, "deepsparse", batch)
        for name, (model, runtime) in REFERENCES.items():
            reference = ips(model, runtime, batch)
            if sparse and reference:
                out[f"deepsparse {SPARSE} vs {name}, batch {batch}"] = sparse / reference
    return out


def deepsparse_commands(onnx_files: dict[str, str], cores: int) -> list[str]:
    return [
        f"deepsparse.benchmark {path} --batch_size {b} --num_cores {cores} --scenario sync" for path in onnx_files.values() for b in BATCHES
    ]


def run_bench(onnx_files: dict[str, str], torch_model: nn.Module | None, args: argparse.Namespace) -> dict:
    machine = cpu_info(args.cores)  # the load average before the run: other work on the cores distorts the timings
    rows = measure(onnx_files, torch_model, args.cores, args.warmup, {1: args.iterations_b1, 32: args.iterations_b32})
    from lit_kd.compat.extras import installed

    return {
        "benchmark": "sparse_speed",
        "machine": machine,
        "engines_not_installed": [] if installed("deepsparse") else ["deepsparse"],
        "onnx": onnx_files,
        "warmup": args.warmup,
        "rows": rows,
        "ratios": ratios(rows),
        "deepsparse_benchmark_commands": deepsparse_commands(onnx_files, args.cores),
    }


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    table = Table(title=f"Inference on {m['cpu']} ({m['isa']}, VNNI {'yes' if m['vnni'] else 'no'}), {m['cores_used']} cores")
    for col in ("model", "runtime", "batch", "latency median (ms)", "latency p90 (ms)", "images/s"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for r in result["rows"]:
        table.add_row(
            r["model"],
            r["runtime"],
            str(r["batch"]),
            f"{r['latency_ms_median']:.3f}",
            f"{r['latency_ms_p90']:.3f}",
            f"{r['images_per_s']:.0f}",
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    if m["load_average_1min"] > m["logical_cpus"] - m["cores_used"] + 0.5:
        console.print(
            f"[bold red]warning:[/] load average {m['load_average_1min']:.1f} on {m['logical_cpus']} CPUs when the run "
            f"started: other processes shared the {m['cores_used']} cores, so these timings are not representative "
            "(multi-threaded engines suffer most)"
        )
    for name, value in result["ratios"].items():
        console.print(f"images/s of {name}: {value:.2f}x")
    for engine in result.get("engines_not_installed", []):
        console.print(f"{engine}: not installed (pip install 'lit-kd[sparse]'), no rows")
    console.print("the same with DeepSparse's own benchmark:\n  " + "\n  ".join(result["deepsparse_benchmark_commands"]))


def report(result: dict, out: str) -> dict:
    """Print the table, ratios and command lines; write the JSON (atomically)."""
    from lit_kd.atomic import write_text

    print_result(result)
    path = write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return result


def check_onnx(prog: str, flag: str, path: str) -> None:
    """``path`` is an ONNX model that passes ``onnx.checker`` and takes ``input`` (as ``lit-kd export`` writes them);
    one line and exit status 1 otherwise."""
    import onnx

    try:
        onnx.checker.check_model(path)
        inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    except Exception as err:  # protobuf's DecodeError, onnx's ValidationError, OSError ...: all mean "not a usable model"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        fail(prog, f"{flag} {path!r} is not a valid ONNX model ({detail}); expected an export of lit-kd export")
    if "input" not in inputs:
        fail(prog, f"{flag} {path!r} takes inputs {inputs}; expected one named 'input' (N x 3 x 32 x 32), as lit-kd export writes")


def inputs_from_args(cli: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, str], nn.Module | None]:
    """The ONNX files by label and the dense PyTorch model (None without ``--ckpt``); usage errors through ``cli``
    (exit status 2), unusable files as one line with exit status 1."""
    for name in ("baseline", "sparse", "ckpt"):
        value = getattr(args, name)
        if value:
            require_file(cli, f"--{name}", value, "checkpoint" if name == "ckpt" else "ONNX model")
    require_positive(cli, args, "cores", "iterations_b1", "iterations_b32")
    require_positive(cli, args, "warmup", minimum=0)
    require_output(cli, args.out)
    onnx_files = {label: path for label, path in ((BASELINE, args.baseline), (SPARSE, args.sparse)) if path}
    for label, path in onnx_files.items():
        check_onnx(cli.prog, "--baseline" if label == BASELINE else "--sparse", path)
    torch_model = None
    if args.ckpt:
        torch_model = load_float_network(
            cli.prog, args.ckpt, "Give the dense checkpoint the baseline was exported from (PyTorch INT8 is made from it)."
        )
    return onnx_files, torch_model


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.baseline and not args.sparse:
        cli.error("give at least one ONNX model: --baseline dense.onnx and/or --sparse pruned_quantized.onnx")
    onnx_files, torch_model = inputs_from_args(cli, args)
    return report(run_bench(onnx_files, torch_model, args), args.out)
