"""Every engine a user would pick for one float model, side by side in one run: accuracy beside speed.

From one float checkpoint: PyTorch FP32 eager, PyTorch INT8 (FX, x86) and PT2E INT8 compiled by inductor; ONNX
Runtime FP32 and INT8 (our W8A8 PTQ exported as QDQ); OpenVINO FP32 IR (f32 precision hint), INT8 from NNCF PTQ
(performance preset) and our QDQ model, and NNCF's INT8 IR with the THROUGHPUT hint (the ``openvino`` extra);
DeepSparse FP32 and, with ``--sparse``, DeepSparse on that pruned-quantized ONNX file (the ``sparse`` extra). Every
INT8 model is calibrated on the same training images (``lit-kd ptq``'s: shuffled, 8 x 128 by default); each
setting's top-1 accuracy is measured on the test images by the very runner that is timed (batches of 32), except the
THROUGHPUT setting, which runs NNCF's IR as its synchronous setting does and takes its accuracy.

Timing (:mod:`lit_kd.round_robin`): every setting is built first, then ``--rounds`` rounds, each timing every setting
in turn (order rotated each round) at batch 1 and 32; per setting the median over rounds and the spread (min/max of
the round medians). Threads are pinned: ``torch.set_num_threads``, ONNX Runtime intra-op threads (spinning off, so
idle sessions leave the cores), OpenVINO ``INFERENCE_NUM_THREADS``, DeepSparse ``num_cores``. The JSON names the
fastest setting per precision and batch, ratios from the same run (INT8 settings vs OpenVINO + NNCF INT8, FP32 ones vs
PyTorch FP32 eager, DeepSparse pruned-quantized vs the fastest dense INT8), the CPU's instruction set and the load
average before and after (``load_warning`` when other work shared the cores).

    python -m benchmarks.engines --ckpt weights/resnet20_teacher.pt [--sparse pruned_quantized.onnx] --threads 2 \\
        --rounds 5 --out results/engines_resnet20_teacher.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from benchmarks.common import write_json
from lit_kd import speed
from lit_kd.compat.extras import EXTRA_OF, missing_extras
from lit_kd.evaluation import fraction_equal, labels, predictions
from lit_kd.onnx_export import export_onnx_model, padded
from lit_kd.round_robin import round_robin, spread_rows

NNCF = "openvino int8 (nncf performance)"
THROUGHPUT = "openvino throughput int8 (nncf performance)"
SPARSE = "deepsparse pruned-quantized (--sparse)"
REFERENCE = {"fp32": "pytorch fp32 eager", "int8": NNCF}  # ratios: each setting of a precision vs this one
ACCURACY_FROM = {THROUGHPUT: NNCF}  # the THROUGHPUT runner returns no logits: the same compiled IR as NNCF's row
ENGINE_PACKAGES = {"openvino": ("openvino", "nncf"), "deepsparse": ("deepsparse",)}  # engines of an optional extra
EVAL_BATCH = 32  # DeepSparse engines are compiled for batch 1 and 32 only


class Setting(NamedTuple):
    engine: str
    precision: str  # fp32, int8, or "int8 sparse" (another network: not in the dense INT8 ranking)
    run: Callable[[np.ndarray], object]


def build_settings(model: torch.nn.Module, calib: list, folder: Path, cores: int, sparse: str | None) -> tuple[dict, list[str]]:
    """Every :class:`Setting` whose engine is installed, by name, and the engines that are not."""
    from lit_kd.quant.ptq import quantize
    from lit_kd.quant.qdq_export import OPENVINO_ACTIVATIONS, export_qdq
    from lit_kd.quant.torch_ptq import quantize_int8

    fp32_onnx = str(export_onnx_model(model, folder / "fp32.onnx"))  # DeepSparse takes str paths only
    ours = quantize(model, calib, 8, 8, "minmax")
    qdq = export_qdq(ours, folder / "ours_w8a8.onnx")  # int8 activations for ONNX Runtime, uint8 for OpenVINO (lit-kd ptq's files)
    ort = partial(speed.onnxruntime_runner, spin=False)
    built = {
        REFERENCE["fp32"]: lambda: Setting("pytorch", "fp32", speed.module_runner(model)),
        "pytorch int8 fx (x86)": lambda: Setting("pytorch", "int8", speed.module_runner(quantize_int8(model, calib))),
        "pytorch int8 pt2e (inductor)": lambda: Setting("pytorch", "int8", speed.module_runner(quantize_int8(model, calib, flow="pt2e"))),
        "onnxruntime fp32": lambda: Setting("onnxruntime", "fp32", ort(fp32_onnx, cores)),
        "onnxruntime int8 (ours w8a8 qdq)": lambda: Setting("onnxruntime", "int8", ort(qdq, cores)),
    }
    missing = list(missing_extras(list(ENGINE_PACKAGES), ENGINE_PACKAGES))
    if "openvino" not in missing:
        from lit_kd.openvino_engine import convert, save_ir
        from lit_kd.quant.nncf_ptq import nncf_quantize

        ov, ov_throughput = speed.runner_factory("openvino"), speed.runner_factory("openvino throughput")
        fp32_ir = save_ir(convert(model), folder / "fp32.xml")
        nncf_ir = save_ir(nncf_quantize(model, calib, "performance"), folder / "nncf_performance.xml")
        built["openvino fp32"] = lambda: Setting("openvino", "fp32", ov(fp32_ir, cores))
        built[NNCF] = lambda: Setting("openvino", "int8", ov(nncf_ir, cores))
        ours_ir = save_ir(convert(export_qdq(ours, folder / "ours_w8a8_uint8.onnx", activations=OPENVINO_ACTIVATIONS)), folder / "ours.xml")
        built["openvino int8 (ours w8a8 qdq)"] = lambda: Setting("openvino", "int8", ov(ours_ir, cores))
        built[THROUGHPUT] = lambda: Setting("openvino throughput", "int8", ov_throughput(nncf_ir, cores))
    if "deepsparse" not in missing:
        ds = speed.runner_factory("deepsparse")
        built["deepsparse fp32"] = lambda: Setting("deepsparse", "fp32", ds(fp32_onnx, cores))
        if sparse:
            built[SPARSE] = lambda: Setting("deepsparse", "int8 sparse", ds(sparse, cores))
    settings = {}
    for name, build in built.items():
        start = time.perf_counter()
        settings[name] = build()
        print(f"built {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return settings, missing


def logits(out: object) -> np.ndarray:
    """The first output of a runner's result: a tensor, a list of arrays (ONNX Runtime, DeepSparse) or OpenVINO's dict."""
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out[0])


def runner_accuracy(run, test: list, truth: torch.Tensor) -> float:
    """Top-1 accuracy of a timing runner on ``test`` (batches of at most EVAL_BATCH images, padded to it)."""
    network = lambda x: torch.from_numpy(logits(run(padded(np.ascontiguousarray(x.numpy()), EVAL_BATCH)))[: len(x)].copy())
    return fraction_equal(predictions(network, test), truth)


def compare(rows: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """The fastest setting per precision and batch, and the ratios of images/s between settings (same run)."""
    fastest = speed.fastest(rows, group="precision", name="setting")
    ips = {(r["setting"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {}
    for r in rows:
        reference = REFERENCE.get(r["precision"])
        if reference and reference != r["setting"] and (reference, r["batch"]) in ips:
            ratios[f"{r['setting']} vs {reference}, batch {r['batch']}"] = r["images_per_s"] / ips[reference, r["batch"]]
    for f in fastest:
        if f["precision"] == "int8" and (SPARSE, f["batch"]) in ips:
            ratios[f"{SPARSE} vs fastest dense int8 ({f['setting']}), batch {f['batch']}"] = ips[SPARSE, f["batch"]] / f["images_per_s"]
    return fastest, ratios


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    table = Table(title=f"{result['checkpoint']} on {m['cpu']} ({speed.isa_text(m)}), {m['cores_used']} threads, {result['rounds']} rounds")
    for col in ("setting", "precision", "accuracy", "batch 1 ms (min-max)", "batch 32 images/s (min-max)"):
        table.add_column(col, justify="left" if col in ("setting", "precision") else "right")
    by = {(r["setting"], r["batch"]): r for r in result["rows"]}
    for name in dict.fromkeys(r["setting"] for r in result["rows"]):
        b1, b32 = by[name, 1], by[name, 32]
        table.add_row(
            name,
            b1["precision"],
            f"{100 * b1['accuracy']:.2f} %",
            f"{b1['latency_ms_median']:.3f} ({b1['latency_ms_min']:.3f}-{b1['latency_ms_max']:.3f})",
            f"{b32['images_per_s']:,.0f} ({b32['images_per_s_min']:,.0f}-{b32['images_per_s_max']:,.0f})",
        )
    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(table)
    for f in result["fastest"]:
        console.print(f"fastest {f['precision']} at batch {f['batch']}: {f['setting']} ({f['images_per_s']:,.0f} images/s)")
    for name, value in result["ratios"].items():
        console.print(f"images/s of {name}: {value:.2f}x")
    for engine in result["engines_not_installed"]:
        console.print(f"{engine}: not installed (pip install 'lit-kd[{EXTRA_OF[engine]}]'), no rows")
    if result["load_warning"]:
        console.print(f"[bold red]warning:[/] load average {result['load_average_before']} before, {result['load_average_after']} after: "
                      "other processes shared the cores, so these timings are not representative")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="weights/resnet20_teacher.pt", help="a float checkpoint or weights file")
    p.add_argument("--sparse", help="a pruned-quantized ONNX model (lit-kd export of a SparseML checkpoint) for DeepSparse")
    p.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"))
    p.add_argument("--threads", type=int, default=2, help="threads / cores of every engine")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10, help="untimed calls of each setting at each batch size before the rounds")
    p.add_argument("--iterations-b1", type=int, default=100, help="timed calls per round at batch 1")
    p.add_argument("--iterations-b32", type=int, default=20, help="timed calls per round at batch 32")
    p.add_argument("--calib-images", type=int, default=1024, help="training images every INT8 model is calibrated on (lit-kd ptq: 8 x 128)")
    p.add_argument("--test-images", type=int, default=None, help="test images for accuracy (default: all 10,000)")
    p.add_argument("--out", default="results/engines.json")
    args = p.parse_args(argv)
    for name in ("threads", "rounds", "iterations_b1", "iterations_b32", "calib_images", "test_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sparse and (problem := speed.onnx_problem("--sparse", args.sparse)):
        p.error(problem)

    from lit_kd.artifacts import load_model
    from lit_kd.quant.sweep import load_data

    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    model = load_model(args.ckpt, kinds=("float",))[0].eval()
    data = load_data(args.data)
    calib = list(data.normalized_batches("train", 128, args.calib_images, shuffle=True))
    test = list(data.normalized_batches("test", EVAL_BATCH, args.test_images))
    truth = labels(test)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        settings, missing = build_settings(model, calib, Path(tmp), args.threads, args.sparse)
        accuracy = {name: runner_accuracy(s.run, test, truth) for name, s in settings.items() if name not in ACCURACY_FROM}
        accuracy |= {name: accuracy[source] for name, source in ACCURACY_FROM.items() if name in settings}
        images = padded(np.ascontiguousarray(torch.cat([x for x, _ in test])[:32].numpy()), 32)
        iterations = {1: args.iterations_b1, 32: args.iterations_b32}
        times = round_robin({n: s.run for n, s in settings.items()}, {1: images[:1], 32: images}, args.rounds, args.warmup, iterations)
    load_after = os.getloadavg()
    rows = spread_rows(times, iterations)
    for r in rows:
        s = settings[r["setting"]]
        r.update(engine=s.engine, precision=s.precision, accuracy=accuracy[r["setting"]])
    fastest, ratios = compare(rows)
    machine = {**speed.cpu_info(args.threads), "torch_threads": torch.get_num_threads()}
    result = {
        "benchmark": "engines",
        "checkpoint": args.ckpt,
        "sparse": args.sparse,
        "machine": machine,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "load_warning": speed.overloaded(load_before[0], machine["logical_cpus"], args.threads)
        or speed.overloaded(load_after[0], machine["logical_cpus"], args.threads, own=args.threads),
        "calib_images": sum(len(x) for x, _ in calib),
        "test_images": len(truth),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "iterations": {str(b): n for b, n in iterations.items()},
        "engines_not_installed": missing,
        "rows": rows,
        "fastest": fastest,
        "ratios": ratios,
    }
    print_result(result)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
