"""Shared bits of the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch

from lit_kd import atomic
from lit_kd.speed import cpu_info


def training_speed_parser(description: str, out: str) -> argparse.ArgumentParser:
    """Arguments shared by the training-speed benchmarks (data, batch size, warm-up, timed steps, repeats, threads)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data",
        default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"),
        help="CIFAR-10 source (default $LIT_KD_CIFAR10, else data/cifar10)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=out)
    return parser


def machine_info(threads: int) -> dict:
    """The machine, and the torch thread count the benchmark ran with: read back from torch (not the requested
    ``threads``), so a run whose pinning was lost on the way says so (and fails)."""
    actual = torch.get_num_threads()
    if actual != threads:
        raise RuntimeError(
            f"the benchmark pinned torch to {threads} threads, but torch now runs {actual}: the timings are not what --threads asked for"
        )
    cpu = cpu_info(threads)  # the instruction set matters: INT8 speed differs by far with and without VNNI
    return {
        "cpu": cpu["cpu"],
        "isa": cpu["isa"],
        "vnni": cpu["vnni"],
        "load_average_1min": cpu["load_average_1min"],
        "logical_cpus": os.cpu_count(),
        "torch_threads": actual,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(path: str | Path, payload: dict) -> None:
    atomic.write_json(path, payload)  # atomic: a killed benchmark leaves no half-written JSON


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time from the start of training step ``warmup`` to the end of training."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.end = time.perf_counter()


def lightning_images_per_second(
    module: L.LightningModule, dm, warmup: int, steps: int, accelerator: str = "auto", precision: str = "32-true"
) -> float:
    """Training images per second of ``Trainer.fit`` over ``steps`` steps after ``warmup`` steps (no validation,
    checkpoints, logger or progress bar)."""
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        max_steps=warmup + steps,
        accelerator=accelerator,
        precision=precision,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return steps * dm.hparams.batch_size / (timer.end - timer.start)
