"""The ``fit`` kind: a LightningCLI run (an experiments config with the study's overrides) followed by one test of the
checkpoint it reports: the best one by validation accuracy, or the last one when a callback reshapes the network as
it trains, or, under the ``held_out`` protocol, when the run has a fixed schedule (no stopping rule: no
``EarlyStopping`` callback, such as the plateau rule, among the trainer's callbacks). The manifest records which one
(``reported_checkpoint``) and its validation accuracy (``val_acc``, what ``select`` compares under ``held_out``).
Under ``held_out`` the stage validates on the study's held-out training images (``data.init_args.val_split``). Its
report sections and headline rows, shared with the ``weights`` kind, are in :mod:`lit_kd.study.kinds.trained`.

    student: {fit: ../cifar_cpu/student.yaml, seeds: [0, 1], overrides: {trainer.max_epochs: 30}}
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from lit_kd.atomic import write_text
from lit_kd.study.kinds import trained
from lit_kd.study.kinds.base import RUN_DIR, Context, Kind, ReportInput, Row
from lit_kd.study.render import Section
from lit_kd.study.results import Results
from lit_kd.study.spec import Stage, Study, StudyError, check_override_key, load_yaml, references, set_dotted


def stage_config(ctx: Context, stage: Stage, settings: dict) -> dict:
    """The stage's config file with the study's overrides, the data source and the study's logger applied."""
    config = yaml.safe_load((ctx.study.here / settings["fit"]).read_text()) or {}
    for key, value in settings["overrides"].items():
        set_dotted(config, key, value)
    set_dotted(config, "data.init_args.data_dir", ctx.data)
    set_dotted(
        config,
        "trainer.logger",
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(ctx.stage_dir(stage.name)), "name": "", "version": RUN_DIR, "default_hp_metric": False},
        },
    )
    return config


def fit_command(stage_dir: Path, ckpt: str | Path) -> str:
    """The fit stage's record: its LightningCLI run, then the test of ``ckpt`` (best.ckpt, or last.ckpt)."""
    run_config = stage_dir / RUN_DIR / "config.yaml"
    return f"lit-kd fit --config {stage_dir / 'stage_config.yaml'} && lit-kd test --config {run_config} --ckpt_path {ckpt}"


VAL_SPLIT = "data.init_args.val_split"


def reported_checkpoint(trainer, held_out: bool) -> str:
    """``"last"`` when a callback reshapes the network as it trains, or under held_out when nothing stops the run
    early (a fixed schedule reports its last epoch); ``"best"`` otherwise (and when no best checkpoint exists)."""
    from lightning.pytorch.callbacks import EarlyStopping

    from lit_kd.callbacks.study_progress import reshaping_callbacks

    if any(isinstance(c, reshaping_callbacks()) for c in trainer.callbacks):
        return "last"
    if held_out and not any(isinstance(c, EarlyStopping) for c in trainer.callbacks):
        return "last"
    return "best" if trainer.checkpoint_callback.best_model_path else "last"


class Fit(Kind):
    name, outputs = "fit", ("ckpt", "last", "run_dir", "config", "int8")
    keys = frozenset({"overrides", "seeds"})
    trained = True

    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyError(f"stage {name!r}: overrides must be a mapping of dotted keys to values")
        spec["overrides"] = {**fit_overrides, **overrides}
        seeds = spec.pop("seeds", None)
        if seeds is None:
            return [Stage(name, self.name, spec)]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise StudyError(f"stage {name!r}: seeds must be a non-empty list of integers, got {seeds!r}")
        return [
            Stage(f"{name}.seed{s}", self.name, {**spec, "overrides": {**spec["overrides"], "seed_everything": s}}, group=name, seed=s)
            for s in seeds
        ]

    def apply_protocol(self, stage: Stage, protocol: str, validation_images: int) -> None:
        if protocol != "held_out":
            return
        overrides = stage.spec["overrides"]
        overrides.setdefault(VAL_SPLIT, validation_images)  # fit_overrides and the stage's overrides win
        if not overrides[VAL_SPLIT]:
            raise StudyError(
                f"stage {stage.name!r}, overrides.{VAL_SPLIT}: 0 validates on the test set, which protocol held_out "
                "forbids; give a number of held-out training images, or protocol: seed"
            )

    def settings(self, stage: Stage) -> dict:
        return {"fit": stage.spec["fit"], **{f"overrides.{k}": v for k, v in stage.spec["overrides"].items()}}

    def check_files(self, study: Study, stage: Stage) -> None:
        if references(stage.spec["fit"]):  # a config chosen at run time is checked then
            return
        config = study.here / str(stage.spec["fit"])
        where = f"stage {stage.name!r}, fit:"
        parsed = load_yaml(config, f"{where} config {str(config)!r} does not exist", f"{where} {config} is not valid YAML")
        for key in stage.spec["overrides"]:
            check_override_key(parsed or {}, key, f"stage {stage.name!r}, overrides.{key}")

    def command(self, ctx: Context, stage: Stage, settings: dict) -> str:  # a stage that reshapes its network tests last.ckpt
        return fit_command(ctx.stage_dir(stage.name), ctx.stage_dir(stage.name) / RUN_DIR / "checkpoints" / "best.ckpt")

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        from lit_kd.artifacts import network_facts
        from lit_kd.callbacks.study_progress import FitOutcome, StageProgress
        from lit_kd.lightning_cli import run
        from lit_kd.quant.pt2e import INT8_PROGRAM_FILE
        from lit_kd.quant.torch_qat import INT8_FILE

        stage_dir = ctx.stage_dir(stage.name)
        config_path = stage_dir / "stage_config.yaml"
        write_text(config_path, yaml.safe_dump(stage_config(ctx, stage, settings), sort_keys=False))
        ckpt_dir = stage_dir / RUN_DIR / "checkpoints"
        # Lightning's bars under the study's per-epoch lines in a terminal; in logs, only the study's lines
        args = ["fit", "--config", str(config_path), "--trainer.enable_progress_bar", str(sys.stdout.isatty()).lower()]
        if ctx.resume and (ckpt_dir / "last.ckpt").is_file():
            args += ["--ckpt_path", str(ckpt_dir / "last.ckpt")]
        outcome = FitOutcome()
        cli = run(args, extra_callbacks=[StageProgress(label, ctx.progress), outcome])
        trainer = cli.trainer
        reported = reported_checkpoint(trainer, ctx.study.protocol == "held_out")
        best = trainer.checkpoint_callback.best_model_path if reported == "best" else str(ckpt_dir / "last.ckpt")
        tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
        outputs = {"ckpt": best, "last": str(ckpt_dir / "last.ckpt"), "run_dir": str(stage_dir / RUN_DIR), "config": str(config_path)}
        int8 = next((ckpt_dir / f for f in (INT8_PROGRAM_FILE, INT8_FILE) if (ckpt_dir / f).is_file()), None)  # PT2E or FX QAT
        if int8:
            outputs["int8"] = str(int8)
        metrics = {
            "test_acc": float(tested[0]["test/acc"]),
            "reported_checkpoint": reported,
            "val_acc": outcome.metrics["best_val_acc" if reported == "best" else "last_val_acc"],
            **outcome.metrics,
            **network_facts(best, int8),
        }
        return outputs, metrics, fit_command(stage_dir, best)

    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        return trained.report_sections(rep)

    def headline_rows(self, results: Results) -> list[tuple[int, Row]]:
        return trained.headline_rows(results)
