"""The ``ptq`` kind: ``lit-kd ptq`` on a checkpoint (a sweep of widths and methods, or with ``max_drop`` a
mixed-precision search); its report section (the PTQ table, or the chosen per-layer widths and the Pareto plot)
and its headline rows (our PTQ at W8A8, W4A4, W2A8 with AdaRound, PyTorch's and NNCF's INT8, the mixed-precision choice).
The PTQ table says how each row computes (our simulated fake-quant rows, the engines' real INT8 kernels) and lists the
deployable files the stage wrote (``export_dir``, relative to the stage folder); an engine whose extra is missing shows
as "not installed".

Under the ``held_out`` protocol a stage evaluates every configuration also on the study's held-out training images
(``held_out: true``, ``eval_images``: the fit stages' validation images) and each headline row is the configuration
best on those, with its test accuracy; a mixed-precision search measures its budget on the same images. Under
``seed`` (and in files without held-out accuracies) a headline row is the configuration best on the test set."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from lit_kd.atomic import copy_file
from lit_kd.study.kinds.base import MIXED_ROWS, PTQ, PTQ_ROWS, ReportInput, Row
from lit_kd.study.kinds.step import StepError, StepKind, float_network, split
from lit_kd.study.render import Figure, Section, Table, on_images, pct, points
from lit_kd.study.results import MixedPrecisionRecord, PtqFile, PtqRow, Results
from lit_kd.study.spec import Stage


class Ptq(StepKind):
    name, outputs = "ptq", ("json",)
    out_file, files, dirs = "ptq.json", {"json": "ptq.json"}, ("export_dir",)

    def apply_protocol(self, stage: Stage, protocol: str, validation_images: int) -> None:
        if protocol != "held_out":
            return
        flags = stage.spec["ptq"] = dict(stage.spec["ptq"] or {})
        flags.setdefault("eval_images", validation_images)  # the images the fit stages validated on
        if flags.get("max_drop") is None:
            flags.setdefault("held_out", True)

    def call(self, settings: dict) -> dict:
        from lit_kd.quant.sweep import PTQ_QAT_ADVICE, PtqError, PtqSettings, run_ptq

        s = split("ptq", settings, ("ckpt", "data", "out"), PtqSettings.names())
        ckpt, data, out = s.pop("ckpt"), s.pop("data"), s.pop("out")
        options = PtqSettings(**s)
        problem = options.problem()
        if problem:
            raise StepError(f"lit-kd ptq: error: {problem}")
        model = float_network("ptq", ckpt, PTQ_QAT_ADVICE)
        try:
            return run_ptq(model, ckpt, data, options, out)
        except PtqError as err:
            raise StepError(f"lit-kd ptq: error: {err}") from None

    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        sections = []
        for name, m in rep.of_kind("ptq").items():
            if "search" in m["metrics"]:
                sections.append((PTQ, mixed_precision_section(name, m["metrics"], rep.fig_dir)))
                record = MixedPrecisionRecord.from_dict({k: v for k, v in m["metrics"].items() if k != "search"}, name)
                rep.results.mixed_precision = {**(rep.results.mixed_precision or {}), name: record}
            else:
                table, rows = ptq_table(m)
                files, records = files_table(m, rep.out)
                sections.append((PTQ, Section(f"Post-training quantization ({name})", [table, *([files] if files else [])])))
                rep.results.ptq = {**(rep.results.ptq or {}), name: rows}
                if records:
                    rep.results.ptq_files = {**(rep.results.ptq_files or {}), name: records}
        return sections

    def headline_rows(self, results: Results) -> list[tuple[int, Row]]:
        return [(PTQ_ROWS, r) for r in ptq_rows(results)] + [(MIXED_ROWS, r) for r in mixed_precision_rows(results)]


# ------------------------------------------------------------------------------------------------ report
SIMULATED, REAL_INT8 = "simulated (fake-quant)", "real INT8 kernels"
# whose quantization a row of ``lit-kd ptq``'s JSON shows, by its runtime (or by the engine named not installed)
ENGINES = {"fp32": "FP32", "ours int": "ours", "pytorch": "PyTorch", "openvino": "NNCF (OpenVINO)", "nncf": "NNCF (OpenVINO)"}
FILE_ENGINES = {
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "pytorch int8 (torchscript)": "PyTorch (TorchScript)",
    "pytorch int8 (pt2e program, compiled)": "PyTorch (PT2E program)",
}
NNCF_METHOD = re.compile(r"nncf (\w+)(?: \+ accuracy control \(<= ([\d.]+) pts\))?$")  # as lit_kd.quant.nncf_ptq.method_name writes it


def kernels_label(runtime: str, weight_bits: int | None) -> str:
    """How a row computes: float, our fake-quant simulation, our integer check, or an engine's real INT8 kernels."""
    if runtime in ("pytorch", "openvino"):
        return REAL_INT8 if weight_bits == 8 else f"float{weight_bits}"
    return {"fp32": "float32", "ours": SIMULATED, "ours int": "integer arithmetic (int8 matmul)"}.get(runtime, "-")


