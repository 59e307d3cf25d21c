"""The ``select`` kind: the best of the named stages (or seed groups) by test accuracy; it passes on the chosen
stage's ``ckpt`` and ``config``, so later stages can start from "the best student".

    best_student: {select: [student_data, kd_logits, kd_features]}
"""

from __future__ import annotations

from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.spec import Stage, StudyError


class Select(Kind):
    name, outputs = "select", ("ckpt", "config")
    reads_manifests = True

    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        if not isinstance(spec["select"], list) or len(spec["select"]) < 1:
            raise StudyError(f"stage {name!r}: select takes a list of stage names, got {spec['select']!r}")
        return [Stage(name, self.name, spec)]

    def settings(self, stage: Stage) -> dict:
        return {}

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        return [str(n) for n in stage.spec["select"]]

    def consumed_stages(self, stage: Stage) -> list[str]:
        return self.implicit_needs(stage, {})

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        candidates = {name: ctx.manifests[name]["metrics"]["test_acc"] for name in stage.needs}
        chosen = max(candidates, key=lambda n: (candidates[n], -list(candidates).index(n)))
        ctx.progress(f"{label}: {chosen} has the best test accuracy ({candidates[chosen]:.4f}) of {len(candidates)}")
        outputs = {k: v for k, v in ctx.manifests[chosen]["outputs"].items() if k in ("ckpt", "config")}
        return (outputs, {"chosen": chosen, "candidates": candidates}, f"best test_acc of {', '.join(candidates)}")
