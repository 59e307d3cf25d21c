"""Helpers for driving the real CLI and reading back real TensorBoard event files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_kd.lightning_cli import run

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


ONE_CYCLE = {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.05, "total_steps": 200}}


def write_config(
    path: Path,
    data_dir: Path,
    *,
    model: str = "resnet20",
    epochs: int = 2,
    batch_size: int = 32,
    optimizer: dict | None = None,
    lr_scheduler: dict | None = ONE_CYCLE,
    **data,
) -> Path:
    """A small fit config; by default SGD with a per-step OneCycle schedule (state that must survive a resume)."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "lit_kd.modules.ClassifierModule",
            "init_args": {
                "model": model,
                "optimizer": optimizer or {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
                "lr_scheduler": lr_scheduler,
                "scheduler_interval": "step",
                "num_example_images": 6,
            },
        },
        "data": {
            "class_path": "lit_kd.data.CIFAR10DataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": batch_size, "eval_batch_size": 64} | data,
        },
        "trainer": {"max_epochs": epochs, "deterministic": True, "log_every_n_steps": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str):
    """The real ``lit-kd`` entry point, in this process (returns the LightningCLI object)."""
    return run([*map(str, args), *QUIET])


def run_cli_in(directory: Path, *args: str):
    """``run_cli`` with ``directory`` as the working directory (for module- and session-scoped fixtures)."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        return run_cli(*args)
    finally:
        os.chdir(cwd)


def run_console_script(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed ``lit-kd`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("lit-kd")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(exe), *map(str, args), *QUIET], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"lit-kd {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def scalars(log_dir: Path, tag: str) -> list[float]:
    return [e.value for e in read_events(log_dir).Scalars(tag)]


def load_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


class CrashAtEpoch(__import__("lightning").Callback):
    """Raise at the start of epoch ``epoch``: a run that dies after ``last.ckpt`` of the previous epoch was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")
