"""The ``select`` kind: the best of the named stages (or seed groups); it passes on the chosen stage's ``ckpt`` and
``config``, so later stages can start from "the best student". Under the ``held_out`` protocol it compares the
validation accuracy on the held-out training images of each stage's reported checkpoint (``val_acc``); under
``seed`` the test accuracy, and its report note says so.

    best_student: {select: [student_data, kd_logits, kd_features]}
"""

from __future__ import annotations

from lit_kd.study.kinds.base import Context, Kind, ReportInput
from lit_kd.study.render import pct
from lit_kd.study.spec import Stage, StudyError

BY = {"val_acc": "held-out validation accuracy", "test_acc": "test accuracy (chosen on the test set: protocol seed)"}


class Select(Kind):
    name, outputs = "select", ("ckpt", "config")
    reads_manifests = True

    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        if not isinstance(spec["select"], list) or len(spec["select"]) < 1:
            raise StudyError(f"stage {name!r}: select takes a list of stage names, got {spec['select']!r}")
        return [Stage(name, self.name, spec)]

    def apply_protocol(self, stage: Stage, protocol: str, validation_images: int) -> None:
        if protocol == "held_out":
            stage.spec["by"] = "val_acc"  # absent: test_acc, as studies written before protocols chose

    def settings(self, stage: Stage) -> dict:
        return {}

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        return [str(n) for n in stage.spec["select"]]

    def consumed_stages(self, stage: Stage) -> list[str]:
        return self.implicit_needs(stage, {})

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        by = stage.spec.get("by", "test_acc")
        candidates = {name: ctx.manifests[name]["metrics"].get(by) for name in stage.needs}
        missing = [n for n, v in candidates.items() if not isinstance(v, float) or v != v]  # absent, or NaN
        if missing:
            raise StudyError(
                f"stage {stage.name!r}: {', '.join(missing)} recorded no {by} ({BY[by]}); select compares trained fit stages "
                "that validated on held-out images (a weights stage has none)"
            )
        chosen = max(candidates, key=lambda n: (candidates[n], -list(candidates).index(n)))
        ctx.progress(f"{label}: {chosen} has the best {BY[by]} ({candidates[chosen]:.4f}) of {len(candidates)}")
        outputs = {k: v for k, v in ctx.manifests[chosen]["outputs"].items() if k in ("ckpt", "config")}
        return (outputs, {"chosen": chosen, "by": by, "candidates": candidates}, f"best {by} of {', '.join(candidates)}")

    def key_notes(self, rep: ReportInput) -> list[str]:
        notes = []
        for name, m in rep.of_kind("select").items():
            x = m["metrics"]
            by = x.get("by", "test_acc")
            n = len(x["candidates"])
            of = f"{n} candidate{'s' if n != 1 else ''}"
            notes.append(f"`{name}` is `{x['chosen']}`: the best {BY[by]} of {of} ({pct(x['candidates'][x['chosen']])}).")
        return notes
