"""The ``weights`` kind: shipped weights stand in for a trained stage. A weights file (a plain state dict or a
portable checkpoint, loaded with ``weights_only=True``) becomes a checkpoint of the named architecture, tested on the
full test set. Its network shows in the report's models table (:mod:`lit_kd.study.kinds.trained`).

    teacher: {weights: ../../weights/resnet20_teacher.pt, model: resnet20}
"""

from __future__ import annotations

from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.spec import Stage, Study, StudyError


class Weights(Kind):
    name, outputs = "weights", ("ckpt",)
    keys = frozenset({"model", "model_kwargs"})
    trained = True

    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        if not isinstance(spec.get("model"), str):
            raise StudyError(f"stage {name!r}: a weights stage names its architecture: model: <name>")
        return [Stage(name, self.name, spec)]

    def settings(self, stage: Stage) -> dict:
        return {}

    def check_files(self, study: Study, stage: Stage) -> None:
        weights = study.here / str(stage.spec["weights"])
        if not weights.is_file():
            raise StudyError(f"stage {stage.name!r}, weights: file {str(weights)!r} does not exist")

    def command(self, ctx: Context, stage: Stage, settings: dict) -> str:
        return f"lit-kd classify --ckpt {ctx.stage_dir(stage.name) / 'model.ckpt'} --data {ctx.data}"

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        from lit_kd.artifacts import network_facts
        from lit_kd.checkpoints import instantiate_network, load_weights, read_checkpoint, write_weights_file
        from lit_kd.evaluation import test_set_accuracy

        source = ctx.study.here / settings["weights"]
        state = read_checkpoint(source)  # weights_only: a file with pickled objects is refused
        network = load_weights(instantiate_network(settings["model"], 10, settings.get("model_kwargs")), source, state)
        ckpt = write_weights_file(network, settings["model"], ctx.stage_dir(stage.name) / "model.ckpt", 10, settings.get("model_kwargs"))
        ctx.progress(f"{label}: testing shipped weights {source.name}")
        correct, total = test_set_accuracy(network.eval(), ctx.data, 250, "cpu")
        metrics = {"test_acc": correct / total, "epochs": None, "stop_reason": f"shipped weights ({source.name})", **network_facts(ckpt)}
        return {"ckpt": str(ckpt)}, metrics, self.command(ctx, stage, settings)
