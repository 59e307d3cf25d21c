"""DeepSparse's own benchmark (``deepsparse.benchmark``, called in-process through its ``benchmark_model``) on each
ONNX file at batch 1 and 32, ``--scenario sync`` with the cores set, repeated and interleaved: every repetition runs
each (model, batch) setting once before the next repetition starts, so a slow spell of the machine spreads over all
settings instead of biasing one. A row holds the median over repetitions and its range (min, max).
"""

from __future__ import annotations

import os
import statistics
from contextlib import contextmanager

from lit_kd.compat.extras import installed
from lit_kd.quant.pt2e import PROGRAM_SUFFIX

DEEPSPARSE_BENCHMARK = "deepsparse.benchmark"  # the runtime of its rows in the speed table
BENCHMARK_DEFAULTS = {"benchmark_seconds": 3, "benchmark_warmup": 1, "benchmark_repetitions": 5}
PINNING_VARIABLES = ("NM_BIND_THREADS_TO_CORES", "NM_BIND_THREADS_TO_SOCKETS")


def deepsparse_commands(onnx_files: dict[str, str], cores: int) -> list[str]:
    """The ``deepsparse.benchmark`` command lines of lit-kd's own DeepSparse rows (``.xml`` and ``.pt2`` files left out)."""
    return [f"{DEEPSPARSE_BENCHMARK} {path} --batch_size {b} --num_cores {cores} --scenario sync" for path, b in settings(onnx_files)]


def settings(onnx_files: dict[str, str]) -> list[tuple[str, int]]:
    """``(path, batch)`` of every ONNX file (OpenVINO ``.xml`` and PT2E ``.pt2`` files left out) at each batch size."""
    from lit_kd.speed import BATCHES

    return [(str(path), b) for path in onnx_files.values() if not str(path).lower().endswith((".xml", PROGRAM_SUFFIX)) for b in BATCHES]


def benchmark_command(path: str, batch: int, cores: int, seconds: int, warmup: int) -> str:
    """The ``deepsparse.benchmark`` command line one repetition of a setting is equivalent to."""
    return f"deepsparse.benchmark {path} --batch_size {batch} --num_cores {cores} --scenario sync -t {seconds} -w {warmup}"


@contextmanager
def restored_pinning():
    """``benchmark_model`` sets DeepSparse's thread-pinning variables in ``os.environ``: put them back after it."""
    saved = {name: os.environ.get(name) for name in PINNING_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def summarize(model: str, path: str, batch: int, runs: list[dict], cores: int, seconds: int, warmup: int) -> dict:
    """One speed row from the ``benchmark_result`` dicts of the repetitions of a setting: medians and ranges."""
    ips = [r["items_per_sec"] for r in runs]
    latency = [r["median"] for r in runs]
    return {
        "model": model,
        "runtime": DEEPSPARSE_BENCHMARK,
        "batch": batch,
        "iterations": sum(int(r["iterations"]) for r in runs),
        "latency_ms_median": statistics.median(latency),
        "latency_ms_p90": statistics.median(r["90.0%"] for r in runs),
        "images_per_s": statistics.median(ips),
        "repetitions": len(runs),
        "seconds": seconds,
        "images_per_s_min": min(ips),
        "images_per_s_max": max(ips),
        "latency_ms_min": min(latency),
        "latency_ms_max": max(latency),
        "command": benchmark_command(path, batch, cores, seconds, warmup),
    }


def run_deepsparse_benchmark(
    onnx_files: dict[str, str], cores: int, benchmark_seconds: int, benchmark_warmup: int, benchmark_repetitions: int
) -> dict:
    """``{"installed", "seconds", "warmup", "repetitions", "rows"}`` of ``deepsparse.benchmark`` on every ``.onnx``
    file at batch 1 and 32 (see :func:`settings`); ``{"installed": False}`` without the ``sparse`` extra."""
    if not installed("deepsparse"):
        return {"installed": False}
    from deepsparse.benchmark.benchmark_model import benchmark_model

    seconds, warmup, repetitions = benchmark_seconds, benchmark_warmup, benchmark_repetitions
    models = {str(path): model for model, path in onnx_files.items()}
    runs: dict[tuple, list[dict]] = {s: [] for s in settings(onnx_files)}
    with restored_pinning():
        for rep in range(repetitions):
            for path, batch in runs:
                model = models[path]
                result = benchmark_model(
                    str(path), batch_size=batch, num_cores=cores, scenario="sync", time=seconds, warmup_time=warmup, quiet=True
                )["benchmark_result"]
                runs[path, batch].append(result)
                print(
                    f"{DEEPSPARSE_BENCHMARK} {model:16s} batch {batch:2d}, repetition {rep + 1}/{repetitions}: "
                    f"{result['items_per_sec']:9.1f} items/s, median {result['median']:.3f} ms",
                    flush=True,
                )
    rows = [summarize(models[p], p, b, results, cores, seconds, warmup) for (p, b), results in runs.items()]
    return {"installed": True, "seconds": seconds, "warmup": warmup, "repetitions": repetitions, "rows": rows}


def benchmark_lines(result: dict) -> str:
    """The printed lines of :func:`run_deepsparse_benchmark`'s result."""
    if not result["installed"]:
        return f"{DEEPSPARSE_BENCHMARK}: not installed (pip install 'lit-kd[sparse]'), no rows"
    head = f"{DEEPSPARSE_BENCHMARK}, {result['repetitions']} repetitions of {result['seconds']} s (median, min-max):"
    return "\n  ".join(
        [head]
        + [
            f"{r['model']:16s} batch {r['batch']:2d}: {r['images_per_s']:9.1f} items/s ({r['images_per_s_min']:.1f}-"
            f"{r['images_per_s_max']:.1f}), latency {r['latency_ms_median']:.3f} ms ({r['latency_ms_min']:.3f}-{r['latency_ms_max']:.3f})"
            for r in result["rows"]
        ]
    )
