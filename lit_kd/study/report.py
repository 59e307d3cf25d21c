"""The study report: ``report.md`` with PNGs beside it, ``report.html`` (one self-contained file, figures embedded)
and ``results.json`` (every table of the report, machine-readable). Every number comes from the stage manifests.

The report is built once as a list of sections (text, tables, figures) and rendered twice, to Markdown and HTML.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from lit_kd.atomic import write_json, write_text
from lit_kd.study.manifest import portable_command
from lit_kd.study.render import Figure, Section, Table, minutes, pct, pts, to_html, to_markdown
from lit_kd.study.spec import Study
from lit_kd.study.tables import export_table, mixed_precision_section, ptq_table, qat_table, speed_table


def wall_time(manifest: dict) -> str:
    """A stage's wall time, all its attempts together: an interrupted and resumed stage says how many there were."""
    attempts = manifest.get("attempts") or 1
    return minutes(manifest.get("wall_s")) + (f" ({attempts} attempts)" if attempts > 1 else "")


def trained(manifests: dict[str, dict]) -> dict[str, dict]:
    return {n: m for n, m in manifests.items() if m["kind"] in ("fit", "weights")}


def validation_note(manifests: dict[str, dict]) -> str:
    """Which training stages validated on the test set (``val_split: 0``): their stopping rule and best checkpoint
    read test accuracy, so their test accuracies are optimistic by that selection. Empty when none did."""
    fits = [(m.get("resolved_config") or {}).get("data", {}).get("init_args", {}) for m in manifests.values() if m["kind"] == "fit"]
    on_test = [args for args in fits if not args.get("val_split")]
    if not on_test:
        return ""
    which = "All" if len(on_test) == len(fits) else f"{len(on_test)} of the {len(fits)}"
    return (
        f"{which} training stages validated on the test set (`val_split: 0`, the study protocol): the plateau rule "
        "and the choice of the best checkpoint read test accuracy, so the test accuracies of those stages are "
        "best-epoch numbers, optimistic by that selection (by the epoch-to-epoch spread of the curves below). "
        "`data.init_args.val_split: N` holds out N training images for validation instead."
    )


# ------------------------------------------------------------------------------------------------ tables
def models_table(manifests: dict[str, dict]) -> tuple[Table, list[dict]]:
    rows, data = [], []
    for name, m in trained(manifests).items():
        x = m["metrics"]
        record = {
            "stage": name,
            "architecture": x["architecture"],
            "params": x["params"],
            "nonzero_params": x["nonzero_params"],
            "macs": x["macs"],
            "size_bytes": x["size_bytes"],
            "test_acc": x["test_acc"],
            "epochs": x.get("epochs"),
            "stop_reason": x.get("stop_reason"),
            "wall_s": m.get("wall_s"),
        }
        data.append(record)
        rows.append(
            [
                name,
                str(x["architecture"]),
                f"{x['params']:,}",
                f"{x['nonzero_params']:,}",
                f"{x['macs'] / 1e6:.1f} M",
                f"{x['size_bytes'] / 1e6:.2f} MB",
                pct(x["test_acc"]),
                "-" if x.get("epochs") is None else str(x["epochs"]),
                str(x.get("stop_reason")),
                wall_time(m),
            ]
        )
    header = ["stage", "architecture", "parameters", "non-zero", "MACs", "size", "test accuracy", "epochs", "stopped by", "wall time"]
    caption = (
        "Test accuracy on the full test set; size: serialized weights (the INT8 model for QAT runs); wall time: every "
        "attempt of the stage together, on whatever else shared the cores."
    )
    return Table(header, rows, caption), data


