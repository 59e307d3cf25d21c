"""The ``bench`` kind: ``lit-kd bench`` of ONNX models (an INT8 ``.onnx`` or OpenVINO ``.xml`` as ``int8``, and a
checkpoint in PyTorch) at batch 1 and 32 in its ``engines`` (default :data:`lit_kd.speed.DEFAULT_ENGINES`); its report
section (the speed table with the CPU's instruction set and load, the fastest engine for each model, the
``deepsparse.benchmark`` commands), its key-results note (the fastest model within 1 point of the dense FP32 one) and
its headline row (DeepSparse against PyTorch at batch 32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_kd.study.kinds.base import SPEED, SPEED_ROWS, ReportInput, Row
from lit_kd.study.kinds.step import StepError, StepKind, float_network, positive, split
from lit_kd.study.manifest import portable_command
from lit_kd.study.render import Section, Table, pct
from lit_kd.study.results import Results, SpeedRecord, SpeedRow


class Bench(StepKind):
    name, outputs = "bench", ("json",)
    out_file, files, uses_data = "bench.json", {"json": "bench.json"}, False

    def call(self, settings: dict) -> dict:
        from lit_kd import speed
        from lit_kd.deepsparse_benchmark import BENCHMARK_DEFAULTS

        defaults = {**speed.BENCH_DEFAULTS, **BENCHMARK_DEFAULTS}
        allowed = ["baseline", "sparse", "int8", "ckpt", "engines", "deepsparse_benchmark", *defaults]
        s = {**defaults, **split("bench", settings, ("out",), allowed)}
        positive("bench", s, ("cores", "iterations_b1", "iterations_b32", "benchmark_seconds", "benchmark_repetitions"))
        positive("bench", s, ("warmup", "benchmark_warmup"), minimum=0)
        engines = s.get("engines")
        if engines is not None and (not isinstance(engines, list) or not engines or not set(engines) <= set(speed.ENGINES)):
            choices = ", ".join(map(repr, speed.ENGINES))
            raise StepError(f"lit-kd bench: error: argument --engines: expected a list from {choices}, got {engines!r}")
        files = {speed.BASELINE: "baseline", speed.SPARSE: "sparse", speed.INT8: "int8"}
        onnx_files = {label: s[name] for label, name in files.items() if s.get(name)}
        if not onnx_files:
            raise StepError(
                "lit-kd bench: error: give at least one ONNX model: --baseline dense.onnx, --sparse pruned_quantized.onnx "
                "and/or --int8 model.onnx|model.xml"
            )
        for label, path in onnx_files.items():
            problem = speed.model_problem(f"--{files[label]}", path)
            if problem:
                raise StepError(f"lit-kd bench: error: {problem}")
        torch_model = float_network("bench", s["ckpt"], speed.BENCH_QAT_ADVICE) if s.get("ckpt") else None
        cores, warmup, b1, b32 = s["cores"], s["warmup"], s["iterations_b1"], s["iterations_b32"]
        benchmark = {k: s[k] for k in BENCHMARK_DEFAULTS} if s.get("deepsparse_benchmark") else None
        result = speed.run_bench(onnx_files, torch_model, cores, warmup, b1, b32, tuple(engines) if engines else None, benchmark)
        return speed.report(result, Path(s["out"]))

    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        bench = next(iter(rep.of_kind("bench").values()), None)
        if not bench:
            return []
        table, record = speed_table(bench, bench_accuracies(rep.manifests, bench))
        rep.results.speed = record
        data = next((m["inputs"]["data"] for m in rep.manifests.values() if (m.get("inputs") or {}).get("data")), None)
        own = bench["metrics"].get("deepsparse_benchmark")
        if own and own["installed"]:
            lines = [r["command"] for r in own["rows"]]
            said = (
                f"The deepsparse.benchmark rows are DeepSparse's own benchmark (its benchmark_model, in the stage's process), "
                f"{own['repetitions']} runs per row of {own['seconds']} s after {own['warmup']} s of warm-up, interleaved over "
                "the rows; each is the median over the runs, the range (min-max) in brackets. Each run is equivalent to:"
            )
        else:
            lines = bench["metrics"]["deepsparse_benchmark_commands"]
            said = "DeepSparse's own benchmark was not run by this stage" + (
                " (deepsparse is not installed)" if own else " (deepsparse_benchmark: true runs it)"
            )
            said += "; the equivalent command lines of its DeepSparse rows:"
        blocks: list[Any] = [
            table,
            fastest_line(bench["metrics"]["rows"]),
            "; ".join(f"{k}: {v:.2f}x" for k, v in record.ratios.items()) or "",
            said,
            ("code", "\n".join(portable_command(c, rep.out, data, "<data>") for c in lines)),
        ]
        return [(SPEED, Section("Speed", blocks))]

    def key_notes(self, rep: ReportInput) -> list[str]:
        from lit_kd.speed import BASELINE

        accuracy = bench_accuracies(rep.manifests, next(iter(rep.of_kind("bench").values()), None))
        dense = accuracy.get(BASELINE)
        accurate = set() if dense is None else {m for m, acc in accuracy.items() if acc >= dense - 0.01}
        rows = rep.results.speed.rows if rep.results.speed else []
        eligible = [r for r in rows if r.batch == 32 and r.model in accurate]
        if not eligible:
            return []
        fast = max(eligible, key=lambda r: r.images_per_s)
        return [
            f"Fastest benchmarked model within 1 point of the dense FP32 model ({pct(dense)}): {fast.model} in "
            f"{fast.runtime}, {fast.images_per_s:,.0f} images/s at batch 32 ({pct(accuracy[fast.model])}); "
            "the benchmark's PyTorch INT8 model is calibrated on random images, so its accuracy is not measured."
        ]

    def headline_rows(self, results: Results) -> list[tuple[int, Row]]:
        return [(SPEED_ROWS, r) for r in speed_rows(results)]


def speed_row(r: SpeedRow) -> list[str]:
    """A row of the speed table: the model with its accuracy where measured, and for repeated measurements
    (``deepsparse.benchmark``) the number of runs and the range of latency and images/s over them."""
    model = r.model if r.accuracy is None else f"{r.model} ({pct(r.accuracy)})"
    latency, ips, runtime = f"{r.latency_ms_median:.2f}", f"{r.images_per_s:.0f}", r.runtime
    if r.repetitions is not None:
        runtime = f"{r.runtime}, {r.repetitions} x {r.seconds:g} s"
        latency += f" ({r.latency_ms_min:.2f}-{r.latency_ms_max:.2f})"
        ips += f" ({r.images_per_s_min:.0f}-{r.images_per_s_max:.0f})"
    return [model, runtime, str(r.batch), latency, ips]


def speed_table(manifest: dict, accuracy: dict[str, float] | None = None) -> tuple[Table, SpeedRecord]:
    """The speed table and record of a bench stage: lit-kd's loop rows, then ``deepsparse.benchmark``'s; a model of
    ``accuracy`` (label -> accuracy) has its accuracy in its rows."""
    from lit_kd.deepsparse_benchmark import DEEPSPARSE_BENCHMARK
    from lit_kd.speed import isa_text

    result = manifest["metrics"]
    own = result.get("deepsparse_benchmark") or {}
    measured = result["rows"] + [{k: v for k, v in r.items() if k != "command"} for r in own.get("rows", [])]
    rows = [{**r, "accuracy": (accuracy or {}).get(r["model"])} for r in measured]
    record = SpeedRecord.from_dict({"rows": rows, "ratios": result["ratios"]})
    table_rows = [speed_row(r) for r in record.rows]
    models = list(dict.fromkeys(r["model"] for r in result["rows"] if r["runtime"] == "onnxruntime"))
    missing = [*result.get("engines_not_installed", []), *([DEEPSPARSE_BENCHMARK] if own.get("installed") is False else [])]
    table_rows += [[model, engine, "-", "not installed", "not installed"] for engine in missing for model in models]
    m = result["machine"]
    after = f", {result['load_average_1min_after']:.2f} at the end" if "load_average_1min_after" in result else ""
    caption = (
        f"{m['cpu']} ({isa_text(m)}), {m['cores_used']} cores, load average {m['load_average_1min']:.2f} at the start{after}; "
        "medians after warm-up."
    )
    if accuracy:
        caption += (
            " In brackets after a model: its accuracy (the export stage's validation in ONNX Runtime, same weights in "
            "PyTorch FP32); none where not measured (PyTorch INT8 is calibrated on random images)."
        )
    return Table(["model", "runtime", "batch", "latency (ms)", "images/s"], table_rows, caption), record


def fastest_line(rows: list[dict]) -> str:
    """``Fastest engine per model: dense fp32: openvino at batch 1 (1,250 images/s), ...`` from the speed rows."""
    from lit_kd.speed import fastest

    by_model: dict[str, list[str]] = {}
    for f in fastest(rows):
        by_model.setdefault(f["model"], []).append(f"{f['runtime']} at batch {f['batch']} ({f['images_per_s']:,.0f} images/s)")
    return "Fastest engine per model: " + "; ".join(f"{m}: {', '.join(v)}" for m, v in by_model.items()) + "." if by_model else ""


def bench_accuracies(manifests: dict[str, dict], bench: dict | None) -> dict[str, float]:
    """Accuracy of each model label of the bench stage: the ONNX files' from their export validation (ONNX Runtime),
    PyTorch FP32 from the checkpoint's stage; PyTorch's dense INT8 (calibrated on random data) is not measured."""
    if not bench:
        return {}
    from lit_kd.speed import BASELINE, sparse_model

    out = {}
    files = ((bench.get("inputs") or {}).get("settings") or {}).get("bench") or {}
    for label, key in ((BASELINE, "baseline"), (sparse_model(bench["metrics"].get("rows", [])), "sparse")):
        export = next((m for m in manifests.values() if m["kind"] == "export" and m["outputs"]["onnx"] == files.get(key)), None)
        if export:
            out[label] = export["metrics"]["validation"]["onnxruntime"]["acc"]
    return out


def speed_rows(results: Results, batch: int = 32) -> list[Row]:
    rows = [r for r in (results.speed.rows if results.speed else []) if r.batch == batch]
    fast = next((r for r in rows if r.runtime == "deepsparse" and "dense" not in r.model), None)
    pytorch = [r for r in rows if r.runtime.startswith("pytorch")]
    if not fast or not pytorch:
        return []
    compared = "; ".join(
        f"{fast.images_per_s / r.images_per_s:.2f}x PyTorch {speed_row(r)[0]} at {r.images_per_s:,.0f} images/s"
        for r in sorted(pytorch, key=lambda r: -r.images_per_s)
    )
    cpu = results.machine.get("cpu") or {}
    where = f", {cpu['cores_used']} cores" if cpu.get("cores_used") else ""
    return [(f"DeepSparse, {speed_row(fast)[0]}, batch {batch}{where}", f"{fast.images_per_s:,.0f} images/s", compared)]
