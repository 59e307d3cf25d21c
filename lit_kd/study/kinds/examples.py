"""The ``examples`` kind: every trained model's prediction and confidence on the first test image of each class
(the named ``models``, or every fit and weights stage before it); its report section (the images and a table of
predictions) and its record (``results.examples``).

    examples: {examples: {}}
"""

from __future__ import annotations

from lit_kd.atomic import write_json
from lit_kd.study.kinds.base import EXAMPLES, Context, Kind, ReportInput
from lit_kd.study.render import Figure, Section, Table
from lit_kd.study.results import ExamplesRecord
from lit_kd.study.spec import Stage


class Examples(Kind):
    name, outputs = "examples", ("json",)
    reads_manifests = True
    needs_key = "examples.models"

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        from lit_kd.study.kinds import KINDS

        models = (stage.spec["examples"] or {}).get("models")
        before = list(stages)[: list(stages).index(stage.name)]
        return [str(n) for n in models] if models is not None else [n for n in before if KINDS[stages[n].kind].trained]

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        from lit_kd.study.evaluate import one_image_per_class
        from lit_kd.study.kinds import KINDS

        models = {name: ctx.manifests[name] for name in stage.needs if KINDS[ctx.manifests[name]["kind"]].trained}
        ctx.progress(f"{label}: predictions of {len(models)} models on one test image per class")
        result = one_image_per_class(models, ctx.data)
        path = ctx.stage_dir(stage.name) / "examples.json"
        write_json(path, result)
        return {"json": str(path)}, result, f"lit_kd.study.evaluate.one_image_per_class over {', '.join(models)}"

    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        from lit_kd.study.figures import examples_figure

        manifest = next(iter(rep.of_kind("examples").values()), None)
        if not manifest:
            return []
        examples = rep.results.examples = ExamplesRecord.from_dict(manifest["metrics"])
        figure = Figure(
            examples_figure(rep.images, examples.classes, examples.labels, rep.fig_dir / "examples.png"),
            "The first test image of each class, with its true class.",
        )
        return [(EXAMPLES, Section("Example predictions", [figure, examples_table(examples)]))]


def examples_table(examples: ExamplesRecord) -> Table:
    classes = examples.classes
    rows = []
    for name, m in examples.models.items():
        cells = [f"{classes[p]} {100 * c:.0f} %" + ("" if p == t else " ✗") for p, c, t in zip(m.predicted, m.confidence, examples.labels)]
        rows.append([name, *cells])
    return Table(["model", *[classes[t] for t in examples.labels]], rows, "Prediction and confidence per model; ✗ marks a wrong one.")


def example_images(examples_manifest: dict):
    """The example images (N x 3 x H x W in [0, 1]), read from the data (the manifest stores their indices)."""
    from lit_kd.data import CIFAR10DataModule

    dm = CIFAR10DataModule(examples_manifest["inputs"]["data"])
    dm.setup("test")
    return dm.splits["test"].images[examples_manifest["metrics"]["indices"]].float().div(255)