def distillation_table(
    spec: dict, manifests: dict[str, dict], groups: dict[str, list[str]], curves: dict[str, dict] | None = None
) -> tuple[Table | None, list[dict]]:
    """Rows of ``spec["rows"]`` (stage or seed-group names) against ``spec["baseline"]``: mean, spread, delta; and,
    from the training curves, each setup's mean validation accuracy after as many epochs as the baseline's shortest
    run, since a stopping rule can end setups after different numbers of epochs."""
    if not spec:
        return None, []
    curves = curves or {}

    def members(name: str) -> list[str]:
        return [m for m in groups.get(name, [name]) if m in manifests]

    def val_at(stage: str, epoch: int) -> float | None:
        return dict(curves.get(stage, {}).get("val/acc", [])).get(epoch - 1)

    baseline = members(spec["baseline"])
    base_mean = statistics.mean(manifests[m]["metrics"]["test_acc"] for m in baseline) if baseline else None
    base_epochs = [manifests[m]["metrics"].get("epochs") for m in baseline]
    k = min(base_epochs) if base_epochs and all(isinstance(e, int) for e in base_epochs) else None
    rows, data = [], []
    for name in [spec["baseline"], *spec.get("rows", [])]:
        stages = members(name)
        if not stages:
            continue
        values = [manifests[m]["metrics"]["test_acc"] for m in stages]
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else None
        early = [val_at(m, k) for m in stages] if k else []
        early_mean = statistics.mean(early) if early and None not in early else None
        record = {
            "stage": name,
            "seeds": len(values),
            "test_accs": values,
            "epochs": [manifests[m]["metrics"].get("epochs") for m in stages],
            "mean": mean,
            "std": spread,
            "delta_vs_baseline": None if base_mean is None or name == spec["baseline"] else mean - base_mean,
            "equal_epochs": k,
            "val_acc_at_equal_epochs": early_mean,
        }
        data.append(record)
        rows.append(
            [
                name + (" (data only)" if name == spec["baseline"] else ""),
                str(len(values)),
                ", ".join(pct(v) for v in values),
                ", ".join(str(e) for e in record["epochs"]),
                pct(mean),
                "-" if spread is None else f"{100 * spread:.2f}",
                pts(record["delta_vs_baseline"]),
                pct(early_mean),
            ]
        )
    header = ["student", "seeds", "test accuracy per seed", "epochs", "mean", "std (points)", "vs data only (points)"]
    table = Table(
        [*header, f"validation accuracy after {k} epochs" if k else "validation accuracy at equal epochs"],
        rows,
        "Same student architecture, seeds and data; the teacher is frozen. The stopping rule ends setups after different "
        "numbers of epochs: the last column compares them after as many epochs as the shortest data-only run (mean "
        "over seeds, from the training curves).",
    )
    return table, data


def key_results(results: dict, bench_rows: list[dict], accuracy_of_bench_model: dict[str, float]) -> tuple[Table | None, list[str]]:
    """The report's opening: the README headline's rows (teacher, students, PTQ, mixed precision, QAT, pruning,
    speed; :mod:`lit_kd.study.headline`, the one home of what counts as a key result), and the fastest benchmarked
    model within 1 point of the dense FP32 model the benchmark started from."""
    from lit_kd.speed import BASELINE
    from lit_kd.study.headline import headline_rows

    rows = headline_rows(results)
    caption = "The README's headline table shows these rows."
    table = Table(["what", "result", "compared with"], [list(r) for r in rows], caption) if rows else None
    notes = []
    dense = accuracy_of_bench_model.get(BASELINE)
    accurate = set() if dense is None else {m for m, acc in accuracy_of_bench_model.items() if acc >= dense - 0.01}
    eligible = [r for r in bench_rows if r["batch"] == 32 and r["model"] in accurate]
    if eligible:
        fast = max(eligible, key=lambda r: r["images_per_s"])
        notes.append(
            f"Fastest benchmarked model within 1 point of the dense FP32 model ({pct(dense)}): {fast['model']} in "
            f"{fast['runtime']}, {fast['images_per_s']:,.0f} images/s at batch 32 ({pct(accuracy_of_bench_model[fast['model']])}); "
            "the benchmark's PyTorch INT8 model is calibrated on random images, so its accuracy is not measured."
        )
    return table, notes


