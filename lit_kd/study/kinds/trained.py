"""The report sections and headline rows of trained networks (``fit`` and ``weights`` stages): the models table,
distillation against the data-only baseline, training curves, QAT, per-layer sparsity; the teacher, student, QAT and
pruned-model rows of the headline (:mod:`lit_kd.study.kinds.trained_rows`)."""

from __future__ import annotations

from lit_kd.study import compare
from lit_kd.study.kinds.base import (
    COMPARISONS,
    CURVES,
    DISTILLATION,
    MODELS,
    QAT,
    QAT_ROWS,
    SPARSE_ROWS,
    SPARSITY,
    STUDENTS,
    TEACHER,
    ReportInput,
    Row,
)
from lit_kd.study.kinds.comparisons import comparison_table, group_members
from lit_kd.study.kinds.trained_rows import distillation_rows, qat_rows, sparse_rows, teacher_rows
from lit_kd.study.manifest import wall_time
from lit_kd.study.render import Figure, Section, Table, pct, pts
from lit_kd.study.results import DistillationRecord, ModelRecord, QatRecord, Results


def report_sections(rep: ReportInput) -> list[tuple[int, Section]]:
    """Every section of trained networks (the ``fit`` kind asks once for both kinds), their records filled in."""
    from lit_kd.study.figures import (
        accuracy_overview_figure,
        curves_figure,
        pruning_cycles,
        pruning_figure,
        read_curves,
        sparsity_figure,
        validation_label,
    )

    sections = []
    models, rep.results.models = models_table(rep.of_kind("fit", "weights"))
    sections.append((MODELS, Section("Models", [models])))
    curves = {n: read_curves(m["outputs"]["run_dir"]) for n, m in rep.of_kind("fit").items()}
    rep.curves = curves = {n: c for n, c in curves.items() if c}
    dist, rep.results.distillation = distillation_table(rep.settings.get("distillation") or {}, rep.manifests, rep.study.groups, curves)
    if dist:
        sections.append((DISTILLATION, Section("Distillation", [dist])))
    compared, records = comparison_table(rep.settings, rep.manifests, rep.study.groups)
    rep.results.comparisons = records or None
    if compared:
        sections.append((COMPARISONS, Section("Comparisons", [compared])))
    if curves:
        groups = {n: rep.manifests[n].get("group") for n in curves}
        val_data = {n: validation_data(rep.manifests[n]) for n in curves}
        overview = accuracy_overview_figure(curves, groups, rep.fig_dir / "accuracy.png", val_data)
        where = validation_label(val_data)[0]
        figures = [
            Figure(overview, f"Accuracy per epoch of every training stage, {where} (seeds of one setup share a colour)."),
            Figure(
                curves_figure(curves, rep.fig_dir / "curves.png", val_data),
                f"Per stage: the training loss (every term of its loss, distillation terms included), the validation "
                f"cross-entropy and accuracy (train dashed, validation solid), {where}; read from TensorBoard events.",
            ),
        ]
        sections.append((CURVES, Section("Training curves", figures)))
    qat, rep.results.qat = qat_table(rep.manifests)
    if qat:
        sections.append((QAT, Section("Quantization-aware training", [qat])))
    sparse = {
        n: m["metrics"]["layer_sparsity"]
        for n, m in rep.of_kind("fit", "weights").items()
        if m["metrics"].get("layer_sparsity") and 1 - m["metrics"]["nonzero_params"] / m["metrics"]["params"] > 0.05
    }
    figures = [Figure(sparsity_figure(sparse, rep.fig_dir / "sparsity.png"), "Zero weights per conv/linear layer.")] if sparse else []
    cycles = {n: points for n, c in curves.items() if (points := pruning_cycles(c))}
    if cycles:
        controls = {}
        for stage, control in (rep.settings.get("controls") or {}).items():
            last = (curves.get(control) or {}).get("val/acc")
            if stage in cycles and last:
                controls[stage] = (control, last[-1][1])
        val_data = {n: validation_data(rep.manifests[n]) for n in cycles}
        where = validation_label(val_data)[0]
        text = (f"Accuracy against the parameters left over the pruning cycles ({where}); the dashed line is the last "
                "epoch of the stage's dense control (same start, loss and epochs).")  # fmt: skip
        figures.append(Figure(pruning_figure(cycles, controls, rep.fig_dir / "pruning.png", val_data), text))
    if figures:
        sections.append((SPARSITY, Section("Per-layer sparsity" if not cycles else "Pruning", figures)))
    return sections


