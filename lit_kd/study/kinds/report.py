"""The ``report`` kind: the study report (``report.md`` with PNGs, ``report.html``, ``results.json``) from the
manifests of every stage before it, assembled by :mod:`lit_kd.study.report` from each kind's sections.

    report: {report: {distillation: {baseline: student_data, rows: [kd_logits, kd_features]}}}
"""

from __future__ import annotations

from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.spec import Stage


class Report(Kind):
    name, outputs = "report", ("html",)
    reads_manifests = True

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        return list(stages)[: list(stages).index(stage.name)]  # every stage defined before it in the file

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        from lit_kd.study.report import write_report

        ctx.progress(f"{label}: writing the report")
        paths = write_report(ctx.study, ctx.out, {n: ctx.manifests[n] for n in stage.needs}, settings.get("report") or {})
        return {"html": str(paths["html"])}, {"files": {k: str(v) for k, v in paths.items()}}, "lit-kd study (report stage)"