def bench_accuracies(manifests: dict[str, dict], bench: dict | None) -> dict[str, float]:
    """Accuracy of each model label of the bench stage: the ONNX files' from their export validation (ONNX Runtime),
    PyTorch FP32 from the checkpoint's stage; PyTorch's dense INT8 (calibrated on random data) is not measured."""
    if not bench:
        return {}
    from lit_kd.speed import BASELINE, SPARSE

    out = {}
    files = bench["inputs"]["settings"]["bench"]
    for label, key in ((BASELINE, "baseline"), (SPARSE, "sparse")):
        export = next((m for m in manifests.values() if m["kind"] == "export" and m["outputs"]["onnx"] == files.get(key)), None)
        if export:
            out[label] = export["metrics"]["validation"]["onnxruntime"]["acc"]
    return out


# ------------------------------------------------------------------------------------------------ assembly
def build(study: Study, out: Path, manifests: dict[str, dict], report_settings: dict, images=None) -> tuple[list[Section], dict]:
    fig_dir = out / "report_files"
    sections, results = [], {"study": study.path.name, "description": study.description, "stages": {}}
    for name, m in manifests.items():
        results["stages"][name] = {k: m.get(k) for k in ("kind", "status", "outputs", "metrics", "command", "wall_s", "seed", "group")}
    env = next((m["environment"] for m in manifests.values() if m.get("environment")), {})
    cpu = env.get("cpu", {})
    results["machine"] = env
    total = sum(m.get("wall_s") or 0 for m in manifests.values())
    data = next((m["inputs"]["data"] for m in manifests.values() if (m.get("inputs") or {}).get("data")), None)

    def short(command: str) -> str:
        return portable_command(command, out, data, "<data>")

    intro = Section(
        "Study",
        [
            study.description or "",
            f"Machine: {cpu.get('cpu', '?')} ({cpu.get('isa', '?')}, VNNI {'yes' if cpu.get('vnni') else 'no'}), "
            f"{cpu.get('cores_used', '?')} cores used"
            + (f"; accelerator {env['accelerator']}" if env.get("accelerator") else "")
            + f"; torch {env.get('versions', {}).get('torch')}, "
            f"lit-kd {env.get('code') or env.get('versions', {}).get('lit-kd')}. Wall time of all stages: {minutes(total)}. "
            f"The commands below write `<out>` for the study's folder, `{out.resolve()}`"
            + (f", and `<data>` for the data set, `{data}`." if data else "."),
            validation_note(manifests),
        ],
    )
    sections.append(intro)

    models, model_data = models_table(manifests)
    results["models"] = model_data
    sections.append(Section("Models", [models]))

    from lit_kd.study.figures import accuracy_overview_figure, curves_figure, read_curves, sparsity_figure

    curves = {n: read_curves(m["outputs"]["run_dir"]) for n, m in manifests.items() if m["kind"] == "fit"}
    curves = {n: c for n, c in curves.items() if c}
    dist, dist_data = distillation_table(report_settings.get("distillation") or {}, manifests, study.groups, curves)
    results["distillation"] = dist_data
    if dist:
        sections.append(Section("Distillation", [dist]))

    if curves:
        sections.append(
            Section(
                "Training curves",
                [
                    Figure(
                        accuracy_overview_figure(curves, {n: manifests[n].get("group") for n in curves}, fig_dir / "accuracy.png"),
                        "Validation accuracy per epoch of every training stage (seeds of one setup share a colour).",
                    ),
                    Figure(
                        curves_figure(curves, fig_dir / "curves.png"),
                        "Loss and accuracy per epoch (train dashed, validation solid), read from TensorBoard events.",
                    ),
                ],
            )
        )

    examples = next((m for m in manifests.values() if m["kind"] == "examples"), None)
    if examples:
        sections.append(examples_section(examples["metrics"], images, fig_dir))
        results["examples"] = examples["metrics"]

    for name, m in manifests.items():
        if m["kind"] == "ptq" and "search" in m["metrics"]:
            sections.append(mixed_precision_section(name, m["metrics"], fig_dir))
            results.setdefault("mixed_precision", {})[name] = {k: v for k, v in m["metrics"].items() if k != "search"}
        elif m["kind"] == "ptq":
            table, rows = ptq_table(m)
            sections.append(Section(f"Post-training quantization ({name})", [table]))
            results.setdefault("ptq", {})[name] = rows
    qat, qat_data = qat_table(manifests)
    results["qat"] = qat_data
    if qat:
        sections.append(Section("Quantization-aware training", [qat]))
    export, export_data = export_table(manifests)
    results["exports"] = export_data
    if export:
        sections.append(Section("ONNX exports", [export]))

    bench = next((m for m in manifests.values() if m["kind"] == "bench"), None)
    bench_rows: list[dict] = []
    if bench:
        table, bench_rows, ratios = speed_table(bench)
        results["speed"] = {"rows": bench_rows, "ratios": ratios}
        blocks: list[Any] = [
            table,
            "; ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()) or "",
            "DeepSparse's own benchmark reproduces its rows:",
            ("code", "\n".join(short(c) for c in bench["metrics"]["deepsparse_benchmark_commands"])),
        ]
        sections.append(Section("Speed", blocks))

    sparse = {
        n: m["metrics"]["layer_sparsity"]
        for n, m in trained(manifests).items()
        if m["metrics"].get("layer_sparsity") and 1 - m["metrics"]["nonzero_params"] / m["metrics"]["params"] > 0.05
    }
    if sparse:
        sections.append(
            Section(
                "Per-layer sparsity", [Figure(sparsity_figure(sparse, fig_dir / "sparsity.png"), "Zero weights per conv/linear layer.")]
            )
        )

    key_table, notes = key_results(results, bench_rows, bench_accuracies(manifests, bench))
    key_rows = [dict(zip(key_table.header, r)) for r in key_table.rows] if key_table else []
    results["findings"] = key_rows + [{"what": n} for n in notes]
    sections.insert(1, Section("Key results", [b for b in (key_table, "\n".join(f"- {n}" for n in notes)) if b]))

    command_rows = [[n, f"`{short(m.get('command') or '')}`", wall_time(m)] for n, m in manifests.items()]
    commands = Table(["stage", "command", "wall time"], command_rows)
    sections.append(Section("Commands", [commands]))
    return sections, results


