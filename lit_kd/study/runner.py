"""Plan and run a study: skip finished stages whose inputs are unchanged, resume interrupted training stages from
``last.ckpt``, rerun changed stages and everything after them.

The plan is decided stage by stage in execution order. A stage runs when it never finished, when the hash of its
inputs differs from its manifest's, when a stage it needs runs, or when ``--only``/``--from`` asks for it; a fit
stage that was interrupted with the same inputs resumes. Hashes are taken again right before a stage runs, once
what it consumes exists.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from lit_kd.atomic import write_text
from lit_kd.study.kinds import KINDS
from lit_kd.study.kinds.base import RUN_DIR, Context
from lit_kd.study.manifest import FileHashes, StageClock, environment, input_hash, read_manifest, write_manifest
from lit_kd.study.spec import Stage, Study, StudyError, substitute


@dataclass
class Step:
    stage: Stage
    action: str  # "run", "resume" or "skip"
    reason: str


def resolve_settings(study: Study, stage: Stage, manifests: dict[str, dict], placeholder: bool = False) -> dict:
    """The stage's settings with ``${here}`` and ``${stage.output}`` replaced; with ``placeholder``, outputs of
    stages that have not run yet become a path-like placeholder (for validating configs before anything runs)."""

    def lookup(name: str) -> Any:
        if name == "here":
            return str(study.here)
        ref_stage, output = name.rsplit(".", 1)
        manifest = manifests.get(ref_stage)
        if manifest is None or manifest.get("status") != "done":
            if placeholder:
                return f"<{ref_stage}.{output}>"
            raise StudyError(f"stage {stage.name!r}: needs {ref_stage!r}, which has not finished")
        if output not in manifest["outputs"]:
            raise StudyError(
                f"stage {stage.name!r}: ${{{name}}}: stage {ref_stage!r} produced no {output!r} (it has {sorted(manifest['outputs'])})"
            )
        return manifest["outputs"][output]

    settings = substitute(dict(stage.spec), lookup)
    if stage.kind == "weights":
        settings["weights"] = str((study.here / settings["weights"]).resolve())
    return settings


def stage_inputs(study: Study, stage: Stage, manifests: dict[str, dict], data: str, hashes: FileHashes) -> dict:
    settings = resolve_settings(study, stage, manifests)
    payload = {"kind": stage.kind, "settings": settings, "data": data}
    if stage.kind == "fit":
        payload["config_text"] = (study.here / settings["fit"]).read_text()
    if stage.kind == "report" and study.deviations:  # the report lists them: a changed list rewrites it
        payload["deviations"] = study.deviations
    payload["consumed"] = {path: hashes(path) for path in KINDS[stage.kind].consumed_files(stage, settings, manifests)}
    return {"settings": settings, "payload": payload, "hash": input_hash(payload)}


def changed(old: dict | None, new: dict) -> str:
    """Which input of a stage changed, in words."""
    if not old or "inputs" not in old:
        return "inputs changed"
    before = old["inputs"]
    if before.get("settings") != new["payload"]["settings"]:
        return "its settings changed"
    if before.get("config_text") != new["payload"].get("config_text"):
        return "its config file changed"
    for path, digest in new["payload"]["consumed"].items():
        if before.get("consumed", {}).get(path) != digest:
            return f"{Path(path).name} changed"
    return "inputs changed"


def plan(
    study: Study, out: Path, data: str, hashes: FileHashes, force: set[str], selected: set[str] | None, resumable: set[str] = frozenset()
) -> list[Step]:
    """Run, resume or skip for every stage. ``force``: stages to run whatever their state (``--only``/``--from``);
    those also in ``resumable`` (``--only``) still resume when interrupted with unchanged inputs, so that naming a
    stage never throws away its training."""
    steps: list[Step] = []
    will_run: set[str] = set()
    manifests = {name: read_manifest(out / name) for name in study.stages}
    done = {n: m for n, m in manifests.items() if m and m.get("status") == "done"}
    for stage in study.stages.values():
        manifest = manifests[stage.name]
        if selected is not None and stage.name not in selected:
            steps.append(Step(stage, "skip", "finished" if stage.name in done else "not selected"))
            continue
        missing = [n for n in stage.needs if n not in will_run and n not in done]
        if missing:
            raise StudyError(
                f"stage {stage.name!r} needs {', '.join(missing)}, which has not finished and is not selected to run: "
                "run the study without --only/--from first"
            )
        upstream = [n for n in stage.needs if n in will_run]
        if upstream:
            action, reason = "run", "asked for (--only/--from)" if stage.name in force else f"{upstream[0]} runs before it"
        else:
            inputs = stage_inputs(study, stage, done, data, hashes)
            status = (manifest or {}).get("status")
            same = manifest is not None and manifest.get("input_hash") == inputs["hash"]
            last = out / stage.name / RUN_DIR / "checkpoints" / "last.ckpt"
            interrupted = status != "done" and same and stage.kind == "fit" and last.is_file()
            if stage.name in force and not (stage.name in resumable and interrupted):
                action, reason = "run", "asked for (--only/--from)"
            elif status == "done" and same:
                action, reason = "skip", "finished, inputs unchanged"
            elif interrupted:
                action, reason = "resume", f"interrupted ({status}); continues from last.ckpt"
            elif manifest is None:
                action, reason = "run", "never run"
            elif same:
                action, reason = "run", f"{status}; no last.ckpt to resume from" if stage.kind == "fit" else f"previous attempt {status}"
            else:
                action, reason = "run", changed(manifest, inputs)
        if action != "skip":
            will_run.add(stage.name)
        steps.append(Step(stage, action, reason))
    return steps


def validate_fit_configs(study: Study, out: Path, data: str, steps: list[Step]) -> None:
    """Parse every fit stage that will run with LightningCLI's own parser (nothing instantiated), so a bad override
    or a typo in a config fails before the first stage starts."""
    from lit_kd.lightning_cli import ParseOnlyCLI
    from lit_kd.study.kinds.fit import stage_config

    manifests = {s.stage.name: read_manifest(out / s.stage.name) for s in steps}
    for step in steps:
        if step.action == "skip" or step.stage.kind != "fit":
            continue
        settings = resolve_settings(study, step.stage, manifests, placeholder=True)
        if settings["fit"].startswith("<"):
            continue  # the config is another stage's output: it parsed when that stage ran
        ctx = Context(study, out, data)
        config = stage_config(ctx, step.stage, settings)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                ParseOnlyCLI(args=["--config", _yaml_arg(config)], run=False)
        except SystemExit:
            detail = [line for line in stderr.getvalue().strip().splitlines() if line.strip()]
            raise StudyError(
                f"stage {step.stage.name!r}: the config {step.stage.spec['fit']} with the study's overrides "
                f"does not parse: {' '.join(detail[-3:])}"
            ) from None


def _yaml_arg(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config)


@contextlib.contextmanager
def torch_process_state():
    """Give the next stage the process state this one found: ``Trainer(deterministic=True)`` leaves
    deterministic algorithms on (quantized kernels then refuse to run), benchmarks pin threads."""
    import torch

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.backends.quantized.engine,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.set_num_threads(saved[2])
        torch.backends.quantized.engine = saved[3]
        torch.backends.cudnn.benchmark = saved[4]


def clear_stage_dir(stage_dir: Path) -> None:
    """Empty a stage's directory for a rerun, except ``*.cache.json`` files: measurements keyed by everything they
    depend on (e.g. the mixed-precision search's), which their reader checks and an interrupted stage resumes from."""
    for entry in stage_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif not entry.name.endswith(".cache.json"):
            entry.unlink()


def exit_message(err: BaseException) -> str:
    """What a failed stage reports: the exception, or a subcommand's own error line (``SystemExit("lit-kd ptq:
    error: ...")``), or its exit status."""
    from lit_kd.study.kinds.step import StepError

    if isinstance(err, StepError):  # a ptq/export/bench stage's one line, as its command reports it
        return str(err)
    if not isinstance(err, SystemExit):
        return f"{type(err).__name__}: {err}"
    return err.code if isinstance(err.code, str) else f"exited with status {err.code}"


class Runner:
    def __init__(self, study: Study, out: Path, data: str, console: Console | None = None):
        self.study, self.out, self.data = study, out, data
        self.console = console or Console()
        self.hashes = FileHashes(out / ".hashes.json")

    def plan(self, only: list[str] | None = None, start: str | None = None) -> list[Step]:
        names = set(self.study.stages) | set(self.study.groups)
        for name in [*(only or []), *([start] if start else [])]:
            if name not in names:
                raise StudyError(f"--only/--from: unknown stage {name!r} (stages: {', '.join(self.study.stages)})")
        expand = lambda n: set(self.study.groups.get(n, [n]))
        force: set[str] = set()
        selected = None
        if only:
            selected = set().union(*(expand(n) for n in only))
            force |= selected
        force_from: set[str] = set()
        if start:
            force_from = self.study.downstream(expand(start))
            force |= force_from
            selected = (selected or set()) | force
        return plan(self.study, self.out, self.data, self.hashes, force, selected, resumable=selected - force_from if only else set())

    def print_plan(self, steps: list[Step]) -> None:
        from rich.table import Table

        table = Table(title=f"Plan of {self.study.path.name} in {self.out}")
        for col in ("#", "stage", "kind", "action", "why"):
            table.add_column(col)
        style = {"run": "bold yellow", "resume": "bold cyan", "skip": "green"}
        for i, s in enumerate(steps, 1):
            table.add_row(str(i), s.stage.name, s.stage.kind, f"[{style[s.action]}]{s.action}[/]", s.reason)
        self.console.print(table)

    def validate(self, steps: list[Step]) -> None:
        validate_fit_configs(self.study, self.out, self.data, steps)

    def run(self, steps: list[Step], resume_command: str) -> int:
        manifests = {s.stage.name: read_manifest(self.out / s.stage.name) for s in steps}
        ctx = Context(
            self.study,
            self.out,
            self.data,
            progress=self._progress,
            manifests={n: m for n, m in manifests.items() if m and m.get("status") == "done"},
        )
        total, started = len(steps), time.perf_counter()
        for index, step in enumerate(steps, 1):
            label = f"[{index}/{total}] {step.stage.name}"
            if step.action == "skip":
                self.console.print(f"[green]{label}[/]: skip ({step.reason})")
                continue
            self.console.print(f"[bold]{label}[/]: {step.action} {step.stage.kind} ({step.reason})")
            try:
                ctx.manifests[step.stage.name] = self._run_stage(ctx, step, label, manifests.get(step.stage.name))
            except SIGTERMException:  # Lightning turns SIGTERM during training into this exception
                self._fail(step, "stopped by SIGTERM", status="stopped")
                Console(stderr=True, width=self.console.width).print(
                    f"[bold yellow]study stopped by SIGTERM at stage {step.stage.name!r} ({index}/{total})[/]; "
                    f"resume with: {resume_command}"
                )
                return 143
            except (Exception, SystemExit) as err:  # a step's usage error exits; the study reports it as the stage's failure
                message = exit_message(err)
                first_line = message.splitlines()[0] if message else ""
                error_file = self._fail(step, message)
                Console(stderr=True, width=self.console.width).print(
                    f"[bold red]study stopped at stage {step.stage.name!r} ({index}/{total}):[/] {first_line}"
                    f" (traceback: {error_file})\nfix the cause, then resume with: {resume_command}"
                )
                return 1
            finally:
                self.hashes.save()
        self.console.print(f"[bold green]study finished[/] in {time.perf_counter() - started:.1f} s: {self.out}")
        report = next((m for m in ctx.manifests.values() if m.get("kind") == "report"), None)
        if report:
            self.console.print("report: " + ", ".join(report["metrics"]["files"].values()))
        return 0

    def _run_stage(self, ctx: Context, step: Step, label: str, previous: dict | None) -> dict:
        stage, stage_dir = step.stage, self.out / step.stage.name
        if step.action == "run" and stage_dir.exists():
            clear_stage_dir(stage_dir)  # the study owns <out>/<stage>: a rerun starts clean, keyed caches aside
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "error.txt").unlink(missing_ok=True)  # a resumed stage's earlier failure is history
        inputs = stage_inputs(self.study, stage, ctx.manifests, self.data, self.hashes)
        base_wall = (previous or {}).get("wall_s", 0.0) if step.action == "resume" else 0.0
        manifest = {
            "stage": stage.name,
            "kind": stage.kind,
            "group": stage.group,
            "seed": stage.seed,
            "status": "running",
            "input_hash": inputs["hash"],
            "inputs": inputs["payload"],
            "needs": stage.needs,
            "outputs": {},
            "metrics": {},
            "command": None,
            "wall_s": base_wall,
            "attempts": ((previous or {}).get("attempts", 0) if step.action == "resume" else 0) + 1,  # a rerun starts over
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": environment(),
        }
        write_manifest(stage_dir, manifest)
        ctx.resume = step.action == "resume"
        with StageClock(stage_dir, manifest, base_wall) as clock, torch_process_state():
            outputs, metrics, command = KINDS[stage.kind].run(ctx, stage, inputs["settings"], label)
        main_output = KINDS[stage.kind].outputs[0]
        if main_output not in outputs:
            raise RuntimeError(f"stage {stage.name!r} finished without its {main_output!r} output")
        if stage.kind == "fit":  # the config as it ran: the study's overrides, data source and logger applied
            import yaml

            manifest["resolved_config"] = yaml.safe_load(Path(outputs["config"]).read_text())
        manifest.update(
            status="done",
            outputs=outputs,
            metrics=metrics,
            command=command,
            wall_s=clock.seconds(),
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        write_manifest(stage_dir, manifest)
        attempts = manifest["attempts"]
        self.console.print(
            f"[bold]{label}[/]: done in {manifest['wall_s'] - base_wall:.1f} s"
            + (f" ({manifest['wall_s']:.1f} s over {attempts} attempts)" if attempts > 1 else "")
            + (f", test accuracy {metrics['test_acc']:.4f}" if isinstance(metrics.get("test_acc"), float) else "")
        )
        return manifest

    def _fail(self, step: Step, message: str, status: str = "failed") -> Path | None:
        """Mark the stage failed (or stopped) in its manifest; a failure's whole traceback goes to ``error.txt``
        in the stage's folder (returned), its last 4,000 characters to the manifest."""
        stage_dir = self.out / step.stage.name
        manifest = read_manifest(stage_dir) or {"stage": step.stage.name, "kind": step.stage.kind}
        trace = traceback.format_exc() if status == "failed" else None
        manifest.update(status=status, error=message, traceback=trace[-4000:] if trace else None)
        write_manifest(stage_dir, manifest)
        if trace is None:
            return None
        stage_dir.mkdir(parents=True, exist_ok=True)
        return write_text(stage_dir / "error.txt", trace)

    def _progress(self, line: str) -> None:
        self.console.print(line)
