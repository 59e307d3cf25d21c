"""Inference speed: timing loops, runners for each runtime, the machine's description, and the DeepSparse / ONNX
Runtime / PyTorch comparison that ``lit-kd bench``, the study's bench stage and ``benchmarks/`` share.

Per setting: warm-up calls, then a fixed number of timed calls on the same random batch; latency median and 90th
percentile, and images per second from the median. One runtime is set up and measured at a time.
"""

from __future__ import annotations

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

from lit_kd.compat.extras import EXTRA_OF, installed
from lit_kd.quant.pt2e import PROGRAM_SUFFIX

BATCHES = (1, 32)
BENCH_DEFAULTS = {"cores": 2, "warmup": 10, "iterations_b1": 200, "iterations_b32": 30}  # lit-kd bench and the bench stage
BENCH_QAT_ADVICE = "Give the dense checkpoint the baseline was exported from (PyTorch INT8 is made from it)."
BASELINE, SPARSE, INT8 = "dense fp32", "pruned-quantized", "dense int8 file"
SPARSE_FP32 = "pruned fp32"  # the --sparse file's label when it holds no quantized operators (sparse_label)
QUANTIZED_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
# engines a model file can be timed in; "openvino" is synchronous with INFERENCE_NUM_THREADS = cores, "openvino
# throughput" the THROUGHPUT hint (its streams and threads chosen by the plugin), both the ``openvino`` extra
ENGINES = ("deepsparse", "onnxruntime", "openvino", "openvino throughput")
ENGINE_EXTRA = {"deepsparse": "deepsparse", "openvino": "openvino", "openvino throughput": "openvino"}
DEFAULT_ENGINES = ("deepsparse", "onnxruntime")  # the study's bench stage until it names its engines
PT2E_RUNTIME = "pytorch int8 (pt2e program, compiled)"  # a .pt2 model file runs in PyTorch only, whatever the engines
# what DeepSparse on the pruned-quantized model is compared with: name -> (model, runtime) of a row
REFERENCES = {
    "onnxruntime dense fp32": (BASELINE, "onnxruntime"),
    "pytorch dense int8": ("dense int8", "pytorch int8 (fx, x86)"),
    "deepsparse dense fp32": (BASELINE, "deepsparse"),
}


# ---------------------------------------------------------------------------------------------- timing loops
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


