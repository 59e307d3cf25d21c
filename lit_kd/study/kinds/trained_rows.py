"""The headline rows of trained networks, read from typed results: the teacher, the data-only student and the best
distilled one (mean and spread over seeds, chosen among setups run with at least the baseline's seeds), QAT (real
INT8 against its FP32 start), and pruned models (sparse + INT8 when exported so, else pruned to N non-zero) against
the best student."""

from __future__ import annotations

from lit_kd.study.compare import verdict_text
from lit_kd.study.kinds.base import Row
from lit_kd.study.render import mean_std, on_images, pct, points, seeds
from lit_kd.study.results import DistillationRecord, ExportRecord, ModelRecord, Results


def best_student(results: Results) -> ModelRecord | None:
    """The model record a ``select`` stage chose (the best student by its protocol: held-out or test accuracy)."""
    for s in results.stages.values():
        chosen = s.metrics.get("chosen") if s.kind == "select" else None
        model = results.model(chosen) if isinstance(chosen, str) else None
        if model:
            return model
    return None


def teacher_rows(results: Results) -> list[Row]:
    t = results.model("teacher")
    if not t:
        return []
    return [(f"Teacher `teacher` ({t.architecture}, {t.params:,} parameters)", pct(t.test_acc), "")]


def distilled_candidates(results: Results) -> tuple[DistillationRecord, list[DistillationRecord], list[DistillationRecord]] | None:
    """``(baseline, setups with a delta, setups the best is chosen among)``: those run with at least the baseline's
    seeds (all setups when none is); None when no setup has a delta to the data-only baseline."""
    records = results.distillation
    # the report lists the data-only baseline first, and gives every other row a delta to it; without the baseline's
    # accuracy no row has a delta, and there is nothing to headline
    if not records or records[0].delta_vs_baseline is not None:
        return None
    base, others = records[0], [r for r in records[1:] if r.delta_vs_baseline is not None]
    if not others:
        return None
    # the comparison uses the same seeds on both sides: setups run with fewer seeds than the baseline are named beside
    # the best one when they score higher, never chosen over it (one lucky seed is not a mean)
    paired = [r for r in others if r.seeds >= base.seeds]
    return base, others, paired or others


def best_distilled(results: Results) -> DistillationRecord | None:
    """The best distilled setup by mean test accuracy among :func:`distilled_candidates`."""
    found = distilled_candidates(results)
    return max(found[2], key=lambda r: r.mean) if found else None


def distillation_rows(results: Results) -> list[Row]:
    records = results.distillation
    if not records or records[0].delta_vs_baseline is not None:
        return []
    if len(records) > 1 and all(r.delta_vs_baseline is None for r in records[1:]):
        return []
    base = records[0]
    arch = {_group_of(results, m.stage): m.architecture for m in results.models}
    rows = [(f"Student on data only `{base.stage}` ({arch.get(base.stage, '?')}, {seeds(base.seeds)})", mean_std(base.mean, base.std), "")]
    found = distilled_candidates(results)
    if found:
        _, others, candidates = found
        best = best_distilled(results)
        compared = f"{points(best.delta_vs_baseline)} vs data only"
        comparison = results.comparison(best.stage)
        if comparison:  # reports written before comparisons existed show the delta alone
            compared += f" ({verdict_text(comparison.standard_error, comparison.verdict)})"
        if best.val_acc_at_equal_epochs is not None and base.val_acc_at_equal_epochs is not None:
            # the stopping rule may have trained the two for different numbers of epochs
            early = best.val_acc_at_equal_epochs - base.val_acc_at_equal_epochs
            compared += f"; {points(early)} in validation accuracy after {best.equal_epochs} epochs each"
        higher = [r for r in others if r not in candidates and r.mean > best.mean]
        if higher:
            compared += "; higher with fewer seeds: " + ", ".join(f"`{r.stage}` {pct(r.mean)} ({seeds(r.seeds)})" for r in higher)
        among = f"best of {len(candidates)} distillation setups"
        if len(candidates) < len(others):
            among += " with the data-only seeds"
        rows.append((f"Best distilled student `{best.stage}` ({seeds(best.seeds)}; {among})", mean_std(best.mean, best.std), compared))
    return rows


def _group_of(results: Results, stage: str) -> str:
    record = results.stages.get(stage)
    return (record.group if record else None) or stage


def qat_rows(results: Results) -> list[Row]:
    rows = []
    for q in results.qat:
        delta = None if q.fp32_acc is None else points(q.int8_test_acc - q.fp32_acc)
        compared = "" if delta is None else f"{delta} vs its FP32 start `{q.started_from}` {pct(q.fp32_acc)}"
        rows.append((f"QAT `{q.stage}`, real INT8 kernels", pct(q.int8_test_acc), compared))
    return rows


def sparse_rows(results: Results) -> list[Row]:
    """Pruned models: those with an INT8 ONNX export as "sparse + INT8", the others as "pruned to N non-zero"."""
    models = {m.stage: m for m in results.models}
    best = best_student(results)
    versus = f"vs the best student `{best.stage}` {pct(best.test_acc)} (dense)" if best else ""
    int8_exports: dict[str, ExportRecord] = {}  # stage of the exported checkpoint -> export record
    for e in results.exports:
        if e.precision == "int8" and e.weight_sparsity > 0:
            export_stage = results.stages.get(e.stage)
            ckpt = export_stage.metrics.get("checkpoint") if export_stage else None
            owner = next((n for n, s in results.stages.items() if ckpt and ckpt in s.outputs.values() and n in models), None)
            if owner:
                int8_exports[owner] = e
    rows = []
    for name, m in models.items():
        if not m.params or m.nonzero_params >= 0.95 * m.params:
            continue
        compared = f"{points(m.test_acc - best.test_acc)} {versus}" if best and best is not m else ""
        if name in int8_exports:
            e = int8_exports[name]
            deployed = f"; DeepSparse {pct(e.deepsparse['acc'])}{on_images(e.images)}" if "acc" in e.deepsparse else ""
            what = f"{100 * e.weight_sparsity:.0f} % sparse + INT8 `{name}` ({m.nonzero_params:,} non-zero parameters)"
            rows.append((what, f"{pct(m.test_acc)} (PyTorch){deployed}", compared))
        else:
            rows.append((f"Pruned to {m.nonzero_params:,} non-zero parameters `{name}` (of {m.params:,})", pct(m.test_acc), compared))
    return rows
