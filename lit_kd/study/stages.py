"""What each kind of study stage does. Every executor gets the stage, its settings with references resolved, and
the run context; it returns ``(outputs, metrics, command)`` for the manifest and writes only under its stage folder.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from lit_kd.atomic import write_json, write_text
from lit_kd.study.spec import Stage, Study, set_dotted

RUN_DIR = "run"  # the Lightning run of a fit stage: <out>/<stage>/run/{checkpoints,events,config.yaml}


def reshaping_callbacks() -> tuple[type, ...]:
    """Callbacks that change the network as training goes (its result is the last epoch, not the best one)."""
    from lit_kd.callbacks import IterativePruning, SparseMLRecipe

    return (SparseMLRecipe, IterativePruning)


@dataclass
class Context:
    study: Study
    out: Path
    data: str
    progress: Callable[[str], None] = print
    manifests: dict[str, dict] = field(default_factory=dict)  # finished stages' manifests, by name
    resume: bool = False  # fit stages: continue from run/checkpoints/last.ckpt

    def stage_dir(self, name: str) -> Path:
        return self.out / name


# ------------------------------------------------------------------------------------------------ fit stages
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


class StageProgress(L.Callback):
    """One line per training epoch: stage k of n, epoch, validation accuracy, seconds per epoch, ETA."""

    def __init__(self, label: str, report: Callable[[str], None]):
        self.label, self.report = label, report
        self.started: float | None = None
        self.first_epoch = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started, self.first_epoch = time.perf_counter(), trainer.current_epoch

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.started is None:
            return
        done = trainer.current_epoch + 1 - self.first_epoch
        per_epoch = (time.perf_counter() - self.started) / max(done, 1)
        left = max(trainer.max_epochs - trainer.current_epoch - 1, 0) if trainer.max_epochs and trainer.max_epochs > 0 else None
        acc = trainer.callback_metrics.get("val/acc")
        eta = f", ETA {left * per_epoch / 60:.1f} min at most" if left is not None else ""
        self.report(
            f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            + (f", val/acc {float(acc):.4f}" if acc is not None else "")
            + f", {per_epoch:.0f} s/epoch{eta}"
        )


class FitOutcome(L.Callback):
    """What a fit stage's manifest reports about training, read when fit ends: epochs, best validation accuracy, why
    it stopped, and the teacher's checked accuracy. Read then because ``trainer.test(ckpt_path=...)`` restores every
    callback's state from that checkpoint (Lightning 2.6), e.g. a plateau rule's ``stopped_epoch`` from a best
    checkpoint written before the rule fired."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        self.metrics = {
            "best_val_acc": float("nan") if score is None else float(score),
            "epochs": trainer.current_epoch,
            "stop_reason": stop_reason(trainer),
            "teacher_val_acc": getattr(pl_module, "teacher_val_acc", None),
        }


def stop_reason(trainer: L.Trainer) -> str:
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    from lit_kd.callbacks import SparseMLRecipe

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return f"plateau rule ({type(callback).__name__}) after epoch {callback.stopped_epoch + 1}"
        if isinstance(callback, SparseMLRecipe):
            return f"recipe length ({trainer.current_epoch} epochs)"
        remaining = callback.time_remaining("train") if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return f"time budget (trainer.max_time, after epoch {trainer.current_epoch})"
    return f"epoch budget (max_epochs {trainer.max_epochs})"


def run_fit(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    from lit_kd.lightning_cli import run

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
    # a pruning recipe or budget changes the network as it goes: its result is the last epoch, not the best one
    reshaped = any(isinstance(c, reshaping_callbacks()) for c in trainer.callbacks)
    best = str(ckpt_dir / "last.ckpt") if reshaped else trainer.checkpoint_callback.best_model_path or str(ckpt_dir / "last.ckpt")
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
    outputs = {"ckpt": best, "last": str(ckpt_dir / "last.ckpt"), "run_dir": str(stage_dir / RUN_DIR), "config": str(config_path)}
    int8 = ckpt_dir / "int8_model.pt"
    if int8.is_file():
        outputs["int8"] = str(int8)
    metrics = {
        "test_acc": float(tested[0]["test/acc"]),
        **outcome.metrics,
        **network_facts(best, int8 if int8.is_file() else None),
    }
    command = f"lit-kd fit --config {config_path} && lit-kd test --config {stage_dir / RUN_DIR / 'config.yaml'} --ckpt_path {best}"
    return outputs, metrics, command


def network_facts(ckpt: str | Path, int8: Path | None = None) -> dict:
    """Parameters, non-zero parameters, MACs, per-layer sparsity and size in bytes of a checkpoint's network.

    Parameters and MACs are those of the plain architecture; non-zero counts come from the checkpoint's own tensors
    (so a pruned or QAT checkpoint counts what it stores); ``size_bytes`` is the serialized float state dict, or the
    INT8 model's when the run saved one."""
    from lit_kd.checkpoints import build_network, network_key, network_state, read_checkpoint
    from lit_kd.models import model_summary
    from lit_kd.models.summary import summary_totals

    checkpoint = read_checkpoint(ckpt)
    network = build_network(checkpoint, ckpt)
    totals = summary_totals(model_summary(network))
    state = network_state(checkpoint)
    layers = {}
    nonzero = 0
    for name, tensor in state.items():
        if not torch.is_floating_point(tensor) or "post_process" in name or "fake_quant" in name or "running_" in name:
            continue
        if name.endswith((".weight", ".bias", "weight_orig")):
            nonzero += int(tensor.count_nonzero())
            if tensor.ndim in (2, 4) and not name.endswith(".bias"):
                layers[name.removesuffix("_orig").removesuffix(".weight").replace(".module", "")] = (
                    1 - int(tensor.count_nonzero()) / tensor.numel()
                )
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.items()}, buffer)
    size = int8.stat().st_size if int8 is not None else buffer.tell()
    spec = checkpoint["hyper_parameters"][network_key(checkpoint["hyper_parameters"])]
    return {
        "architecture": spec if isinstance(spec, str) else spec.get("class_path"),
        "params": totals["params"],
        "nonzero_params": min(nonzero, totals["params"]),
        "macs": totals["macs"],
        "size_bytes": size,
        "layer_sparsity": layers,
    }


