"""LightningCLI of the ``lit-kd`` command (``fit``/``validate``/``test``/``predict``) driven by YAML configs.

Besides what a config asks for, every run gets: a TensorBoard logger writing to
``lightning_logs/<experiment>/version_N`` (experiment = the config file's name unless the config sets a logger),
checkpoints of the best ``val/acc`` (``best.ckpt``) and of the last epoch (``last.ckpt``, after every epoch:
:class:`~lit_kd.callbacks.BestAndLastCheckpoint`) under ``checkpoints/`` there, written atomically and read safely
(:class:`~lit_kd.checkpoints.AtomicCheckpointIO`, added to the user's plugins), and rich progress bar and model
summary.

Nothing a run made is overwritten by another run:

- ``fit --ckpt_path <run>/checkpoints/X.ckpt`` continues in ``<run>`` only when that run is of the same experiment
  (its directory's parent is this config's experiment name) and was run with the same config: its ``config.yaml``
  parses to the config of this run except for the keys in :data:`RESUME_IGNORED` (the checkpoint to resume from,
  the training budget ``max_epochs``/``max_steps``/``max_time``, whether bars and summaries are shown, and the seed
  when ``seed_everything: true`` draws a new one each run), a missing key counting as null. Otherwise the run logs to
  a new ``version_N`` of its own experiment (training state is still restored from the checkpoint) and says why.
- ``config.yaml`` is written atomically, and an existing ``config.yaml`` of a different config (by the same rule) is
  never overwritten: a ``fit`` stops before writing anything there (this guards runs whose logger directory is given
  explicitly, e.g. the study runner's ``<stage>/run``; a resume there with the same config updates it), and
  ``validate``/``test``/``predict`` logging into a run directory leave its ``config.yaml`` as it is.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_kd.checkpoints import AtomicCheckpointIO, is_local_path
from lit_kd.run_config import RESUME_IGNORED, SaveRunConfig, _flatten, config_differences

LOG_ROOT = "lightning_logs"


def with_atomic_checkpoint_io(plugins: Any, strategy: Any = None) -> list:
    """The trainer's plugins with :class:`AtomicCheckpointIO` added: precision, environment and layer-sync plugins
    are kept as given; a wrapping IO without a base (``AsyncCheckpointIO()``) gets it as its base; a ``CheckpointIO``
    of the user's own (or one set on a strategy object) is left as it is, and is then responsible for its writes."""
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    ios = [p for p in plugins if isinstance(p, CheckpointIO)]
    for io in ios:
        if isinstance(io, _WrappingCheckpointIO) and io.checkpoint_io is None:
            io.checkpoint_io = AtomicCheckpointIO()
    if not ios and getattr(strategy, "_checkpoint_io", None) is None:
        plugins.append(AtomicCheckpointIO())
    return plugins


def experiment_name(config_paths: list) -> str:
    """``quickstart`` for ``experiments/quickstart.yaml``; ``quickstart`` again for a run's saved
    ``lightning_logs/quickstart/version_3/config.yaml``; ``default`` without a config file."""
    if not config_paths:
        return "default"
    path = Path(str(config_paths[-1]))
    if path.stem == "config" and path.parent.name.startswith("version_"):
        return path.parent.parent.name
    return path.stem