def method_label(method: str) -> str:
    """NNCF's method as words (``nncf mixed + accuracy control (<= 1.00 pts)`` -> ``mixed preset + accuracy control,
    budget 1.00 points``); other methods as they are."""
    match = NNCF_METHOD.match(method)
    if not match:
        return method
    preset, budget = match.groups()
    return f"{preset} preset" + (f" + accuracy control, budget {budget} points" if budget else "")


def ptq_table(manifest: dict) -> tuple[Table, list[PtqRow]]:
    result = manifest["metrics"]
    fp32 = result["fp32_acc"]
    rows, data = [], []
    for r in result["rows"]:
        engine, kernels = ENGINES.get(r["runtime"], r["runtime"]), kernels_label(r["runtime"], r["weight_bits"])
        data.append(PtqRow.from_dict({**r, "drop": fp32 - r["acc"], "engine": engine, "kernels": kernels}))
        rows.append(ptq_row(data[-1]))
    held_out = result.get("held_out_images")
    header = ["engine", "kernels", "bits", "method", "granularity", "first/last 8-bit", "test accuracy", "drop (points)"]
    header.append("same top-1 as FP32")
    caption = (
        f"{result['test_images']} test images, {result['calib_images']} calibration images from the training set"
        + (f"; NNCF's accuracy control validates on {held_out} other training images" if held_out else "")
        + ". Kernels: simulated (fake-quant) rows compute in float on quantized-dequantized values, real INT8 rows run the "
        "engine's integer kernels."
    )
    on_held_out = any(r.held_out_acc is not None for r in data)
    if on_held_out:
        header.append(f"accuracy on {held_out:,} held-out images")
        caption += (
            f" The last column: the same configurations on {held_out:,} training images held out from calibration and "
            "training; the key results choose each headline configuration by it, never by the test set."
        )
    absent = ["-", "-", "not installed", "-", "-", "not installed", "-", "-"] + (["-"] if on_held_out else [])
    rows += [[ENGINES.get(e, e), *absent] for e in result.get("engines_not_installed", [])]
    return Table(header, rows, caption), data


def ptq_row(r: PtqRow) -> list[str]:
    """A row of the PTQ table (with a last cell for the held-out accuracy when the row has one); records written before
    rows named their engine and kernels keep their old columns (runtime, bits, method ...), as the shipped reports show
    them."""
    numbers = [r.granularity, "yes" if r.first_last_8bit else "no", pct(r.acc), f"{100 * r.drop:.2f}", pct(r.agree_fp32)]
    numbers += [pct(r.held_out_acc)] if r.held_out_acc is not None else []
    if r.kernels is None:
        return [r.runtime, f"W{r.weight_bits}A{r.act_bits}", r.method, *numbers]
    return [r.engine, r.kernels, f"W{r.weight_bits}A{r.act_bits}", method_label(r.method), *numbers]


def files_table(manifest: dict, out: Path) -> tuple[Table | None, list[PtqFile]]:
    """The deployable files of a ptq stage (``export_dir``), each read back and evaluated on its row's test images;
    paths relative to the study folder (where the report lies) when they are inside it."""
    result = manifest["metrics"]
    rows, data = [], []
    for d in result.get("deployables", []):
        path = Path(d["file"]).resolve()
        shown = path.relative_to(out.resolve()).as_posix() if path.is_relative_to(out.resolve()) else d["file"]
        data.append(PtqFile.from_dict({**d, "file": shown, "kernels": REAL_INT8}))
        row = d["from_row"]
        source = f"{ENGINES.get(row['runtime'], row['runtime'])} W{row['weight_bits']}A{row['act_bits']} {method_label(row['method'])}"
        engine = FILE_ENGINES.get(d["engine"], d["engine"])
        rows.append([f"`{shown}`", engine, REAL_INT8, source, pct(d["acc"]), pct(d["row_acc"]), pct(d["agree_row"])])
    if not rows:
        return None, []
    caption = f"Each file read back as `lit-kd classify` reads it, on the same {result['test_images']} test images as its row."
    header = ["file", "engine", "kernels", "from row", "test accuracy", "row's test accuracy", "same top-1 as its row"]
    return Table(header, rows, caption), data


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