def repeat_seconds(fn: Callable[[], object], iterations: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per call, one median-able figure per repeat (the mean of ``iterations`` calls), after ``warmup``."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        out.append((time.perf_counter() - start) / iterations)
    return out


# ---------------------------------------------------------------------------------------------- the machine
def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (benchmark JSON records it)."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM)."""
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_features(flags: set[str] | None = None) -> dict:
    """``{"isa", "vnni", "amx"}``: the widest vector instruction set (``avx512``, ``avx2``, ``avx``, ``sse4.2``,
    ``neon`` or ``unknown``), VNNI (``avx512_vnni`` or ``avx_vnni``) and AMX (``amx_tile``), from the CPU flags."""
    flags = cpu_flags() if flags is None else flags
    widest = (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2"), ("neon", "asimd"))
    isa = next((name for name, flag in widest if flag in flags), "unknown")
    return {"isa": isa, "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}), "amx": "amx_tile" in flags}


ISA_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "VNNI", "avx_vnni": "AVX-VNNI", "amx": "AMX"}


def isa_flags(flags: set[str] | None = None) -> dict[str, bool]:
    """The instruction-set flags that decide which engine is fastest: AVX2, AVX-512, VNNI (AVX-512 or AVX) and AMX."""
    flags = cpu_flags() if flags is None else flags
    return {name: (name if name != "amx" else "amx_tile") in flags for name in ISA_NAMES}


def isa_text(machine: dict) -> str:
    """``AVX2 yes, AVX-512 yes, VNNI no, AMX no`` of a machine record (records without ``isa_flags``: from its ISA)."""
    f = machine.get("isa_flags") or {"avx2": machine["isa"] in ("avx2", "avx512"), "avx512f": machine["isa"] == "avx512"}
    shown = {"AVX2": f["avx2"], "AVX-512": f["avx512f"], "VNNI": machine["vnni"], "AMX": machine.get("amx", False)}
    return ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in shown.items())


def overloaded(load: float, logical_cpus: int, cores: int, own: int = 0) -> bool:
    """Whether a 1-minute load average shows other work on the cores: above the free CPUs (``logical_cpus - cores``)
    plus ``own`` (the benchmark's own threads, counted in a load read just after it ran) plus 0.5."""
    return load > logical_cpus - cores + own + 0.5


def physical_cores() -> int:
    """Physical cores: distinct (physical id, core id) pairs of /proc/cpuinfo, else the logical CPU count."""
    cores, physical = set(), "0"
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or os.cpu_count() or 1


def cpu_info(cores: int) -> dict:
    """The machine a benchmark ran on (no runtime is imported to find out)."""
    flags = cpu_flags()
    features = cpu_features(flags)
    return {
        "cpu": cpu_model(),
        "isa": features["isa"],
        "vnni": features["vnni"],
        "amx": features["amx"],
        "isa_flags": isa_flags(flags),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "cores_used": cores,
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------- runners
def deepsparse_runner(path: str, cores: int) -> Callable[[np.ndarray], object]:
    """``run(x)`` on DeepSparse engines compiled for each batch size in BATCHES (an engine's batch size is fixed)."""
    from deepsparse import compile_model

    engines = {b: compile_model(path, batch_size=b, num_cores=cores) for b in BATCHES}
    return lambda x: engines[len(x)].run([x], val_inp=False)


def onnxruntime_session(path: str | Path, threads: int | None, spin: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one inter-op thread); default threads without.
    ``spin=False`` turns off the thread pools' busy-waiting, so an idle session beside other engines leaves the cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if not spin:
        for pool in ("intra", "inter"):
            options.add_session_config_entry(f"session.{pool}_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: str, cores: int, spin: bool = True) -> Callable[[np.ndarray], object]:
    session = onnxruntime_session(path, cores, spin)
    return lambda x: session.run(None, {"input": x})


def module_runner(model: nn.Module) -> Callable[[np.ndarray], object]:
    """``run(x)`` of a PyTorch network (or compiled program) on a numpy batch."""
    return lambda x: model(torch.from_numpy(x))


def torch_runner(model: nn.Module, int8: bool) -> Callable[[np.ndarray], object]:
    """PyTorch FP32 eager, or INT8 (torch.ao FX, x86: no compile step) calibrated on random inputs, of the dense model."""
    from lit_kd.quant.torch_ptq import quantize_int8

    return module_runner(quantize_int8(model.eval(), [torch.randn(32, 3, 32, 32) for _ in range(2)], flow="fx") if int8 else model.eval())


def program_runner(path: str, cores: int) -> Callable[[np.ndarray], object]:
    """A ``.pt2`` PT2E program (:func:`lit_kd.artifacts.load_model`), compiled here for each batch size in BATCHES so
    that no timed call compiles."""
    from lit_kd.artifacts import load_model

    model = load_model(path, kinds=("pt2e",))[0]
    with torch.inference_mode():
        for b in BATCHES:
            model(torch.zeros(b, 3, 32, 32))
    return module_runner(model)


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


def available(engines: tuple[str, ...] | None) -> tuple[str, ...]:
    """``engines`` (default :data:`DEFAULT_ENGINES`) less those whose extra is not installed."""
    return tuple(e for e in (engines or DEFAULT_ENGINES) if e not in ENGINE_EXTRA or installed(ENGINE_EXTRA[e]))


def runner_factory(engine: str) -> Callable[[str, int], Callable[[np.ndarray], object]]:
    """``factory(path, cores) -> run(x)`` of an engine of :data:`ENGINES` (or :data:`PT2E_RUNTIME`)."""
    if engine == PT2E_RUNTIME:
        return program_runner
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if engine.startswith("openvino"):
        from lit_kd.openvino_engine import openvino_runner

        return partial(openvino_runner, hint="THROUGHPUT" if engine == "openvino throughput" else None)
    return deepsparse_runner if engine == "deepsparse" else onnxruntime_runner


def measure(
    onnx_files: dict[str, str],
    torch_model: nn.Module | None,
    cores: int,
    warmup: int,
    iterations: dict[int, int],
    engines: tuple[str, ...] | None = None,
) -> list[dict]:
    """One row per (model, runtime, batch size). One runtime is built, measured and released at a time, so idle
    threads of another engine do not compete for the cores. ``onnx_files`` are ``.onnx`` files (every engine) or
    OpenVINO ``.xml`` IR (OpenVINO engines only) or ``.pt2`` PT2E programs (PyTorch only); ``engines`` as in
    :func:`available`."""
    torch.set_num_threads(cores)
    torch.backends.quantized.engine = "x86"
    settings = [
        (label, runtime, lambda p=path, r=runtime: runner_factory(r)(p, cores))
        for label, path in onnx_files.items()
        for runtime in file_runtimes(path, engines)
    ]
    if torch_model is not None:
        settings += [
            (BASELINE, "pytorch fp32 eager", lambda: torch_runner(torch_model, int8=False)),
            ("dense int8", "pytorch int8 (fx, x86)", lambda: torch_runner(torch_model, int8=True)),
        ]
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, 32, 32), dtype=np.float32) for b in BATCHES}
    with torch.inference_mode():
        return [row for label, runtime, build in settings for row in time_runner(label, runtime, build(), inputs, warmup, iterations)]


