"""Tables of the study report for the compression stages: post-training quantization, mixed precision, QAT, export
and speed. Every number comes from the stage manifests."""

from __future__ import annotations

from pathlib import Path

from lit_kd.atomic import copy_file
from lit_kd.study.render import Figure, Section, Table, pct


def ptq_table(manifest: dict) -> tuple[Table, list[dict]]:
    result = manifest["metrics"]
    fp32 = result["fp32_acc"]
    rows, data = [], []
    for r in result["rows"]:
        drop = fp32 - r["acc"]
        data.append({**r, "drop": drop})
        rows.append(
            [
                r["runtime"],
                f"W{r['weight_bits']}A{r['act_bits']}",
                r["method"],
                r["granularity"],
                "yes" if r["first_last_8bit"] else "no",
                pct(r["acc"]),
                f"{100 * drop:.2f}",
                pct(r["agree_fp32"]),
            ]
        )
    return Table(
        ["runtime", "bits", "method", "granularity", "first/last 8-bit", "test accuracy", "drop (points)", "same top-1 as FP32"],
        rows,
        f"{result['test_images']} test images, {result['calib_images']} calibration images from the training set.",
    ), data


def mixed_precision_section(name: str, result: dict, fig_dir: Path) -> Section:
    """The chosen per-layer widths of a ``lit-kd ptq --max-drop`` stage, test accuracies, and its Pareto plot (copied
    into the report's figures, so that the report folder holds every image it shows)."""
    search = result["search"]
    chosen = search["chosen"]["weight_bits"]
    act, harm = search.get("layer_act_bits") or {}, search["sensitivity"]
    rows = [
        [path, f"{facts['params']:,}", f"{chosen[path]}/{act.get(path, search['act_bits'])}", f"{harm[path][str(chosen[path])]:+.4f}"]
        for path, facts in search["layers"].items()
    ]
    accs = result["test_acc"]
    text = (
        f"Budget {100 * search['max_drop']:.2f} points on {result['eval_images']} held-out training images; average weight "
        f"width {result['chosen_average_weight_bits']:.2f} bits, {result['chosen_weight_bytes'] / 1024:.1f} KiB of weights against "
        f"{result['fp32_weight_bytes'] / 1024:.1f} KiB in FP32 and {result['uniform_int8_weight_bytes'] / 1024:.1f} KiB in uniform INT8; "
        f"search measurements {result.get('search_measured_seconds', result['search_seconds'])} s. Test accuracy: "
        + ", ".join(f"{k} {pct(v)}" for k, v in accs.items())
        + "."
    )
    return Section(
        f"Mixed precision ({name})",
        [
            text,
            Table(
                ["layer", "parameters", "bits (W/A)", "sensitivity"],
                rows,
                "Sensitivity: increase of the held-out loss with this layer alone at its width.",
            ),
            Figure(
                copy_file(Path(result["plot"]), fig_dir / f"{name}_pareto.png"),
                "Accuracy against weight size of every allocation evaluated.",
            ),
        ],
    )


def qat_table(manifests: dict[str, dict]) -> tuple[Table | None, list[dict]]:
    rows, data = [], []
    for name, m in manifests.items():
        if m["kind"] != "fit" or "int8" not in m["outputs"]:
            continue
        start = _start_of(m, manifests)
        start_acc = manifests[start]["metrics"]["test_acc"] if start else None
        x = m["metrics"]
        record = {
            "stage": name,
            "started_from": start,
            "fp32_acc": start_acc,
            "fake_quant_val_acc": x.get("best_val_acc"),
            "int8_test_acc": x["test_acc"],
            "drop": None if start_acc is None else start_acc - x["test_acc"],
        }
        data.append(record)
        rows.append(
            [
                name,
                start or "-",
                pct(start_acc),
                pct(x.get("best_val_acc")),
                pct(x["test_acc"]),
                "-" if record["drop"] is None else f"{100 * record['drop']:.2f}",
            ]
        )
    if not rows:
        return None, []
    return Table(
        ["stage", "started from", "FP32 test accuracy", "fake-quant validation (best)", "real INT8 test accuracy", "drop (points)"],
        rows,
        "INT8: torch.ao FX, x86 kernels, the best checkpoint converted. A negative drop: the QAT epochs also trained the "
        "network further, with the loss of the stage it started from.",
    ), data


def _start_of(manifest: dict, manifests: dict[str, dict]) -> str | None:
    """The stage whose checkpoint a fit stage started from (through a select stage when there is one)."""
    consumed = manifest["inputs"].get("consumed", {})
    for name in manifest.get("needs", []):
        other = manifests.get(name)
        if other and other["outputs"].get("ckpt") in consumed:
            return other["metrics"].get("chosen", name) if other["kind"] == "select" else name
    return None


def export_table(manifests: dict[str, dict]) -> tuple[Table | None, list[dict]]:
    rows, data = [], []
    for name, m in manifests.items():
        if m["kind"] != "export":
            continue
        x, v = m["metrics"], m["metrics"]["validation"]
        data.append({"stage": name, "precision": x["precision"], "weight_sparsity": x["weight_sparsity"], **v})
        rows.append(
            [
                name,
                x["precision"],
                f"{100 * x['weight_sparsity']:.1f} %",
                str(v["images"]),
                pct(v["pytorch"]["acc"]),
                pct(v["onnxruntime"]["acc"]),
                pct(v["onnxruntime"]["agreement"]),
                *(
                    [pct(v["deepsparse"]["acc"]), pct(v["deepsparse"]["agreement"])]
                    if "acc" in v["deepsparse"]
                    else ["not installed", "not installed"]
                ),
            ]
        )
    if not rows:
        return None, []
    return Table(
        [
            "export",
            "precision",
            "weight sparsity",
            "images",
            "PyTorch",
            "ONNX Runtime",
            "agrees with PyTorch",
            "DeepSparse",
            "agrees with PyTorch",
        ],
        rows,
        "ONNX files validated on test images in both runtimes.",
    ), data


def speed_table(manifest: dict) -> tuple[Table, list[dict], dict]:
    result = manifest["metrics"]
    rows = [
        [r["model"], r["runtime"], str(r["batch"]), f"{r['latency_ms_median']:.2f}", f"{r['images_per_s']:.0f}"] for r in result["rows"]
    ]
    models = list(dict.fromkeys(r["model"] for r in result["rows"] if r["runtime"] == "onnxruntime"))
    rows += [
        [model, engine, "-", "not installed", "not installed"] for engine in result.get("engines_not_installed", []) for model in models
    ]
    m = result["machine"]
    caption = (
        f"{m['cpu']} ({m['isa']}, VNNI {'yes' if m['vnni'] else 'no'}), {m['cores_used']} cores, load average "
        f"{m['load_average_1min']:.2f} at the start; medians after warm-up."
    )
    return Table(["model", "runtime", "batch", "latency (ms)", "images/s"], rows, caption), result["rows"], result["ratios"]


# ------------------------------------------------------------------------------------------------ key results
