"""PyTorch INT8 by PT2E (torch.export + X86InductorQuantizer, torch.compile) against FX (torch.ao, x86), side by side.

Both quantize the same network from the same calibration images (the training batches ``lit-kd ptq`` uses:
``--calib-batches`` shuffled batches of ``--batch-size``), are measured on the same test images, and are timed in
one run with repeats interleaved (FP32 eager, FX INT8, PT2E INT8 compiled, in turn, each repeat), thread count
pinned: latency at batch 1 and throughput at batch 32, medians over repeats. PT2E accuracy is that of the compiled
program (the INT8 kernels that run); ``--reference`` also measures the uncompiled quantize/dequantize program.

    python -m benchmarks.pt2e_vs_fx --ckpt weights/resnet20_teacher.pt --threads 2 --out /tmp/pt2e/pt2e_vs_fx.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import machine_info, write_json
from lit_kd.evaluation import fraction_equal, labels, predictions
from lit_kd.quant.pt2e import compile_int8, quantize_pt2e_ptq
from lit_kd.quant.torch_ptq import quantize_int8
from lit_kd.speed import repeat_seconds


def timed(label: str, build):
    start = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - start
    print(f"{label}: built in {seconds:.1f} s", flush=True)
    return model, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="weights/resnet20_teacher.pt")
    parser.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="calibration batch size (as lit-kd ptq)")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--test-images", type=int, default=None, help="default: the whole test set")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations-b1", type=int, default=50)
    parser.add_argument("--iterations-b32", type=int, default=10)
    parser.add_argument("--reduce-range", action="store_true", help="PT2E activations on 0..127 (CPUs without VNNI)")
    parser.add_argument("--reference", action="store_true", help="also the accuracy of the uncompiled PT2E program")
    parser.add_argument("--out", default="results/pt2e_vs_fx.json")
    args = parser.parse_args(argv)

    from lit_kd.artifacts import load_model
    from lit_kd.quant.sweep import load_data

    torch.set_num_threads(args.threads)
    model = load_model(args.ckpt, kinds=("float",))[0].eval()
    data = load_data(args.data)
    calib = list(data.normalized_batches("train", args.batch_size, args.calib_batches * args.batch_size, shuffle=True))
    test = list(data.normalized_batches("test", 250, args.test_images))
    truth = labels(test)

    fx, fx_s = timed("fx", lambda: quantize_int8(model, calib))
    program, pt2e_s = timed("pt2e", lambda: quantize_pt2e_ptq(model, calib, reduce_range=args.reduce_range))
    compiled = compile_int8(program)
    runners = {"fp32 eager": model, "fx int8 (x86)": fx, "pt2e int8 (inductor)": compiled}
    accuracy, agree = {}, {}
    with torch.inference_mode():
        fp32_pred = predictions(model, test)
    for name, run in list(runners.items())[1:] + ([("pt2e int8 reference (q/dq, uncompiled)", program)] if args.reference else []):
        start = time.perf_counter()
        with torch.no_grad():
            pred = predictions(run, test)
        accuracy[name], agree[name] = fraction_equal(pred, truth), fraction_equal(pred, fp32_pred)
        print(f"{name}: acc {accuracy[name]:.4f}, agrees with fp32 on {agree[name]:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    accuracy["fp32 eager"] = fraction_equal(fp32_pred, truth)

    loads = [open("/proc/loadavg").read().split()[:3]]
    times: dict[tuple[str, int], list[float]] = {}
    inputs = {1: test[0][0][:1].contiguous(), 32: test[0][0][:32].contiguous()}
    iterations = {1: args.iterations_b1, 32: args.iterations_b32}
    with torch.no_grad():
        for x in inputs.values():
            for run in runners.values():
                repeat_seconds(lambda run=run, x=x: run(x), 1, args.warmup, 1)  # warm-up (and compile for this shape)
        for _ in range(args.repeats):
            for batch, x in inputs.items():
                for name, run in runners.items():
                    times.setdefault((name, batch), []).extend(repeat_seconds(lambda run=run, x=x: run(x), iterations[batch], 0, 1))
    loads.append(open("/proc/loadavg").read().split()[:3])
    rows = []
    for (name, batch), seconds in times.items():
        median = statistics.median(seconds)
        rows.append(
            {
                "runtime": name,
                "batch": batch,
                "iterations": iterations[batch],
                "repeats": len(seconds),
                "latency_ms_median": 1000 * median,
                "latency_ms_per_repeat": [1000 * s for s in seconds],
                "images_per_s": batch / median,
            }
        )
        print(f"{name:22s} batch {batch:2d}: {1000 * median:8.3f} ms, {batch / median:8.1f} img/s", flush=True)
    result = {
        "benchmark": "pt2e_vs_fx",
        "checkpoint": args.ckpt,
        "machine": machine_info(args.threads),
        "load_average_before_after": loads,
        "calib_images": sum(len(x) for x, _ in calib),
        "test_images": len(truth),
        "reduce_range": args.reduce_range,
        "accuracy": accuracy,
        "agree_fp32": agree,
        "quantize_seconds": {"fx": fx_s, "pt2e": pt2e_s},
        "rows": rows,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
