"""Why ONNX Runtime's INT8 QDQ model of the teacher lost 1.46 points, and what fixes it: test accuracy of each variant.

Variants (ONNX Runtime static QDQ, ``lit_kd.compat.onnxruntime_quantization.quantize_static_qdq``), each evaluated in
ONNX Runtime on the test set: the model ``benchmarks/quant_speed.py`` built (calibrated on random normal inputs),
then calibrated on real training images (the same ones our PTQ uses) with uint8 or int8 activations, per-tensor
weights, 7-bit weights (``reduce_range``), Percentile and Entropy calibration, the first and last layers in float;
and our own W8A8 PTQ written as QDQ (:func:`lit_kd.quant.qdq_export.export_qdq`) in ONNX Runtime and OpenVINO.
The CPU's VNNI flag is recorded (without VNNI, ONNX Runtime's U8S8 kernels can saturate in int16).

    python -m benchmarks.ort_int8_variants --ckpt weights/resnet20_teacher.pt --data $LIT_KD_CIFAR10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info, write_json
from lit_kd.artifacts import load_model
from lit_kd.compat.extras import installed
from lit_kd.compat.onnxruntime_quantization import quantize_static_qdq
from lit_kd.evaluation import fraction_equal, labels, predictions
from lit_kd.onnx_export import OnnxRuntimeNetwork, export_onnx_model
from lit_kd.quant.ptq import quantize
from lit_kd.quant.qdq_export import export_qdq
from lit_kd.quant.sweep import EVAL_BATCH, load_data

VARIANTS = {  # name -> (calibration data, options of quantize_static_qdq)
    "quant_speed.py as it was (random-normal calibration, uint8 act., per-channel, MinMax)": ("random", {}),
    "real images, uint8 act., per-channel, MinMax": ("real", {}),
    "real images, int8 act. (S8S8)": ("real", {"activations": "int8"}),
    "real images, per-tensor weights": ("real", {"per_channel": False}),
    "real images, reduce_range (7-bit weights)": ("real", {"reduce_range": True}),
    "real images, Percentile calibration": ("real", {"calibration": "Percentile"}),
    "real images, Entropy calibration": ("real", {"calibration": "Entropy"}),
    "real images, first and last layers float": ("real", {"exclude_first_last": True}),
    "random calibration, first and last layers float": ("random", {"exclude_first_last": True}),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="weights/resnet20_teacher.pt")
    p.add_argument("--data", default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--calib-images", type=int, default=1024, help="training images (lit-kd ptq's default: 8 batches of 128)")
    p.add_argument("--test-images", type=int, default=None, help="default: the whole test set")
    p.add_argument("--variants", nargs="*", default=None, help="names (substrings) of the variants to run; default all")
    p.add_argument("--out", default="results/ort_int8_variants.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.ckpt, kinds=("float",))[0]
    data = load_data(args.data)
    real = list(data.normalized_batches("train", 128, args.calib_images, shuffle=True))
    torch.manual_seed(0)
    random = [(torch.randn(32, 3, 32, 32), None) for _ in range(4)]  # what quant_speed.py calibrated on
    test = list(data.normalized_batches("test", EVAL_BATCH, args.test_images))
    truth = labels(test)
    fp32_pred = predictions(model, test)
    rows = [{"variant": "fp32 (PyTorch)", "acc": fraction_equal(fp32_pred, truth), "agree_fp32": 1.0}]

    def add(name: str, network) -> torch.Tensor:
        start = time.perf_counter()
        pred = predictions(network, test)
        rows.append({"variant": name, "acc": fraction_equal(pred, truth), "agree_fp32": fraction_equal(pred, fp32_pred)})
        rows[-1]["eval_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{100 * rows[-1]['acc']:6.2f} %  agree {100 * rows[-1]['agree_fp32']:6.2f} %  {name}", flush=True)
        return pred

    print(f"{100 * rows[0]['acc']:6.2f} %  fp32", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx_model(model, Path(tmp) / "fp32.onnx", opset=17)
        for i, (name, (calib, options)) in enumerate(VARIANTS.items()):
            if args.variants and not any(v in name for v in args.variants):
                continue
            batches = [x.numpy() for x, _ in (real if calib == "real" else random)]
            path = quantize_static_qdq(fp32_path, Path(tmp) / f"v{i}.onnx", batches, **options)
            add(f"onnxruntime QDQ: {name}", OnnxRuntimeNetwork(path, args.threads))
        qmodel = quantize(model, real, 8, 8, "minmax")
        sim = add("ours W8A8 (simulated, PyTorch)", qmodel)
        for activations in ("uint8", "int8"):
            qdq = export_qdq(qmodel, Path(tmp) / f"ours_{activations}.onnx", activations=activations)
            ort = add(f"ours W8A8 as QDQ ({activations} act.) in onnxruntime", OnnxRuntimeNetwork(qdq, args.threads))
            rows[-1]["agree_simulation"] = fraction_equal(ort, sim)
        if installed("openvino"):
            from lit_kd.openvino_engine import OpenVinoNetwork, convert

            ov = add("ours W8A8 as QDQ in OpenVINO", OpenVinoNetwork(convert(qdq), args.threads))
            rows[-1]["agree_simulation"] = fraction_equal(ov, sim)
    result = {
        "benchmark": "ort_int8_variants",
        "machine": machine_info(args.threads),
        "ckpt": args.ckpt,
        "calib_images": args.calib_images,
        "test_images": len(truth),
        "rows": rows,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
