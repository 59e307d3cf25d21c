"""The ``ptq`` kind: ``lit-kd ptq`` on a checkpoint (a sweep of widths and methods, or with ``max_drop`` a
mixed-precision search); its report section (the PTQ table, or the chosen per-layer widths and the Pareto plot)
and its headline rows (our PTQ at W8A8, W4A4, W2A8 with AdaRound, PyTorch's INT8, the mixed-precision choice).

Under the ``held_out`` protocol a stage evaluates every configuration also on the study's held-out training images
(``held_out: true``, ``eval_images``: the fit stages' validation images) and each headline row is the configuration
best on those, with its test accuracy; a mixed-precision search measures its budget on the same images. Under
``seed`` (and in files without held-out accuracies) a headline row is the configuration best on the test set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lit_kd.atomic import copy_file
from lit_kd.study.kinds.base import MIXED_ROWS, PTQ, PTQ_ROWS, ReportInput, Row
from lit_kd.study.kinds.step import StepError, StepKind, float_network, split
from lit_kd.study.render import Figure, Section, Table, on_images, pct, points
from lit_kd.study.results import MixedPrecisionRecord, PtqRow, Results
from lit_kd.study.spec import Stage


class Ptq(StepKind):
    name, outputs = "ptq", ("json",)
    out_file, files = "ptq.json", {"json": "ptq.json"}

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
                sections.append((PTQ, Section(f"Post-training quantization ({name})", [table])))
                rep.results.ptq = {**(rep.results.ptq or {}), name: rows}
        return sections

    def headline_rows(self, results: Results) -> list[tuple[int, Row]]:
        return [(PTQ_ROWS, r) for r in ptq_rows(results)] + [(MIXED_ROWS, r) for r in mixed_precision_rows(results)]


# ------------------------------------------------------------------------------------------------ report
def ptq_table(manifest: dict) -> tuple[Table, list[PtqRow]]:
    result = manifest["metrics"]
    fp32 = result["fp32_acc"]
    rows, data = [], []
    for r in result["rows"]:
        data.append(PtqRow.from_dict({**r, "drop": fp32 - r["acc"]}))
        rows.append(ptq_row(data[-1]))
    header = ["runtime", "bits", "method", "granularity", "first/last 8-bit", "test accuracy", "drop (points)", "same top-1 as FP32"]
    caption = f"{result['test_images']} test images, {result['calib_images']} calibration images from the training set."
    if any(r.held_out_acc is not None for r in data):
        header.append(f"accuracy on {result['held_out_images']:,} held-out images")
        caption += (
            f" The last column: the same configurations on {result['held_out_images']:,} training images held out from "
            "calibration and training; the key results choose each headline configuration by it, never by the test set."
        )
    return Table(header, rows, caption), data


def ptq_row(r: PtqRow) -> list[str]:
    """A row of the PTQ table (with a last cell for the held-out accuracy when the row has one)."""
    return [
        r.runtime,
        f"W{r.weight_bits}A{r.act_bits}",
        r.method,
        r.granularity,
        "yes" if r.first_last_8bit else "no",
        pct(r.acc),
        f"{100 * r.drop:.2f}",
        pct(r.agree_fp32),
        *([pct(r.held_out_acc)] if r.held_out_acc is not None else []),
    ]


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
        details = ", ".join(x for x in (r.method, granularity, "first/last layer 8-bit" if r.first_last_8bit else "") if x)
        best_of = f"; best of {len(candidates)}" if len(candidates) > 1 else ""
        if best_of and on_held_out:  # the choice, and what it was made on
            best_of += f" on {held:,} held-out training images" if held else " on held-out training images"
        return [(f"{label} `{stage}` ({details}{best_of})", pct(r.acc), f"{points(r.acc - fp32)} vs FP32 {pct(fp32)}{on_images(images)}")]

    def ours(wb: int, ab: int, adaround: bool = False) -> list:
        return [
            c
            for c in measured
            if c[1].runtime == "ours" and (c[1].weight_bits, c[1].act_bits) == (wb, ab) and (not adaround or "adaround" in c[1].method)
        ]

    pytorch_int8 = [c for c in measured if c[1].runtime == "pytorch" and c[1].weight_bits == 8]
    return (
        row("Our PTQ W8A8", ours(8, 8))
        + row("PyTorch INT8 PTQ", pytorch_int8)
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