def file_runtimes(path: str, engines: tuple[str, ...] | None) -> list[str]:
    """Where a model file runs: a ``.pt2`` program in PyTorch, an ``.xml`` IR in the OpenVINO engines, an ONNX file in
    every one of ``engines`` (see :func:`available`)."""
    suffix = Path(path).suffix.lower()
    if suffix == PROGRAM_SUFFIX:
        return [PT2E_RUNTIME]
    return [r for r in available(engines) if r.startswith("openvino") or suffix != ".xml"]


# ---------------------------------------------------------------------------------------------- the comparison
def fastest(rows: list[dict], group: str = "model", name: str = "runtime") -> list[dict]:
    """Per value of ``group`` and batch size, the row with the most images/s: ``{group, "batch", name, "images_per_s"}``."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r[group], r["batch"])
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    return [{group: g, "batch": b, name: r[name], "images_per_s": r["images_per_s"]} for (g, b), r in best.items()]


def ratios(rows: list[dict]) -> dict[str, float]:
    """Images per second of DeepSparse on the sparse file (pruned-quantized or pruned fp32) over each reference, per
    batch size (same run)."""

    def ips(model: str, runtime: str, batch: int) -> float | None:
        return next((r["images_per_s"] for r in rows if (r["model"], r["runtime"], r["batch"]) == (model, runtime, batch)), None)

    out = {}
    label = sparse_model(rows)
    for batch in BATCHES:
        sparse = ips(label, "deepsparse", batch)
        for name, (model, runtime) in REFERENCES.items():
            reference = ips(model, runtime, batch)
            if sparse and reference:
                out[f"deepsparse {label} vs {name}, batch {batch}"] = sparse / reference
    return out


def sparse_model(rows: list[dict]) -> str:
    """The label the sparse file was timed under in ``rows`` (:func:`sparse_label`; :data:`SPARSE` when none was)."""
    return next((r["model"] for r in rows if r["model"] in (SPARSE, SPARSE_FP32)), SPARSE)


def sparse_label(path: str | Path) -> str:
    """The label of the ``--sparse`` file: :data:`SPARSE` (pruned-quantized) when its graph holds quantized
    operators, :data:`SPARSE_FP32` for a pruned float model (the study of ResNet-18 pruned to 100,000 parameters)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return SPARSE if any(node.op_type in QUANTIZED_OPS for node in graph.node) else SPARSE_FP32