def examples_section(examples: dict, images, fig_dir: Path) -> Section:
    from lit_kd.study.figures import examples_figure

    figure = Figure(
        examples_figure(images, examples["classes"], examples["labels"], fig_dir / "examples.png"),
        "The first test image of each class, with its true class.",
    )
    return Section("Example predictions", [figure, _examples_table(examples)])


def _examples_table(examples: dict) -> Table:
    classes = examples["classes"]
    rows = []
    for name, m in examples["models"].items():
        cells = []
        for p, c, t in zip(m["predicted"], m["confidence"], examples["labels"]):
            cells.append(f"{classes[p]} {100 * c:.0f} %" + ("" if p == t else " ✗"))
        rows.append([name, *cells])
    return Table(["model", *[classes[t] for t in examples["labels"]]], rows, "Prediction and confidence per model; ✗ marks a wrong one.")


def write_report(study: Study, out: Path, manifests: dict[str, dict], report_settings: dict | None = None) -> dict[str, Path]:
    examples = next((m for m in manifests.values() if m["kind"] == "examples"), None)
    images = example_images(examples) if examples else None  # read from the data, not stored in the manifest
    sections, results = build(study, out, manifests, report_settings or {}, images)
    title = f"lit-kd study: {study.path.stem}"
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    write_text(paths["md"], to_markdown(title, sections, out))
    write_text(paths["html"], to_html(title, sections))
    write_json(paths["json"], results)
    return paths


def example_images(examples_manifest: dict):
    from lit_kd.data import CIFAR10DataModule

    dm = CIFAR10DataModule(examples_manifest["inputs"]["data"])
    dm.setup("test")
    return dm.splits["test"].images[examples_manifest["metrics"]["indices"]].float().div(255)