def validation_data(manifest: dict) -> str:
    """What a fit stage validated on: ``test set`` (``val_split: 0``, the seed protocol) or ``N held-out training
    images`` (from its resolved config)."""
    held_out = ((manifest.get("resolved_config") or {}).get("data") or {}).get("init_args", {}).get("val_split")
    return f"{held_out:,} held-out training images" if held_out else "test set"


def headline_rows(results: Results) -> list[tuple[int, Row]]:
    return (
        [(TEACHER, r) for r in teacher_rows(results)]
        + [(STUDENTS, r) for r in distillation_rows(results)]
        + [(QAT_ROWS, r) for r in qat_rows(results)]
        + [(SPARSE_ROWS, r) for r in sparse_rows(results)]
    )


# ------------------------------------------------------------------------------------------------ tables
def models_table(trained: dict[str, dict]) -> tuple[Table, list[ModelRecord]]:
    rows, data = [], []
    for name, m in trained.items():
        x = m["metrics"]
        record = ModelRecord(
            stage=name,
            architecture=x["architecture"],
            params=x["params"],
            nonzero_params=x["nonzero_params"],
            macs=x["macs"],
            size_bytes=x["size_bytes"],
            deflated_bytes=x.get("deflated_bytes"),
            test_acc=x["test_acc"],
            epochs=x.get("epochs"),
            stop_reason=x.get("stop_reason"),
            wall_s=m.get("wall_s"),
        )
        data.append(record)
        rows.append(model_row(record, wall_time(m)))
    header = ["stage", "architecture", "parameters", "non-zero", "MACs", "size", "test accuracy", "epochs", "stopped by", "wall time"]
    caption = (
        "Test accuracy on the full test set; size: serialized float weights, observers and fake-quantization state left "
        "out (the INT8 model file for QAT runs), in brackets compressed (zlib, level 9: pruned weights' zeros compress); "
        "wall time: every attempt of the stage together, on whatever else shared the cores."
    )
    return Table(header, rows, caption), data


def model_row(r: ModelRecord, wall: str) -> list[str]:
    """A row of the models table (``wall``: the stage's wall time in words, attempts included)."""
    return [
        r.stage,
        str(r.architecture),
        f"{r.params:,}",
        f"{r.nonzero_params:,}",
        f"{r.macs / 1e6:.1f} M",
        size_text(r.size_bytes, r.deflated_bytes),
        pct(r.test_acc),
        "-" if r.epochs is None else str(r.epochs),
        str(r.stop_reason),
        wall,
    ]


def size_text(size: int, deflated: int | None) -> str:
    """``0.96 MB``, or ``0.96 MB (0.12 MB compressed)`` where the compressed size is recorded; under 10 kB in kB."""

    def text(n: int) -> str:
        return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n / 1e3:.1f} kB"

    return text(size) + ("" if deflated is None else f" ({text(deflated)} compressed)")