def run_bench(
    onnx_files: dict[str, str],
    torch_model: nn.Module | None,
    cores: int,
    warmup: int,
    iterations_b1: int,
    iterations_b32: int,
    engines: tuple[str, ...] | None = None,
    benchmark: dict | None = None,
) -> dict:
    """Every engine on every model (see :func:`measure`; the ``SPARSE`` file labelled by :func:`sparse_label`), the
    ratios and the machine, as ``lit-kd bench``'s JSON; with
    ``benchmark`` (:data:`~lit_kd.deepsparse_benchmark.BENCHMARK_DEFAULTS`) also ``deepsparse.benchmark``'s rows."""
    from lit_kd.deepsparse_benchmark import deepsparse_commands, run_deepsparse_benchmark

    machine = cpu_info(cores)  # the load average before the run: other work on the cores distorts the timings
    onnx_files = {(sparse_label(path) if label == SPARSE else label): path for label, path in onnx_files.items()}
    rows = measure(onnx_files, torch_model, cores, warmup, {1: iterations_b1, 32: iterations_b32}, engines)
    own = {"deepsparse_benchmark": run_deepsparse_benchmark(onnx_files, cores, **benchmark)} if benchmark else {}
    return {
        "benchmark": "sparse_speed",
        "machine": machine,
        "engines": list(available(engines)),
        "engines_not_installed": [e for e in (engines or DEFAULT_ENGINES) if e not in available(engines)],
        "onnx": onnx_files,
        "warmup": warmup,
        "rows": rows,
        "fastest": fastest(rows),
        "load_average_1min_after": os.getloadavg()[0],
        "ratios": ratios(rows),
        "deepsparse_benchmark_commands": deepsparse_commands(onnx_files, cores),
        **own,
    }


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from lit_kd.deepsparse_benchmark import benchmark_lines

    m = result["machine"]
    table = Table(title=f"Inference on {m['cpu']} ({isa_text(m)}), {m['cores_used']} cores")
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
    for f in result.get("fastest", []):
        console.print(f"fastest for {f['model']} at batch {f['batch']}: {f['runtime']} ({f['images_per_s']:,.0f} images/s)")
    if overloaded(m["load_average_1min"], m["logical_cpus"], m["cores_used"]):
        console.print(
            f"[bold red]warning:[/] load average {m['load_average_1min']:.1f} on {m['logical_cpus']} CPUs when the run "
            f"started: other processes shared the {m['cores_used']} cores, so these timings are not representative "
            "(multi-threaded engines suffer most)"
        )
    for name, value in result["ratios"].items():
        console.print(f"images/s of {name}: {value:.2f}x")
    for engine in result.get("engines_not_installed", []):
        extra = EXTRA_OF[ENGINE_EXTRA[engine]]
        console.print(f"{engine}: not installed (pip install 'lit-kd[{extra}]'), no rows")
    console.print("the same with DeepSparse's own benchmark:\n  " + "\n  ".join(result["deepsparse_benchmark_commands"]))
    if "deepsparse_benchmark" in result:
        console.print(benchmark_lines(result["deepsparse_benchmark"]))


def report(result: dict, out: str | Path) -> dict:
    """Print the table, ratios and command lines; write the JSON (atomically)."""
    from lit_kd.atomic import write_json

    print_result(result)
    path = write_json(out, result)
    print(f"wrote {path}")
    return result


def onnx_problem(flag: str, path: str) -> str | None:
    """Why ``path`` is not an ONNX model that passes ``onnx.checker`` and takes ``input`` (as ``lit-kd export`` writes
    them); None when it is."""
    import onnx

    try:
        onnx.checker.check_model(path)
        inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    except Exception as err:  # protobuf's DecodeError, onnx's ValidationError, OSError ...: all mean "not a usable model"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return f"{flag} {path!r} is not a valid ONNX model ({detail}); expected an export of lit-kd export"
    if "input" not in inputs:
        return f"{flag} {path!r} takes inputs {inputs}; expected one named 'input' (N x 3 x 32 x 32), as lit-kd export writes"
    return None


def model_problem(flag: str, path: str) -> str | None:
    """:func:`onnx_problem`, or for an ``.xml`` file why it is not an OpenVINO IR that reads (the openvino extra)."""
    if not str(path).lower().endswith(".xml"):
        return onnx_problem(flag, path)
    from lit_kd.compat.extras import MissingExtra

    try:
        from lit_kd.openvino_engine import ir_problem

        return ir_problem(flag, path)
    except MissingExtra as err:
        return f"{flag} {path!r}: {err}"
