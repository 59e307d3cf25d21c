"""Every command line the shipped results record (results/**/*.json and *.md, the README), and every one a fresh run
of the shipped study files records (its manifests' ``command``, and the report's ``<out>``/``<data>`` form of it),
still parses with today's parsers. Nothing runs: ``lit-kd`` goes through the CLI's own dispatch (an extra
subcommand's ``parser()``, LightningCLI's parser for fit/test/...), ``python -m`` through the module's own
``parse_args``; a command that does not parse is reported with argparse's message.

A ``--config`` the record names but this checkout lacks (``<out>/<stage>/stage_config.yaml`` of a run elsewhere) is
replaced by a stand-in config: what is checked is the command line, not the file."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from lit_kd.cli import EXTRA_COMMANDS, PREDICT_WEIGHTS, weights_predict
from lit_kd.lightning_cli import ParseOnlyCLI
from lit_kd.study.headline import between_markers
from lit_kd.study.kinds import KINDS
from lit_kd.study.kinds.base import Context
from lit_kd.study.kinds.fit import stage_config
from lit_kd.study.manifest import portable_command
from lit_kd.study.runner import resolve_settings
from lit_kd.study.spec import load_study
from tests.conftest import REPO

STAND_IN = REPO / "experiments" / "cifar_cpu" / "student_data.yaml"
SHIPPED = sorted([*(REPO / "results").rglob("*.json"), *(REPO / "results").rglob("*.md"), REPO / "README.md"])  # README: its headline
STUDIES = sorted((REPO / "experiments" / "studies").glob("*.yaml"))
PREFIXES = ("lit-kd ", "python -m ")


# ------------------------------------------------------------------------------------------------ collecting
def commands_in(text: str) -> list[str]:
    """The commands of a record (``a && b`` is two), whitespace collapsed (inline code may wrap in Markdown)."""
    text = " ".join(text.split())
    return [part for part in text.split(" && ") if part.startswith(PREFIXES)]


def markdown_commands(text: str) -> list[str]:
    """Commands in a Markdown file: the lines of fenced code blocks and the inline code spans outside them."""
    found, prose = [], []
    for i, block in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE)):
        if i % 2:  # inside a fence
            found += [c for line in block.splitlines() for c in commands_in(line)]
        else:
            prose.append(block)
    return found + [c for span in re.findall(r"`([^`]+)`", "\n".join(prose)) for c in commands_in(span)]


def json_commands(value) -> list[str]:
    """Every string of a JSON document that is a command."""
    if isinstance(value, str):
        return commands_in(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [c for item in items for c in json_commands(item)]


def recorded(path: Path) -> list[str]:
    """The commands a shipped file records (of the README, its generated headline: the rest is prose about commands)."""
    text = path.read_text(encoding="utf-8")
    if path == REPO / "README.md":
        text = between_markers(text)
    return json_commands(json.loads(text)) if path.suffix == ".json" else markdown_commands(text)


# ------------------------------------------------------------------------------------------------ replaying
class Parsed(Exception):
    """Raised by a ``python -m`` module's ``parse_args`` once it has parsed: the module does no work."""


def parse_lit_kd(args: list[str]) -> None:
    if args and (args[0] in EXTRA_COMMANDS or weights_predict(args)):
        module = PREDICT_WEIGHTS[0] if args[0] == "predict" else EXTRA_COMMANDS[args[0]][0]
        importlib.import_module(module).parser().parse_args(args[1:])
        return
    # a file this checkout lacks is a plain string to the parser: a missing config becomes the stand-in, a missing
    # checkpoint one fixed name, so that records differing only in such paths are parsed once
    missing = {"--config": str(STAND_IN), "-c": str(STAND_IN), "--ckpt_path": "missing.ckpt"}
    given = [missing[args[i - 1]] if i and args[i - 1] in missing and not Path(a).is_file() else a for i, a in enumerate(args)]
    lightning_parse(tuple(given))


@functools.cache
def lightning_parser():
    """The parser of ``lit-kd fit/validate/test/predict`` (LightningCLI's own, as ``lit-kd`` builds it)."""
    return ParseOnlyCLI(args=["fit", "--config", str(STAND_IN)]).parser


@functools.cache
def lightning_parse(args: tuple[str, ...]) -> None:
    lightning_parser().parse_args(list(args))  # as LightningCLI.parse_arguments does


def parse_module(module: str, args: list[str]) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    saved = sys.argv
    sys.argv, argparse.ArgumentParser.parse_args = [module, *args], parse_then_stop
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        raise AssertionError(f"python -m {module} finished without parsing arguments")  # it did work it should not have
    except Parsed:
        pass
    finally:
        sys.argv, argparse.ArgumentParser.parse_args = saved, original