def distillation_table(
    spec: dict, manifests: dict[str, dict], groups: dict[str, list[str]], curves: dict[str, dict] | None = None
) -> tuple[Table | None, list[DistillationRecord]]:
    """Rows of ``spec["rows"]`` (stage or seed-group names) against ``spec["baseline"]``: mean, spread, delta; and,
    from the training curves, each setup's mean validation accuracy after as many epochs as the baseline's shortest
    run, since a stopping rule can end setups after different numbers of epochs."""
    if not spec:
        return None, []
    curves = curves or {}

    def members(name: str) -> list[str]:
        return group_members(name, groups, manifests)

    def val_at(stage: str, epoch: int) -> float | None:
        return dict(curves.get(stage, {}).get("val/acc", [])).get(epoch - 1)

    baseline = members(spec["baseline"])
    base_mean = compare.mean([manifests[m]["metrics"]["test_acc"] for m in baseline]) if baseline else None
    base_epochs = [manifests[m]["metrics"].get("epochs") for m in baseline]
    k = min(base_epochs) if base_epochs and all(isinstance(e, int) for e in base_epochs) else None
    rows, data = [], []
    for name in [spec["baseline"], *spec.get("rows", [])]:
        stages = members(name)
        if not stages:
            continue
        values = [manifests[m]["metrics"]["test_acc"] for m in stages]
        mean = compare.mean(values)
        spread = compare.sample_std(values)
        early = [val_at(m, k) for m in stages] if k else []
        early_mean = compare.mean(early) if early and None not in early else None
        record = DistillationRecord(
            stage=name,
            seeds=len(values),
            test_accs=values,
            epochs=[manifests[m]["metrics"].get("epochs") for m in stages],
            mean=mean,
            std=spread,
            delta_vs_baseline=None if base_mean is None or name == spec["baseline"] else mean - base_mean,
            equal_epochs=k,
            val_acc_at_equal_epochs=early_mean,
        )
        data.append(record)
        rows.append(distillation_row(record, name == spec["baseline"]))
    header = ["student", "seeds", "test accuracy per seed", "epochs", "mean", "std (points)", "vs data only (points)"]
    table = Table(
        [*header, f"validation accuracy after {k} epochs" if k else "validation accuracy at equal epochs"],
        rows,
        "Same student architecture, seeds and data; the teacher is frozen. The stopping rule ends setups after different "
        "numbers of epochs: the last column compares them after as many epochs as the shortest data-only run (mean "
        "over seeds, from the training curves).",
    )
    return table, data


def distillation_row(r: DistillationRecord, baseline: bool) -> list[str]:
    return [
        r.stage + (" (data only)" if baseline else ""),
        str(r.seeds),
        ", ".join(pct(v) for v in r.test_accs),
        ", ".join(str(e) for e in r.epochs),
        pct(r.mean),
        "-" if r.std is None else f"{100 * r.std:.2f}",
        pts(r.delta_vs_baseline),
        pct(r.val_acc_at_equal_epochs),
    ]


def qat_table(manifests: dict[str, dict]) -> tuple[Table | None, list[QatRecord]]:
    rows, data = [], []
    for name, m in manifests.items():
        if m["kind"] != "fit" or "int8" not in m["outputs"]:
            continue
        start = started_from(m, manifests)
        start_acc = manifests[start]["metrics"]["test_acc"] if start else None
        x = m["metrics"]
        record = QatRecord(
            stage=name,
            started_from=start,
            fp32_acc=start_acc,
            fake_quant_val_acc=x.get("best_val_acc"),
            int8_test_acc=x["test_acc"],
            drop=None if start_acc is None else start_acc - x["test_acc"],
        )
        data.append(record)
        rows.append(qat_row(record))
    if not rows:
        return None, []
    return Table(
        ["stage", "started from", "FP32 test accuracy", "fake-quant validation (best)", "real INT8 test accuracy", "drop (points)"],
        rows,
        "INT8: torch.ao FX, x86 kernels, the best checkpoint converted. A negative drop: the QAT epochs also trained the "
        "network further, with the loss of the stage it started from.",
    ), data


def qat_row(r: QatRecord) -> list[str]:
    drop = "-" if r.drop is None else f"{100 * r.drop:.2f}"
    return [r.stage, r.started_from or "-", pct(r.fp32_acc), pct(r.fake_quant_val_acc), pct(r.int8_test_acc), drop]


def started_from(manifest: dict, manifests: dict[str, dict]) -> str | None:
    """The stage whose checkpoint a fit stage started from (through a select stage when there is one)."""
    consumed = manifest["inputs"].get("consumed", {})
    for name in manifest.get("needs", []):
        other = manifests.get(name)
        if other and other["outputs"].get("ckpt") in consumed:
            return other["metrics"].get("chosen", name) if other["kind"] == "select" else name
    return None
