"""FP32 versus INT8 inference speed on x86 CPU for the same model, in one run.

Runtimes: PyTorch eager FP32, PyTorch INT8 (torch.ao FX graph mode, x86 backend), ONNX Runtime FP32 and ONNX
Runtime INT8 (static QDQ, per-channel weights, calibrated on the same batches). For each: latency at batch 1 and
throughput at batch 32, after warm-up, as medians over repeats; thread counts pinned (torch and ONNX Runtime intra-op
threads). Speed does not depend on the weights' values: without ``--ckpt`` the models keep their initial weights
and calibrate on random normal inputs. Ratios are against PyTorch eager FP32 measured in the same run. ``--ckpt``
benchmarks one lit-kd checkpoint instead, labelled by the architecture it holds (``--models`` may then name only
that architecture).

Its INT8 models calibrate on random normal inputs (speed does not depend on the values): they are no accuracy
reference (the teacher's ONNX Runtime QDQ model loses 0.3 points with VNNI, 1.5 without). The deployable INT8 files,
calibrated on real images, come from ``lit-kd ptq --export-dir`` (docs/results.md, issue 27).

    python -m benchmarks.quant_speed --models resnet20 resnet18 --threads 2
    python -m benchmarks.quant_speed --ckpt lightning_logs/resnet20_cpu/version_0/checkpoints/best.ckpt --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import machine_info, write_json
from lit_kd.compat.onnxruntime_quantization import quantize_static_qdq
from lit_kd.models import build_model
from lit_kd.quant.torch_ptq import quantize_int8
from lit_kd.speed import onnxruntime_session, repeat_seconds


def onnx_sessions(model: torch.nn.Module, calib: list[torch.Tensor], threads: int, workdir: Path):
    fp32_path, int8_path = workdir / "fp32.onnx", workdir / "int8.onnx"
    torch.onnx.export(
        model,
        (calib[0][:1],),
        str(fp32_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    quantize_static_qdq(fp32_path, int8_path, [x.numpy() for x in calib])
    return {name: onnxruntime_session(p, threads) for name, p in (("fp32", fp32_path), ("int8", int8_path))}


def checkpoint_architecture(path: str) -> str:
    """The architecture a lit-kd checkpoint holds: its ``model`` (``student``) name, or the class of a class_path."""
    from lit_kd.checkpoints import network_key, read_checkpoint

    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    spec = hparams.get(network_key(hparams))
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and "class_path" in spec:
        return str(spec["class_path"]).rsplit(".", 1)[-1]
    raise ValueError(f"checkpoint {path!r} does not say which network it holds (no 'model' or 'student' hyperparameter)")


def bench_model(name: str, args, model: torch.nn.Module | None = None) -> list[dict]:
    """Rows of ``model`` (default: ``name`` built with its initial weights), labelled ``name``."""
    torch.manual_seed(0)
    model = (build_model(name) if model is None else model).eval()
    calib = [torch.randn(32, 3, 32, 32) for _ in range(args.calib_batches)]
    int8 = quantize_int8(model, calib)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = onnx_sessions(model, calib, args.threads, Path(tmp))
        runners = {
            "pytorch fp32 eager": lambda x: model(x),
            "pytorch int8 (fx, x86)": lambda x: int8(x),
            "onnxruntime fp32": lambda x: sessions["fp32"].run(None, {"input": x.numpy()}),
            "onnxruntime int8 (qdq)": lambda x: sessions["int8"].run(None, {"input": x.numpy()}),
        }
        rows = []
        with torch.inference_mode():
            for batch, iterations in ((1, args.iterations_b1), (32, args.iterations_b32)):
                x = torch.randn(batch, 3, 32, 32)
                for runtime, run in runners.items():
                    seconds = repeat_seconds(lambda run=run, x=x: run(x), iterations, args.warmup, args.repeats)
                    median = statistics.median(seconds)
                    rows.append(
                        {
                            "model": name,
                            "runtime": runtime,
                            "batch": batch,
                            "iterations": iterations,
                            "latency_ms_median": 1000 * median,
                            "latency_ms_per_repeat": [1000 * s for s in seconds],
                            "images_per_s": batch / median,
                        }
                    )
                    print(f"{name} {runtime:24s} batch {batch:2d}: {1000 * median:8.3f} ms, {batch / median:9.1f} img/s", flush=True)
    for row in rows:
        base = next(r for r in rows if r["batch"] == row["batch"] and r["runtime"] == "pytorch fp32 eager")
        row["speedup_vs_fp32_eager"] = row["images_per_s"] / base["images_per_s"]
    return rows


DEFAULT_MODELS = ["resnet20", "resnet18"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=None, help=f"architectures, with their initial weights (default: {' '.join(DEFAULT_MODELS)})"
    )
    parser.add_argument(
        "--ckpt", default=None, help="a lit-kd checkpoint to benchmark instead: one set of rows, labelled by its architecture"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations-b1", type=int, default=50)
    parser.add_argument("--iterations-b32", type=int, default=10)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--out", default="results/quant_speed.json")
    args = parser.parse_args(argv)
    for flag in ("threads", "repeats", "iterations_b1", "iterations_b32", "calib_batches"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")

    if args.ckpt:
        from lit_kd.artifacts import load_model

        try:
            arch = checkpoint_architecture(args.ckpt)
            network = load_model(args.ckpt, kinds=("float",))[0]
        except (ValueError, FileNotFoundError, TypeError) as err:
            parser.error(f"--ckpt: {err}")
        if args.models and args.models != [arch]:
            parser.error(
                f"--ckpt benchmarks the one network of {args.ckpt} (a {arch}); --models {' '.join(args.models)} "
                "would label it with other names: leave --models out, or run the architectures without --ckpt"
            )
        jobs = [(arch, network)]
    else:
        jobs = [(name, None) for name in args.models or DEFAULT_MODELS]

    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    rows = [row for name, network in jobs for row in bench_model(name, args, network)]
    result = {
        "benchmark": "quant_speed",
        "machine": machine_info(args.threads),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "models": [name for name, _ in jobs],
        "ckpt": args.ckpt,
        "onnxruntime_threads": {"intra_op": args.threads, "inter_op": 1},
        "rows": rows,
    }
    write_json(args.out, result)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FP32 vs INT8 on {machine_info(args.threads)['cpu']} ({args.threads} threads), medians of {args.repeats} repeats")
    for col in ("model", "runtime", "batch", "latency (ms)", "images/s", "vs FP32 eager"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["runtime"],
            str(r["batch"]),
            f"{r['latency_ms_median']:.3f}",
            f"{r['images_per_s']:.0f}",
            f"{r['speedup_vs_fp32_eager']:.2f}x",
        )
    Console(width=160).print(table)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
