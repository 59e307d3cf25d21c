"""``lit-kd bench``: inference speed of models in DeepSparse, ONNX Runtime and OpenVINO (and PyTorch) on CPU, in one run.

    lit-kd bench --baseline dense.onnx --sparse pruned_quantized.onnx [--int8 ours_w8a8.onnx|nncf_mixed.xml|pytorch_int8.pt2]
                 [--ckpt dense.ckpt] [--cores 2] [--engines deepsparse onnxruntime openvino "openvino throughput"]

OpenVINO (the ``openvino`` extra) runs each file synchronously with ``INFERENCE_NUM_THREADS = --cores`` and, as
"openvino throughput", with the THROUGHPUT hint (streams and threads chosen by the plugin, the batch split over its
infer requests); an ``.xml`` IR (``--int8``) runs in OpenVINO only, and a ``.pt2`` PT2E program (``--int8``, from
``lit-kd ptq --export-dir`` or a QAT run) in PyTorch only, compiled by ``torch.compile`` before its timed calls.

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

With ``--deepsparse-benchmark``, DeepSparse's own benchmark (``deepsparse.benchmark``'s ``benchmark_model``, in this
process) also runs on each ONNX file at batch 1 and 32, ``--scenario sync``, ``--num_cores = --cores``, for
``--benchmark-seconds`` after ``--benchmark-warmup`` seconds, ``--benchmark-repetitions`` times (interleaved over the
settings); the JSON's ``deepsparse_benchmark`` holds its median items/s and latency per setting with their range.
"""

from __future__ import annotations

import argparse

import torch.nn as nn

from lit_kd import speed
from lit_kd.commands.arguments import fail, load_float_network, load_trained_model, require_file, require_output, require_positive
from lit_kd.deepsparse_benchmark import BENCHMARK_DEFAULTS
from lit_kd.quant.pt2e import PROGRAM_SUFFIX
from lit_kd.speed import BASELINE, BENCH_DEFAULTS, BENCH_QAT_ADVICE, ENGINES, INT8, SPARSE


def parser(prog: str = "lit-kd bench", out: str = "results/sparse_speed.json") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="dense FP32 ONNX model (lit-kd export of the dense checkpoint)")
    p.add_argument("--sparse", help="pruned(-quantized) ONNX model (lit-kd export of the SparseML or pruned checkpoint)")
    p.add_argument("--int8", help="an INT8 model file: QDQ .onnx (lit-kd ptq --export-dir), OpenVINO .xml IR or PyTorch PT2E .pt2 program")
    p.add_argument("--ckpt", help="the dense lit-kd checkpoint: adds PyTorch FP32 eager and PyTorch INT8 rows")
    p.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="engines to time the files in (default: every installed one)"
    )
    p.add_argument("--cores", type=int, default=BENCH_DEFAULTS["cores"], help="cores for DeepSparse, ONNX Runtime and PyTorch threads")
    p.add_argument("--warmup", type=int, default=BENCH_DEFAULTS["warmup"], help="untimed calls before each measurement")
    p.add_argument("--iterations-b1", type=int, default=BENCH_DEFAULTS["iterations_b1"], help="timed calls at batch 1")
    p.add_argument("--iterations-b32", type=int, default=BENCH_DEFAULTS["iterations_b32"], help="timed calls at batch 32")
    p.add_argument(
        "--deepsparse-benchmark",
        action="store_true",
        help="also run DeepSparse's own benchmark (deepsparse.benchmark, sync, --num_cores = --cores) on each ONNX file at batch 1 and 32",
    )
    for name, text in (
        ("benchmark_seconds", "deepsparse.benchmark's -t: seconds timed per run"),
        ("benchmark_warmup", "deepsparse.benchmark's -w: warm-up seconds per run"),
        ("benchmark_repetitions", "deepsparse.benchmark runs per model and batch size"),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=BENCHMARK_DEFAULTS[name], help=text)
    p.add_argument("--out", default=out, help="JSON results")
    return p


def run_bench(onnx_files: dict[str, str], torch_model: nn.Module | None, args: argparse.Namespace) -> dict:
    """:func:`lit_kd.speed.run_bench` with this command's arguments."""
    engines = tuple(args.engines)
    benchmark = {name: getattr(args, name) for name in BENCHMARK_DEFAULTS} if args.deepsparse_benchmark else None
    return speed.run_bench(onnx_files, torch_model, args.cores, args.warmup, args.iterations_b1, args.iterations_b32, engines, benchmark)


def check_model(prog: str, flag: str, path: str) -> None:
    """``path`` is an ONNX model that passes ``onnx.checker`` and takes ``input`` (as ``lit-kd export`` writes them), or
    for ``--int8`` an OpenVINO IR that reads; one line and exit status 1 otherwise."""
    problem = speed.model_problem(flag, path) if flag == "--int8" else speed.onnx_problem(flag, path)
    if problem:
        fail(prog, problem)


def inputs_from_args(cli: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, str], nn.Module | None]:
    """The ONNX files by label and the dense PyTorch model (None without ``--ckpt``); usage errors through ``cli``
    (exit status 2), unusable files as one line with exit status 1."""
    for name in ("baseline", "sparse", "int8", "ckpt"):
        value = getattr(args, name)
        if value:
            require_file(cli, f"--{name}", value, {"ckpt": "checkpoint", "int8": "model"}.get(name, "ONNX model"))
    require_positive(cli, args, "cores", "iterations_b1", "iterations_b32", "benchmark_seconds", "benchmark_repetitions")
    require_positive(cli, args, "warmup", "benchmark_warmup", minimum=0)
    require_output(cli, args.out)
    flags = {BASELINE: "--baseline", SPARSE: "--sparse", INT8: "--int8"}
    onnx_files = {label: path for label, path in ((BASELINE, args.baseline), (SPARSE, args.sparse), (INT8, args.int8)) if path}
    for label, path in onnx_files.items():
        if label == INT8 and path.lower().endswith(PROGRAM_SUFFIX):
            load_trained_model(cli.prog, path, "", kinds=("pt2e",), flag="--int8")  # checked and read, not compiled
        else:
            check_model(cli.prog, flags[label], path)
    torch_model = None
    if args.ckpt:
        torch_model = load_float_network(cli.prog, args.ckpt, BENCH_QAT_ADVICE)
    return onnx_files, torch_model


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.baseline and not args.sparse and not args.int8:
        cli.error(
            "give at least one ONNX model (or OpenVINO IR): --baseline dense.onnx, --sparse pruned_quantized.onnx and/or "
            "--int8 model.onnx|model.xml|model.pt2"
        )
    onnx_files, torch_model = inputs_from_args(cli, args)
    return speed.report(run_bench(onnx_files, torch_model, args), args.out)
