"""A run's saved config (``config.yaml``): which configs count as the same run (:func:`config_differences`), the
callback that writes it atomically and never over another run's (:class:`SaveRunConfig`), and YAML syntax errors
with their line (:func:`yaml_error`)."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lit_kd.checkpoints import is_local_path


def yaml_problem(path: str | Path, err: Exception) -> str:
    """``'<path>' is not valid YAML (line L, column C): <problem>`` for a YAML parse error of the file at ``path``."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{str(path)!r} is not valid YAML{where}: {getattr(err, 'problem', None) or err}"


def yaml_error(path: str | Path) -> str | None:
    """Why the YAML file at ``path`` does not parse (:func:`yaml_problem`); None when it parses (or cannot be read:
    that is reported by whoever reads it)."""
    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        return yaml_problem(path, err)
    except (OSError, UnicodeDecodeError):
        return None
    return None


# config keys that may differ between a run and its resumption (``fit --ckpt_path``): what to resume from, how
# long to train, and what is shown; everything else (model, data, optimizer, callbacks, seed, ...) must be equal
RESUME_IGNORED = (
    "ckpt_path",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict) or (prefix and not config):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


_NO_DEFAULT = object()


def declared_default(flat: dict[str, Any], key: str) -> Any:
    """The default of the constructor argument that a dotted config key sets: ``trainer.<name>`` (``L.Trainer``) or
    ``<path>.init_args.<name>`` under ``<path>.class_path``; ``_NO_DEFAULT`` when there is none to find."""
    head, _, name = key.rpartition(".")
    if head == "trainer":
        target = L.Trainer
    elif head == "init_args" or head.endswith(".init_args"):
        class_path = flat.get(head[: -len("init_args")] + "class_path")
        module, _, attr = str(class_path).rpartition(".")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            return _NO_DEFAULT
    else:
        return _NO_DEFAULT
    try:
        parameter = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):
        return _NO_DEFAULT
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _NO_DEFAULT
    return list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default  # as YAML has it


def config_differences(saved: dict, current: dict, ignore: Iterable[str] = RESUME_IGNORED) -> list[str]:
    """The dotted keys whose values differ between two parsed configs, leaving out ``ignore`` (and keys below
    them). A key missing on one side is no difference when the other side holds null or the argument's declared
    default (:func:`declared_default`, looked up in ``current``): a newer Lightning adds trainer arguments, a newer
    lit-kd module arguments."""
    ignore = tuple(ignore)
    a, b = _flatten(saved or {}), _flatten(current or {})

    def differs(key: str) -> bool:
        if key in a and key in b:
            return a[key] != b[key]
        value = b[key] if key in b else a[key]
        return value is not None and value != declared_default(b, key)  # classes named by this run's config only

    return sorted(k for k in set(a) | set(b) if not any(k == i or k.startswith(i + ".") for i in ignore) and differs(k))


class SaveRunConfig(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` that writes ``config.yaml`` atomically and never replaces an existing one
    of a different config (:func:`config_differences` with ``ignore``): a ``fit`` fails before writing anything
    instead, and an existing file of the same config is updated (a resumed run records its budget and checkpoint).
    ``validate``/``test``/``predict`` into a directory that has a ``config.yaml`` (a fit run's, e.g. ``lit-kd test
    --config <run>/config.yaml`` with that run's logger) leave it as it is and save none."""

    def __init__(
        self,
        parser,
        config,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
        ignore: Iterable[str] = RESUME_IGNORED,
    ):
        super().__init__(parser, config, config_filename, overwrite=True, multifile=multifile, save_to_log_dir=save_to_log_dir)
        self.ignore = tuple(ignore)

    def _conflict(self, config_path: str, text: str) -> str | None:
        fs = get_filesystem(config_path)
        if not fs.isfile(config_path):
            return None
        try:
            with fs.open(config_path, "r") as f:
                saved = yaml.safe_load(f.read())
            differences = config_differences(saved, yaml.safe_load(text), self.ignore)
        except yaml.YAMLError as err:
            differences = [f"<the file does not parse: {err}>"]
        if not differences:
            return None
        shown = ", ".join(differences[:8]) + (f" and {len(differences) - 8} more" if len(differences) > 8 else "")
        return (
            f"{config_path} belongs to a run with a different config (differs in: {shown}); lit-kd does not "
            "overwrite another run's files. Log this run elsewhere (another trainer.logger save_dir/version, or "
            "the default logger, which picks a new version directory), or move that run away"
        )

    def refuse_conflict(self, trainer: L.Trainer) -> None:
        """Raise if the run directory holds a config.yaml of another config. Called by ``lit-kd fit`` right after the
        trainer is built, before Lightning creates anything there (the logger's event file comes before ``setup``)."""
        if self.save_to_log_dir and trainer.log_dir is not None:
            conflict = self._conflict(os.path.join(trainer.log_dir, self.config_filename), self.parser.dump(self.config, skip_unset=False))
            if conflict:
                raise ValueError(conflict)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir  # broadcast by Lightning
            assert log_dir is not None
            config_path = os.path.join(log_dir, self.config_filename)
            text = self.parser.dump(self.config, skip_unset=False)
            exists = get_filesystem(config_path).isfile(config_path) if trainer.is_global_zero else False
            # checked again here: a run directory written since the trainer was built
            conflict = self._conflict(config_path, text) if exists and stage == "fit" else None
            conflict = trainer.strategy.broadcast(conflict)
            if conflict:
                raise ValueError(conflict)
            if trainer.is_global_zero and exists and stage != "fit":
                rank_zero_info(f"{config_path} exists and is kept as it is; this {stage} run's config is not saved there")
            elif trainer.is_global_zero:
                if is_local_path(config_path) and not self.multifile:
                    from lit_kd.atomic import write_text

                    write_text(config_path, text)
                else:
                    get_filesystem(log_dir).makedirs(log_dir, exist_ok=True)
                    self.parser.save(self.config, config_path, skip_unset=False, overwrite=True, multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)
