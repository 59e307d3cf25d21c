"""The study's ptq, export and bench stages: the library functions behind ``lit-kd ptq``, ``lit-kd export`` and
``lit-kd bench``, called with a stage's settings (named as the command's flags) and checked as the command checks
its arguments. A setting the command would refuse, or an input that cannot be used, is a :class:`StepError` whose
message is the command's own error line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class StepError(Exception):
    """A ptq/export/bench stage that cannot run on its settings or inputs."""


def _split(kind: str, settings: dict, required: tuple[str, ...], allowed: list[str]) -> dict:
    """The settings, checked for required and unknown names (as argparse would report them)."""
    missing = [name for name in required if not settings.get(name)]
    if missing:
        raise StepError(f"lit-kd {kind}: error: the following arguments are required: {', '.join('--' + m for m in missing)}")
    unknown = [name for name in settings if name not in (*required, *allowed)]
    if unknown:
        raise StepError(f"lit-kd {kind}: error: unrecognized arguments: {' '.join('--' + u.replace('_', '-') for u in unknown)}")
    return dict(settings)


def _positive(kind: str, settings: dict, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = settings.get(name)
        if value is not None and value < minimum:
            raise StepError(f"lit-kd {kind}: error: --{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _float_network(kind: str, ckpt: str, advice: str):
    from lit_kd.artifacts import ModelFileError, QatCheckpointError, load_model

    prog = f"lit-kd {kind}"
    try:
        return load_model(ckpt, kinds=("float",))[0]
    except QatCheckpointError as err:
        raise StepError(f"{prog}: error: {err.advice_line(prog, advice)}") from None
    except ModelFileError as err:
        raise StepError(f"{prog}: error: {err.line()}") from None


def ptq(settings: dict) -> dict:
    from lit_kd.quant.sweep import PTQ_QAT_ADVICE, PtqError, PtqSettings, run_ptq

    s = _split("ptq", settings, ("ckpt", "data", "out"), PtqSettings.names())
    ckpt, data, out = s.pop("ckpt"), s.pop("data"), s.pop("out")
    options = PtqSettings(**s)
    problem = options.problem()
    if problem:
        raise StepError(f"lit-kd ptq: error: {problem}")
    model = _float_network("ptq", ckpt, PTQ_QAT_ADVICE)
    try:
        return run_ptq(model, ckpt, data, options, out)
    except PtqError as err:
        raise StepError(f"lit-kd ptq: error: {err}") from None


def export(settings: dict) -> dict:
    from lit_kd.onnx_export import EXPORT_DEFAULTS, MAX_OPSET, MIN_OPSET, ExportError, export_checkpoint

    given = _split("export", settings, ("ckpt", "data", "out"), ["config", *EXPORT_DEFAULTS, "cores"])
    s = {**EXPORT_DEFAULTS, "config": None, "cores": os.cpu_count(), **given}
    _positive("export", s, ("images", "batch_size", "cores"))
    if not MIN_OPSET <= s["opset"] <= MAX_OPSET:
        raise StepError(f"lit-kd export: error: --opset must be from {MIN_OPSET} to {MAX_OPSET}, got {s['opset']}")
    try:
        return export_checkpoint(s["ckpt"], s["out"], s["config"], s["opset"], s["data"], s["images"], s["batch_size"], s["cores"])
    except ExportError as err:
        raise StepError(f"lit-kd export: error: {err}") from None


def bench(settings: dict) -> dict:
    from lit_kd import speed

    s = {**speed.BENCH_DEFAULTS, **_split("bench", settings, ("out",), ["baseline", "sparse", "ckpt", *speed.BENCH_DEFAULTS])}
    _positive("bench", s, ("cores", "iterations_b1", "iterations_b32"))
    _positive("bench", s, ("warmup",), minimum=0)
    onnx_files = {label: s[name] for label, name in ((speed.BASELINE, "baseline"), (speed.SPARSE, "sparse")) if s.get(name)}
    if not onnx_files:
        raise StepError("lit-kd bench: error: give at least one ONNX model: --baseline dense.onnx and/or --sparse pruned_quantized.onnx")
    for label, path in onnx_files.items():
        problem = speed.onnx_problem("--baseline" if label == speed.BASELINE else "--sparse", path)
        if problem:
            raise StepError(f"lit-kd bench: error: {problem}")
    torch_model = _float_network("bench", s["ckpt"], speed.BENCH_QAT_ADVICE) if s.get("ckpt") else None
    result = speed.run_bench(onnx_files, torch_model, s["cores"], s["warmup"], s["iterations_b1"], s["iterations_b32"])
    return speed.report(result, Path(s["out"]))


STEPS: dict[str, Callable[[dict], dict]] = {"ptq": ptq, "export": export, "bench": bench}
