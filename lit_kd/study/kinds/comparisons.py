"""The report's comparisons: every distillation setup against its data-only baseline and every method against its
control (the report stage's ``distillation`` and ``controls``), each as mean ± std over its seeds, the difference,
its standard error and the verdict of :mod:`lit_kd.study.compare`.

    report: {report: {distillation: {baseline: student_data, rows: [kd]}, controls: {prune_100k: prune_control}}}
"""

from __future__ import annotations

from lit_kd.study import compare
from lit_kd.study.render import Table, mean_std, pts, seeds
from lit_kd.study.results import ComparisonRecord


def group_members(name: str, groups: dict[str, list[str]], manifests: dict[str, dict]) -> list[str]:
    """The stages of ``name`` (its seeds when it is a seed group) that have a manifest."""
    return [m for m in groups.get(name, [name]) if m in manifests]


def pairs(settings: dict) -> list[tuple[str, str, str]]:
    """``(stage, baseline, role)`` of every comparison the report stage's settings name, distillation first."""
    dist = settings.get("distillation") or {}
    found = [(row, dist["baseline"], "distillation") for row in dist.get("rows", [])] if dist else []
    return found + [(method, control, "control") for method, control in (settings.get("controls") or {}).items()]


def comparison_table(
    settings: dict, manifests: dict[str, dict], groups: dict[str, list[str]]
) -> tuple[Table | None, list[ComparisonRecord]]:
    """The comparisons of ``settings`` whose two sides both ran (a side left out with ``--without`` drops its row)."""
    records = []
    for stage, baseline, role in pairs(settings):
        values = [manifests[m]["metrics"]["test_acc"] for m in group_members(stage, groups, manifests)]
        base = [manifests[m]["metrics"]["test_acc"] for m in group_members(baseline, groups, manifests)]
        if not values or not base:
            continue
        diff, se, verdict = compare.difference(values, base)
        records.append(
            ComparisonRecord(
                stage=stage,
                baseline=baseline,
                role=role,
                test_accs=values,
                baseline_test_accs=base,
                mean=compare.mean(values),
                std=compare.sample_std(values),
                baseline_mean=compare.mean(base),
                baseline_std=compare.sample_std(base),
                difference=diff,
                standard_error=se,
                verdict=verdict,
            )
        )
    if not records:
        return None, []
    header = ["setup", "compared with", "setup: mean ± std", "compared with: mean ± std", "difference (points)", "SE (points)", "verdict"]
    caption = (
        "Test accuracy, mean ± sample std over seeds. SE: the standard error of the difference of the two means, "
        "sqrt(s1²/n1 + s2²/n2) (Welch); a difference is called real only when it exceeds 2 SE. With one seed on "
        "either side there is no spread to test against: not testable."
    )
    return Table(header, [comparison_row(r) for r in records], caption), records


def group_text(mean: float, std: float | None, n: int) -> str:
    """A group of seeds in the report's words: ``84.28 ± 0.46 % over 2 seeds``."""
    return f"{mean_std(mean, std)} over {seeds(n)}"


def comparison_row(r: ComparisonRecord) -> list[str]:
    what = "control" if r.role == "control" else "data only"
    return [
        r.stage,
        f"{r.baseline} ({what})",
        group_text(r.mean, r.std, len(r.test_accs)),
        group_text(r.baseline_mean, r.baseline_std, len(r.baseline_test_accs)),
        pts(r.difference),
        "-" if r.standard_error is None else f"{100 * r.standard_error:.2f}",
        r.verdict,
    ]