# ------------------------------------------------------------------------------------------------ other stages
def run_weights(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    """Shipped weights stand in for a trained stage: a weights file (a plain state dict or a portable checkpoint,
    loaded with ``weights_only=True``) becomes a checkpoint of the named architecture, tested on the full test set."""
    from lit_kd.checkpoints import instantiate_network, load_weights, read_checkpoint, write_weights_file
    from lit_kd.evaluation import test_set_accuracy

    source = ctx.study.here / settings["weights"]
    state = read_checkpoint(source)  # weights_only: a file with pickled objects is refused
    network = load_weights(instantiate_network(settings["model"], 10, settings.get("model_kwargs")), source, state)
    ckpt = write_weights_file(network, settings["model"], ctx.stage_dir(stage.name) / "model.ckpt", 10, settings.get("model_kwargs"))
    ctx.progress(f"{label}: testing shipped weights {source.name}")
    correct, total = test_set_accuracy(network.eval(), ctx.data, 250, "cpu")
    metrics = {"test_acc": correct / total, "epochs": None, "stop_reason": f"shipped weights ({source.name})", **network_facts(ckpt)}
    return {"ckpt": str(ckpt)}, metrics, f"lit-kd classify --ckpt {ckpt} --data {ctx.data}"


def run_select(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    candidates = {}
    for name in stage.needs:
        candidates[name] = ctx.manifests[name]["metrics"]["test_acc"]
    chosen = max(candidates, key=lambda n: (candidates[n], -list(candidates).index(n)))
    ctx.progress(f"{label}: {chosen} has the best test accuracy ({candidates[chosen]:.4f}) of {len(candidates)}")
    outputs = {k: v for k, v in ctx.manifests[chosen]["outputs"].items() if k in ("ckpt", "config")}
    return (outputs, {"chosen": chosen, "candidates": candidates}, f"best test_acc of {', '.join(candidates)}")


def flags(settings: dict) -> list[str]:
    """``{"bits": [8, 4], "no_pytorch": true}`` -> ``["--bits", "8", "4", "--no-pytorch"]``."""
    argv = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


STEP_OUTPUTS = {  # kind -> (output file, outputs)
    "ptq": ("ptq.json", {"json": "ptq.json"}),
    "export": ("model.onnx", {"onnx": "model.onnx", "json": "model.validation.json"}),
    "bench": ("bench.json", {"json": "bench.json"}),
}


def run_step(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    """A ptq, export or bench stage: the library function behind ``lit-kd <kind>``, with the stage's settings (named
    as that command's flags, ``bits: [8, 4]`` for ``--bits 8 4``), the study's data unless the settings name their
    own, and the output in the stage folder. The manifest records the equivalent command line."""
    from lit_kd.study.steps import STEPS

    out_file, outputs = STEP_OUTPUTS[stage.kind]
    stage_dir = ctx.stage_dir(stage.name)
    step_settings = dict(settings[stage.kind] or {})
    if stage.kind != "bench" and "data" not in step_settings:
        step_settings["data"] = ctx.data
    step_settings["out"] = str(stage_dir / out_file)
    command = f"lit-kd {stage.kind} " + shlex.join(flags(step_settings))
    ctx.progress(f"{label}: {command}")
    result = STEPS[stage.kind](step_settings)
    json.dumps(result, default=str)  # fail here, not in the manifest, if a result cannot be recorded
    return {k: str(stage_dir / v) for k, v in outputs.items()}, result, command


def run_examples(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    from lit_kd.study.evaluate import one_image_per_class

    models = {name: ctx.manifests[name] for name in stage.needs if ctx.manifests[name]["kind"] in ("fit", "weights")}
    ctx.progress(f"{label}: predictions of {len(models)} models on one test image per class")
    result = one_image_per_class(models, ctx.data)
    path = ctx.stage_dir(stage.name) / "examples.json"
    write_json(path, result)
    return {"json": str(path)}, result, f"lit_kd.study.evaluate.one_image_per_class over {', '.join(models)}"


def run_report(ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
    from lit_kd.study.report import write_report

    ctx.progress(f"{label}: writing the report")
    paths = write_report(ctx.study, ctx.out, {n: ctx.manifests[n] for n in stage.needs}, settings.get("report") or {})
    return {"html": str(paths["html"])}, {"files": {k: str(v) for k, v in paths.items()}}, "lit-kd study (report stage)"


EXECUTORS: dict[str, Callable[[Context, Stage, dict, str], tuple[dict, dict, str]]] = {
    "fit": run_fit,
    "weights": run_weights,
    "select": run_select,
    "ptq": run_step,
    "export": run_step,
    "bench": run_step,
    "examples": run_examples,
    "report": run_report,
}


def consumed_files(stage: Stage, settings: Any, manifests: dict[str, dict]) -> list[str]:
    """The files a stage reads from earlier stages: every resolved setting that is an existing file under a stage
    it needs, and for select/report/examples stages the manifests of those stages."""
    files: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and Path(value).is_file():
            files.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(settings)
    if stage.kind in ("select", "report", "examples"):
        for name in stage.needs:
            files += [v for k, v in manifests[name]["outputs"].items() if k in ("ckpt", "int8", "json", "onnx")]
    return sorted(set(files))
