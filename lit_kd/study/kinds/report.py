"""The ``report`` kind: the study report (``report.md`` with PNGs, ``report.html``, ``results.json``) from the
manifests of every stage before it, assembled by :mod:`lit_kd.study.report` from each kind's sections.

    report:
      report:
        distillation: {baseline: student_data, rows: [kd_logits, kd_features]}  # each row against the data-only baseline
        controls: {prune_100k: prune_control}        # a method (stage or seed group) against its control
        targets:                                     # checked in the conclusions: percent (min_acc) and points
          teacher: {min_acc: 91.0}                   # test accuracy at least 91.0 %
          best_distilled: {min_gain: 1.0}            # the best distilled setup at least 1.0 point above data only, real
          prune_100k: {max_loss: 1.0}                # at most 1.0 point below its control
"""

from __future__ import annotations

from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.spec import Stage, StudyError

SETTINGS = ("distillation", "controls", "targets")
CONDITIONS = ("min_acc", "min_gain", "max_loss")
BEST_DISTILLED = "best_distilled"  # a target subject: the distilled setup the headline shows


class Report(Kind):
    name, outputs = "report", ("html",)
    reads_manifests = True

    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        settings = spec[self.name] or {}
        where = f"stage {name!r}, report"
        if not isinstance(settings, dict) or set(settings) - set(SETTINGS):
            raise StudyError(f"{where}: expected a mapping with keys among {list(SETTINGS)}, got {settings!r}")
        dist = settings.get("distillation")
        if dist is not None and not (
            isinstance(dist, dict)
            and isinstance(dist.get("baseline"), str)
            and _names(dist.get("rows", []))
            and set(dist) <= {"baseline", "rows"}
        ):
            raise StudyError(f"{where}.distillation: expected {{baseline: <stage>, rows: [<stage>, ...]}}, got {dist!r}")
        controls = settings.get("controls")
        if controls is not None and not (isinstance(controls, dict) and _names(list(controls)) and _names(list(controls.values()))):
            raise StudyError(f"{where}.controls: expected a mapping of method stage to control stage, got {controls!r}")
        targets = settings.get("targets") or {}
        if not isinstance(targets, dict):
            raise StudyError(f"{where}.targets: expected a mapping of stage (or {BEST_DISTILLED}) to conditions, got {targets!r}")
        for subject, target in targets.items():
            if not isinstance(target, dict) or not target or set(target) - set(CONDITIONS) or not _numbers(target.values()):
                raise StudyError(f"{where}.targets.{subject}: expected a mapping of {'/'.join(CONDITIONS)} to a number, got {target!r}")
        return [Stage(name, self.name, spec)]

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        return list(stages)[: list(stages).index(stage.name)]  # every stage defined before it in the file

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        from lit_kd.study.report import write_report

        ctx.progress(f"{label}: writing the report")
        paths = write_report(ctx.study, ctx.out, {n: ctx.manifests[n] for n in stage.needs}, settings.get("report") or {})
        return {"html": str(paths["html"])}, {"files": {k: str(v) for k, v in paths.items()}}, "lit-kd study (report stage)"


def _names(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _numbers(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