class CkptPathError(ValueError):
    """A ``--ckpt_path`` this run cannot use: no Lightning checkpoint, or a network that does not fit the config's."""


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` (resolved) that does not exist yet: what a run would create there."""
    path = path.resolve()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def state_dict_mismatch(own: dict, state: dict, module: str) -> str:
    """One line for a checkpoint ``state`` that does not load into a module whose state dict is ``own``: how many
    keys are missing and unexpected and how many shapes differ, one example of each, and the likely cause when one
    side holds fake-quantize modules (a float checkpoint under a QAT config, or the reverse)."""
    from lit_kd.checkpoints import QAT_MARKERS, state_mismatch

    missing, unexpected, wrong = state_mismatch(own, state)
    parts = [
        f"{len(keys)} {label} (e.g. {keys[0]})"
        for label, keys in (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", wrong))
        if keys
    ]
    why = ""
    qat_missing, qat_unexpected = (any(m in k for k in keys for m in QAT_MARKERS) for keys in (missing, unexpected))
    if qat_missing and not qat_unexpected:
        why = "; this config makes a QAT network, the checkpoint holds a float one (for QAT give it as the callback's init_ckpt)"
    elif qat_unexpected and not qat_missing:
        why = "; the checkpoint holds a QAT network, this config builds a float one (use the config it was trained with)"
    return f"the checkpoint does not fit the {module} this config builds: {'; '.join(parts)}{why}"


def best_checkpoint_callback() -> ModelCheckpoint:
    from lit_kd.callbacks.best_and_last_checkpoint import BestAndLastCheckpoint

    return BestAndLastCheckpoint(monitor="val/acc", mode="max", filename="best", save_last=True, auto_insert_metric_name=False)


class LitKDCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, extra_callbacks: list | None = None, **kwargs: Any):
        self.extra_callbacks = list(extra_callbacks or [])  # added to the trainer's, not recorded in config.yaml
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
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
        config["plugins"] = with_atomic_checkpoint_io(config.get("plugins"), config.get("strategy"))
        self.save_config_kwargs = {**self.save_config_kwargs, "ignore": self._resume_ignored()}
        trainer = super()._instantiate_trainer(config, [])
        for callback in trainer.callbacks:
            if isinstance(callback, SaveRunConfig) and self.subcommand == "fit":
                callback.refuse_conflict(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning's (the checkpoint's hyperparameters replace the config's model arguments; hyperparameters without
        LightningCLI's ``_class_path``, as in a weights file, are left out), with the checkpoint
        read by :func:`~lit_kd.checkpoints.safe_load` (a file with pickled objects is refused with a clear message,
        unless trusted as in :class:`~lit_kd.checkpoints.AtomicCheckpointIO`), and the config as given kept for the
        resume decision (:meth:`_resume_run_dir`)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        self._given_config = self.config[subcommand].clone()
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        from lit_kd.checkpoints import safe_load

        try:
            checkpoint = safe_load(ckpt_path, trust=self.config[subcommand].get("weights_only") is False)  # as Lightning's
        except ValueError as err:  # pickled objects refused, not a torch file, truncated
            raise CkptPathError(f"--ckpt_path: {err}") from None
        missing = [k for k in ("state_dict", "pytorch-lightning_version") if not isinstance(checkpoint, dict) or k not in checkpoint]
        if missing:
            raise CkptPathError(
                f"--ckpt_path {ckpt_path} is no Lightning checkpoint (it lacks {' and '.join(map(repr, missing))}); expected a "
                "checkpoint written by lit-kd fit (a file of weights only goes to a module's init_ckpt or teacher_ckpt)"
            )
        hparams = dict((checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None) or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" not in hparams:  # not saved by LightningCLI (e.g. a weights file): the config's model stands
            rank_zero_info(f"{ckpt_path}: hyperparameters not saved by LightningCLI; the config's model arguments are used")
            return
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        self._warn_replaced_model_arguments(subcommand, ckpt_path)

    def _warn_replaced_model_arguments(self, subcommand: str, ckpt_path: str) -> None:
        """Say which of the config's model arguments the checkpoint's hyperparameters replaced (LightningCLI gives the
        checkpoint precedence over the config and the command line, silently)."""
        parser = self._parser(subcommand)
        given, used = (
            {"model": yaml.safe_load(parser.dump(c, skip_unset=False)).get("model")} for c in (self._given_config, self.config[subcommand])
        )
        flat_given, flat_used = _flatten(given), _flatten(used)
        replaced = [k for k in config_differences(given, used, ()) if k in flat_given and flat_given[k] is not None]
        if replaced:
            shown = ", ".join(f"{k.removeprefix('model.')}={flat_given[k]!r} -> {flat_used.get(k)!r}" for k in replaced[:8])
            rank_zero_warn(
                f"--ckpt_path {ckpt_path}: the checkpoint's hyperparameters replace the config's model arguments ({shown}); "
                "to use other module arguments with these weights, load them in Python with "
                "<Module>.load_from_checkpoint(path, <argument>=<value>)"
            )

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, with a ``--ckpt_path`` whose network does not fit this config's (Lightning's strict
        ``load_state_dict`` RuntimeError) reported as :class:`CkptPathError`, after removing the run directory
        this run created (its config.yaml and event file): nothing is left behind by a run that never started."""
        log_dir = getattr(self.trainer.logger, "log_dir", None) if self.trainer.logger else None
        created = _first_missing(Path(log_dir)) if log_dir and is_local_path(log_dir) else None
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as err:
            ckpt_path = self.config[subcommand].get("ckpt_path")
            if "Error(s) in loading state_dict" not in str(err) or not (ckpt_path and Path(ckpt_path).is_file()):
                raise
            if created is not None and created.is_dir():
                shutil.rmtree(created, ignore_errors=True)
            from lit_kd.checkpoints import safe_load

            state = safe_load(ckpt_path, trust=self.config[subcommand].get("weights_only") is False)[
                "state_dict"
            ]  # checked in _parse_ckpt_path
            mismatch = state_dict_mismatch(self.model.state_dict(), state, type(self.model).__name__)
            raise CkptPathError(f"--ckpt_path {ckpt_path}: {mismatch}") from err

    def _set_seed(self) -> None:
        self._random_seed = self._get(self.config, "seed_everything") is True  # replaced by the drawn seed below
        super()._set_seed()

    def _resume_ignored(self) -> tuple[str, ...]:
        """:data:`RESUME_IGNORED`, plus the seed when this run drew one (``seed_everything: true``)."""
        return RESUME_IGNORED + (("seed_everything",) if getattr(self, "_random_seed", False) else ())

    def _resume_run_dir(self, ckpt_path: str, subconfig) -> Path | None:
        """The run directory ``fit --ckpt_path`` continues in: the checkpoint's own, when it is a
        ``<experiment>/version_N/checkpoints/`` of this run's experiment whose ``config.yaml`` is this run's config
        (see the module docstring); otherwise None, and a warning that says why."""
        ckpt = Path(ckpt_path)
        if ckpt.parent.name != "checkpoints" or not is_local_path(ckpt_path):
            return None
        run_dir = ckpt.resolve().parent.parent
        if not run_dir.name.startswith("version_"):
            return None
        experiment = experiment_name(subconfig.get("config") or [])
        why = None
        if run_dir.parent.name != experiment:
            why = f"it belongs to experiment {run_dir.parent.name!r}, this run is {experiment!r}"
        elif not (run_dir / "config.yaml").is_file():
            why = f"{run_dir} has no config.yaml to show it was run with this config"
        else:
            try:
                saved = yaml.safe_load((run_dir / "config.yaml").read_text())
                parser = self._parser(self.subcommand)
                differences = set()
                # the config as given and as run (the checkpoint's hyperparameters replace the model's arguments)
                for config in (getattr(self, "_given_config", None) or subconfig, subconfig):
                    current = yaml.safe_load(parser.dump(config, skip_unset=False))
                    differences |= set(config_differences(saved, current, self._resume_ignored()))
                differences = sorted(differences)
            except Exception as err:  # an unreadable config.yaml (or one that cannot be dumped): not provably the same
                differences = [f"<cannot compare: {type(err).__name__}: {err}>"]
            if differences:
                shown = ", ".join(differences[:8]) + (f" and {len(differences) - 8} more" if len(differences) > 8 else "")
                why = f"its run was made with a different config (differs in: {shown})"
        if why:
            rank_zero_warn(
                f"fit --ckpt_path {ckpt_path}: {why}; training state is restored from it, but this run "
                f"logs to a new version directory and {run_dir} is left as it is"
            )
            return None
        if run_dir.is_relative_to(Path.cwd()):  # our runs log under the relative LOG_ROOT: keep paths comparable
            run_dir = run_dir.relative_to(Path.cwd())
        return run_dir

    def _default_logger(self) -> TensorBoardLogger:
        """TensorBoard under ``lightning_logs/<experiment>/version_N`` (``<default_root_dir>/<experiment>/version_N``
        with ``--trainer.default_root_dir``); ``fit --ckpt_path`` of a checkpoint inside such a run directory of the
        same experiment and config resumes into that same directory, so its curves and checkpoints continue there."""
        subconfig = self.config.get(self.subcommand, self.config)
        ckpt_path = subconfig.get("ckpt_path")
        if self.subcommand == "fit" and ckpt_path:
            run_dir = self._resume_run_dir(str(ckpt_path), subconfig)
            if run_dir is not None:
                return TensorBoardLogger(run_dir.parent.parent, name=run_dir.parent.name, version=run_dir.name, default_hp_metric=False)
        root = (subconfig.get("trainer") or {}).get("default_root_dir") or LOG_ROOT  # Lightning's convention when given
        return TensorBoardLogger(root, name=experiment_name(subconfig.get("config") or []), default_hp_metric=False)


class ParseOnlyCLI(LitKDCLI):
    """The CLI's parse of its arguments and nothing more: no seed drawn, no class instantiated, no subcommand run
    (``ParseOnlyCLI(args=[...]).config``); an argument the parser refuses exits as ``lit-kd`` would (SystemExit)."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def run(args: list[str] | None = None, extra_callbacks: list | None = None) -> LitKDCLI:
    """Run the CLI on ``args`` (default ``sys.argv[1:]``) and return the LightningCLI object; ``extra_callbacks``
    join the trainer's callbacks (the study runner's progress line) without entering the saved config."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    import lit_kd.callbacks
    import lit_kd.data
    import lit_kd.modules  # noqa: F401

    # args is given on purpose (main() passes its argv; the study runner its stage's), not by mistake
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    return LitKDCLI(args=args, extra_callbacks=extra_callbacks)