# ------------------------------------------------------------------------------------------------ headline
def ptq_rows(results: Results) -> list[Row]:
    """Headline rows of the PTQ tables: per label, the configuration best on held-out training images where every
    candidate has a held-out accuracy (protocol held_out), else the one best on the test set."""
    measured = []  # (stage, row, fp32 accuracy, test images, held-out images)
    for stage, rows in (results.ptq or {}).items():
        fp32 = next((r.acc for r in rows if r.runtime == "fp32"), None)
        metrics = results.stages[stage].metrics if stage in results.stages else {}
        held = metrics.get("held_out_images")
        measured += [(stage, r, fp32, metrics.get("test_images"), held) for r in rows if r.runtime != "fp32" and fp32 is not None]

    def row(label: str, candidates: list) -> list[Row]:
        if not candidates:
            return []
        on_held_out = all(c[1].held_out_acc is not None for c in candidates)
        if on_held_out:
            stage, r, fp32, images, held = max(candidates, key=lambda c: c[1].held_out_acc)
        else:
            stage, r, fp32, images, held = min(candidates, key=lambda c: c[1].drop)
        granularity = r.granularity.replace("_", "-") if r.granularity != "-" else ""
        details = ", ".join(x for x in (method_label(r.method), granularity, "first/last layer 8-bit" if r.first_last_8bit else "") if x)
        best_of = f"; best of {len(candidates)}" if len(candidates) > 1 else ""
        if best_of and on_held_out:  # the choice, and what it was made on
            best_of += f" on {held:,} held-out training images" if held else " on held-out training images"
        kernels = f", {r.kernels}" if r.kernels else ""  # results written before the field existed read as they were published
        what = f"{label} `{stage}` ({details}{best_of}){kernels}"
        return [(what, pct(r.acc), f"{points(r.acc - fp32)} vs FP32 {pct(fp32)}{on_images(images)}")]

    def ours(wb: int, ab: int, adaround: bool = False) -> list:
        return [
            c
            for c in measured
            if c[1].runtime == "ours" and (c[1].weight_bits, c[1].act_bits) == (wb, ab) and (not adaround or "adaround" in c[1].method)
        ]

    pytorch_int8 = [c for c in measured if c[1].runtime == "pytorch" and c[1].weight_bits == 8]  # the FX or the PT2E flow
    nncf_int8 = [c for c in measured if c[1].runtime == "openvino"]
    return (
        row("Our PTQ W8A8", ours(8, 8))
        + row("PyTorch INT8 PTQ", pytorch_int8)
        + row("NNCF INT8 PTQ", nncf_int8)
        + row("Our PTQ W4A4", ours(4, 4))
        + row("Our PTQ W2A8 with AdaRound", ours(2, 8, adaround=True))
    )


def mixed_precision_rows(results: Results) -> list[Row]:
    rows = []
    for stage, mp in (results.mixed_precision or {}).items():
        search = (results.stages[stage].metrics if stage in results.stages else {}).get("search") or {}
        acc = mp.test_acc
        if "chosen" not in acc or "fp32" not in acc:
            continue
        widths = Counter((search.get("chosen") or {}).get("weight_bits", {}).values())
        layers = ", ".join(f"{n} at {b} bits" for b, n in sorted(widths.items(), reverse=True))
        act = f", activations {search['act_bits']}-bit" if "act_bits" in search else ""
        if search.get("layer_act_bits"):
            from lit_kd.quant.search_report import act_label

            act = f", activations {act_label(search['layer_act_bits'], search.get('act_bits'))}"
        budget = f" (budget {100 * search['max_drop']:.1f} points)" if "max_drop" in search else ""
        what = f"Mixed precision `{stage}`{budget}: weights {mp.chosen_average_weight_bits:.2f} bits on average{act}"
        if layers:
            what += f" (layers: {layers})"
        size = f"; weights {mp.chosen_weight_bytes / 1024:.1f} KiB vs {mp.uniform_int8_weight_bytes / 1024:.1f} KiB in INT8"
        compared = f"{points(acc['chosen'] - acc['fp32'])} vs FP32 {pct(acc['fp32'])}{on_images(mp.test_images)}{size}"
        rows.append((what, pct(acc["chosen"]), compared))
    return rows
