"""What the ptq, export and bench kinds share: a stage calls the library function behind ``lit-kd <kind>`` with its
settings (named as that command's flags, ``bits: [8, 4]`` for ``--bits 8 4``), checked as the command checks its
arguments, the study's data unless the settings name their own, and its output in the stage folder (as are output
folders given as relative paths, e.g. the ptq kind's ``export_dir: models``). A setting the command would refuse, or
an input that cannot be used, is a :class:`StepError` whose message is the command's own error line; the manifest
records the equivalent command line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import ClassVar

from lit_kd.study.kinds.base import Context, Kind
from lit_kd.study.spec import Stage


class StepError(Exception):
    """A ptq/export/bench stage that cannot run on its settings or inputs."""


def split(kind: str, settings: dict, required: tuple[str, ...], allowed: list[str]) -> dict:
    """The settings, checked for required and unknown names (as argparse would report them)."""
    missing = [name for name in required if not settings.get(name)]
    if missing:
        raise StepError(f"lit-kd {kind}: error: the following arguments are required: {', '.join('--' + m for m in missing)}")
    unknown = [name for name in settings if name not in (*required, *allowed)]
    if unknown:
        raise StepError(f"lit-kd {kind}: error: unrecognized arguments: {' '.join('--' + u.replace('_', '-') for u in unknown)}")
    return dict(settings)


def positive(kind: str, settings: dict, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = settings.get(name)
        if value is not None and value < minimum:
            raise StepError(f"lit-kd {kind}: error: --{name.replace('_', '-')} must be >= {minimum}, got {value}")


def float_network(kind: str, ckpt: str, advice: str):
    """The float network of ``ckpt``, or the command's error line (a QAT checkpoint gets ``advice``)."""
    from lit_kd.artifacts import ModelFileError, QatCheckpointError, load_model

    prog = f"lit-kd {kind}"
    try:
        return load_model(ckpt, kinds=("float",))[0]
    except QatCheckpointError as err:
        raise StepError(f"{prog}: error: {err.advice_line(prog, advice)}") from None
    except ModelFileError as err:
        raise StepError(f"{prog}: error: {err.line()}") from None


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


class StepKind(Kind):
    """A kind run by a library function over the command's flags. Subclasses set ``out_file`` (the output file,
    passed as ``out``), ``files`` (output name -> file in the stage folder) and ``uses_data``, and implement
    :meth:`call`."""

    out_file = ""
    files: ClassVar[dict[str, str]] = {}
    dirs: ClassVar[tuple[str, ...]] = ()  # settings naming output folders: a relative one lies in the stage folder
    uses_data = True

    def call(self, settings: dict) -> dict:
        """The library function behind ``lit-kd <kind>``: its result is the stage's metrics."""
        raise NotImplementedError

    def step_settings(self, ctx: Context, stage: Stage, settings: dict) -> dict:
        """The command's flags: the stage's settings, the study's data unless they name their own, the output file."""
        step_settings = dict(settings[self.name] or {})
        if self.uses_data and "data" not in step_settings:
            step_settings["data"] = ctx.data
        stage_dir = ctx.stage_dir(stage.name)
        step_settings["out"] = str(stage_dir / self.out_file)
        for name in self.dirs:  # a relative output folder lies in the stage's folder
            if step_settings.get(name) and not Path(step_settings[name]).is_absolute():
                step_settings[name] = str(stage_dir / step_settings[name])
        return step_settings

    def command(self, ctx: Context, stage: Stage, settings: dict) -> str:
        return f"lit-kd {self.name} " + shlex.join(flags(self.step_settings(ctx, stage, settings)))

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        stage_dir = ctx.stage_dir(stage.name)
        step_settings = self.step_settings(ctx, stage, settings)
        command = self.command(ctx, stage, settings)
        ctx.progress(f"{label}: {command}")
        result = self.call(step_settings)
        json.dumps(result, default=str)  # fail here, not in the manifest, if a result cannot be recorded
        return {k: str(stage_dir / v) for k, v in self.files.items()}, result, command
