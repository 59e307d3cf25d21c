"""The ``lit-kd`` command: LightningCLI (``fit``/``validate``/``test``/``predict``) driven by YAML configs.

Besides what a config asks for, every run gets: a TensorBoard logger writing to
``lightning_logs/<experiment>/version_N`` (experiment = the config file's name unless the config sets a logger),
checkpoints of the best ``val/acc`` (``best.ckpt``) and of the last epoch (``last.ckpt``, after every epoch:
:class:`~lit_kd.callbacks.BestAndLastCheckpoint`) under ``checkpoints/`` there, written atomically, and rich
progress bar and model summary.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lit_kd.checkpoints import AtomicCheckpointIO

LOG_ROOT = "lightning_logs"


def experiment_name(config_paths: list) -> str:
    """``quickstart`` for ``experiments/quickstart.yaml``; ``quickstart`` again for a run's saved
    ``lightning_logs/quickstart/version_3/config.yaml``; ``default`` without a config file."""
    if not config_paths:
        return "default"
    path = Path(str(config_paths[-1]))
    if path.stem == "config" and path.parent.name.startswith("version_"):
        return path.parent.parent.name
    return path.stem


def best_checkpoint_callback() -> ModelCheckpoint:
    from lit_kd.callbacks.best_and_last_checkpoint import BestAndLastCheckpoint

    return BestAndLastCheckpoint(monitor="val/acc", mode="max", filename="best", save_last=True, auto_insert_metric_name=False)


class LitKDCLI(LightningCLI):
    def __init__(self, args: Optional[list[str]] = None, extra_callbacks: Optional[list] = None, **kwargs: Any):
        self.extra_callbacks = list(extra_callbacks or [])  # added to the trainer's, not recorded in config.yaml
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> L.Trainer:
        config = dict(config)
        given = list(config.get("callbacks") or []) + list(callbacks) + self.extra_callbacks
        defaults = []
        if not any(isinstance(c, ModelCheckpoint) for c in given) and config.get("enable_checkpointing") is not False:
            defaults.append(best_checkpoint_callback())
        if not any(isinstance(c, RichProgressBar) for c in given) and config.get("enable_progress_bar") is not False:
            defaults.append(RichProgressBar(leave=True))
        if not any(isinstance(c, RichModelSummary) for c in given) and config.get("enable_model_summary") is not False:
            defaults.append(RichModelSummary(max_depth=1))
        config["callbacks"] = given + defaults
        if config.get("logger") in (None, True):
            config["logger"] = self._default_logger()
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, [])


    def _default_logger(self) -> TensorBoardLogger:
        """TensorBoard under ``lightning_logs/<experiment>/version_N`` (``<default_root_dir>/<experiment>/version_N``
        with ``--trainer.default_root_dir``); ``fit --ckpt_path`` of a checkpoint inside
        such a run directory resumes into that same directory, so its curves and checkpoints continue there."""
        subconfig = self.config.get(self.subcommand, self.config)
        ckpt_path = subconfig.get("ckpt_path")
        if self.subcommand == "fit" and ckpt_path:
            run_dir = Path(ckpt_path).resolve().parent.parent
            if run_dir.is_relative_to(Path.cwd()):  # our runs log under the relative LOG_ROOT: keep paths comparable
                run_dir = run_dir.relative_to(Path.cwd())
            if Path(ckpt_path).parent.name == "checkpoints" and run_dir.name.startswith("version_"):
                return TensorBoardLogger(run_dir.parent.parent, name=run_dir.parent.name, version=run_dir.name, default_hp_metric=False)
        root = (subconfig.get("trainer") or {}).get("default_root_dir") or LOG_ROOT  # Lightning's convention when given
        return TensorBoardLogger(root, name=experiment_name(subconfig.get("config") or []), default_hp_metric=False)


def run(args: Optional[list[str]] = None, extra_callbacks: Optional[list] = None) -> LitKDCLI:
    """Run the CLI on ``args`` (default ``sys.argv[1:]``) and return the LightningCLI object; ``extra_callbacks``
    join the trainer's callbacks (the study runner's progress line) without entering the saved config."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    import lit_kd.callbacks  # noqa: F401  (short class names in configs resolve to imported subclasses)
    import lit_kd.data  # noqa: F401
    import lit_kd.modules  # noqa: F401

    return LitKDCLI(args=args, extra_callbacks=extra_callbacks)


EXTRA_COMMANDS = {  # name -> (module with main(argv), one line for `lit-kd --help`)
    "study": ("lit_kd.commands.study", "run a whole study (stages, checkpoint reuse, resume) and write its report"),
    "ptq": ("lit_kd.commands.ptq", "post-training quantization of a checkpoint at several widths and methods"),
    "export": ("lit_kd.commands.export", "a checkpoint to ONNX, validated in ONNX Runtime and DeepSparse"),
    "bench": ("lit_kd.commands.bench", "DeepSparse / ONNX Runtime / PyTorch speed at batch 1 and 32"),
    "classify": ("lit_kd.commands.classify", "predictions for image files, or test accuracy"),
}


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point ``lit-kd``: LightningCLI subcommands, plus the EXTRA_COMMANDS (``ptq``, ``classify``,
    ``export``, ``bench``), each a module with its own ``main(argv)``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in EXTRA_COMMANDS:
        os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
        status = importlib.import_module(EXTRA_COMMANDS[argv[0]][0]).main(argv[1:])
        if isinstance(status, int):
            sys.exit(status)
        return
    if not argv or argv[0] in ("-h", "--help"):
        try:
            run(["--help"])
        except SystemExit:
            pass
        print("\nmore subcommands (each with its own --help):\n"
              + "\n".join(f"  {name:9s} {text}" for name, (_, text) in EXTRA_COMMANDS.items()))
        if not argv:
            sys.exit(2)
        return
    run(argv)


if __name__ == "__main__":
    main()