def replay(command: str) -> str | None:
    """argparse's message for a command whose arguments do not parse, else None."""
    argv = shlex.split(command, comments=True)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            if argv[0] == "lit-kd":
                parse_lit_kd(argv[1:])
            else:
                parse_module(argv[2], argv[3:])
    except SystemExit as exit:
        if exit.code not in (0, None):
            lines = [line.strip() for line in stderr.getvalue().splitlines() if line.strip()]
            return next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else str(exit.code))
    return None


def failures(commands: dict[str, list[str]]) -> list[str]:
    return [f"{where}: {command}\n    -> {message}" for where, cmds in commands.items() for command in cmds if (message := replay(command))]


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("lit-kd classify --ckpt <out>/teacher/model.ckpt --test-set <data>", "unrecognized arguments: --test-set"),
        ("lit-kd ptq --ckpt m.ckpt --bits 8 --data-dir <data> --out p.json", "unrecognized arguments: --data-dir"),
        (f"lit-kd fit --config {STAND_IN} --trainer.max_epochz 3", "max_epochz"),
        ("lit-kd test --config <out>/s/run/config.yaml --ckpt_file best.ckpt", "ckpt_file"),
        ("python -m lit_kd.study.headline results.json --readmee README.md", "unrecognized arguments: --readmee"),
    ],
)
def test_replay_reports_what_the_parser_refuses(command, message):
    assert message in (replay(command) or "")


def test_replay_accepts_each_kind_of_command_without_running_it(tmp_path):
    readme = tmp_path / "README.md"  # headline --readme would rewrite it, were the module to run
    assert replay(f"python -m lit_kd.study.headline {tmp_path}/missing.json --readme {readme}") is None
    assert not readme.exists()
    assert replay(f"lit-kd fit --config {STAND_IN} --trainer.max_epochs 3") is None
    assert replay("lit-kd test --config <out>/s/run/config.yaml --ckpt_path <out>/s/run/checkpoints/best.ckpt") is None
    assert replay("lit-kd predict -w weights.pt a.png --topk 3") is None


def test_commands_are_found_in_tables_code_spans_fences_and_json():
    markdown = "| s | `lit-kd fit --config a && lit-kd test --config b` |\n```bash\nlit-kd study x.yaml  # run\n```\n`python -m m\n--x`"
    found = ["lit-kd study x.yaml # run", "lit-kd fit --config a", "lit-kd test --config b", "python -m m --x"]
    assert markdown_commands(markdown) == found
    assert json_commands({"a": [{"command": "lit-kd ptq --bits 8"}, "best of x"], "b": 3}) == ["lit-kd ptq --bits 8"]


def test_every_command_the_shipped_results_record_parses():
    commands = {str(p.relative_to(REPO)): recorded(p) for p in SHIPPED}
    assert len(commands["results/cifar_cpu/results.json"]) >= 36 and len(commands["results/cifar_cpu/report.md"]) >= 36
    assert commands["results/resnet101/report.md"] and commands["README.md"]
    problems = failures(commands)
    assert not problems, f"{len(problems)} recorded commands do not parse:\n" + "\n".join(problems)


@pytest.mark.parametrize("study_file", STUDIES, ids=lambda p: p.stem)
def test_every_command_a_fresh_run_records_parses(study_file, tmp_path):
    """The commands a run of the shipped study file writes into its manifests, and the report's form of them; a fit
    stage gets its stage config written where the command names it, as the run writes it before training."""
    study = load_study(study_file)
    data, out = str(tmp_path / "cifar10-png.zip"), tmp_path / "out"
    ctx = Context(study, out, data)
    commands = {}
    for stage in study.stages.values():
        settings = resolve_settings(study, stage, {}, placeholder=True)
        command = KINDS[stage.kind].command(ctx, stage, settings)
        if command is None:
            continue
        if stage.kind == "fit" and not settings["fit"].startswith("<"):  # run/config.yaml: Lightning's, at fit time
            (out / stage.name).mkdir(parents=True)
            (out / stage.name / "stage_config.yaml").write_text(yaml.safe_dump(stage_config(ctx, stage, settings)))
        commands[f"{stage.name} (manifest)"] = commands_in(command)
        commands[f"{stage.name} (report)"] = commands_in(portable_command(command, out, data, "<data>"))
    assert len(commands) >= 4
    problems = failures(commands)
    assert not problems, f"{study_file.name}: {len(problems)} commands do not parse:\n" + "\n".join(problems)
