"""What a stage kind is: its study-file schema, its executor, its share of the report and of the headline.

A kind is one object registered in :mod:`lit_kd.study.kinds`; the spec, the runner, the report and the headline ask
the registry, so adding a kind is adding one file (and its test). Example, a kind that counts the stages before it::

    class Count(Kind):
        name, outputs = "count", ("json",)

        def run(self, ctx, stage, settings, label):
            path = ctx.stage_dir(stage.name) / "count.json"
            write_json(path, {"stages": len(ctx.manifests)})
            return {"json": str(path)}, {"stages": len(ctx.manifests)}, "count"

    KINDS["count"] = Count()   # a study file may now say `mine: {count: {}}`

Module imports of a kind file stay light (no torch): the spec imports every kind to check a study file fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_kd.study.spec import Stage, Study, StudyError

if TYPE_CHECKING:
    from lit_kd.study.render import Section
    from lit_kd.study.results import Results

RUN_DIR = "run"  # the Lightning run of a fit stage: <out>/<stage>/run/{checkpoints,events,config.yaml}
Row = tuple[str, str, str]  # a headline row: what, result, compared with

# Where a kind's report sections go (sections are sorted by these, stably): the Study intro is 0, Key results 5,
# Conclusions 95, Deviations from the task 96, Commands 100; a kind of one's own can take any number in between.
MODELS, DISTILLATION, COMPARISONS, CURVES, EXAMPLES, PTQ, QAT, EXPORTS, SPEED, SPARSITY = 10, 20, 25, 30, 40, 50, 60, 70, 80, 90
# Where a kind's headline rows go: teacher, students, PTQ, mixed precision, QAT, pruned models, speed.
TEACHER, STUDENTS, PTQ_ROWS, MIXED_ROWS, QAT_ROWS, SPARSE_ROWS, SPEED_ROWS = 10, 20, 30, 40, 50, 60, 70


@dataclass
class Context:
    """What an executor gets besides its stage: the study, its folder, the data, the finished stages' manifests."""

    study: Study
    out: Path
    data: str
    progress: Callable[[str], None] = print
    manifests: dict[str, dict] = field(default_factory=dict)  # finished stages' manifests, by name
    resume: bool = False  # fit stages: continue from run/checkpoints/last.ckpt

    def stage_dir(self, name: str) -> Path:
        return self.out / name


@dataclass
class ReportInput:
    """What a kind's report sections are made from; ``results`` is the typed results.json being filled."""

    study: Study
    out: Path
    manifests: dict[str, dict]
    settings: dict  # the report stage's own settings
    results: Results
    images: Any = None  # the example images (N x 3 x H x W in [0, 1]) when an examples stage ran
    curves: dict[str, dict] = field(default_factory=dict)  # fit stage -> TensorBoard curves

    @property
    def fig_dir(self) -> Path:
        return self.out / "report_files"

    def of_kind(self, *kinds: str) -> dict[str, dict]:
        return {n: m for n, m in self.manifests.items() if m["kind"] in kinds}


class Kind:
    """A stage kind. Subclasses set ``name`` and ``outputs`` (the first is the output every run must produce) and
    override what they need; the defaults describe a step that takes a mapping of flags."""

    name: str = ""
    outputs: tuple[str, ...] = ()
    keys: frozenset[str] = frozenset()  # allowed keys of a stage besides the kind's own and ``description``
    reads_manifests = False  # consumes the outputs of every stage it needs (not only files named in its settings)
    trained = False  # produces a trained network (its stage shows in the models table and the examples)
    needs_key = ""  # the study-file key that names its implicit needs, in messages (default: the kind's name)

    # ---------------------------------------------------------------- study file
    def parse(self, name: str, spec: dict, fit_overrides: dict) -> list[Stage]:
        """The stage(s) a study-file entry becomes, its keys checked; a step takes a mapping of flags."""
        if not isinstance(spec[self.name] or {}, dict):
            raise StudyError(f"stage {name!r}: {self.name} takes a mapping of flags, got {spec[self.name]!r}")
        return [Stage(name, self.name, spec)]

    def apply_protocol(self, stage: Stage, protocol: str, validation_images: int) -> None:
        """Set what the study's protocol (``held_out`` or ``seed``) means for this stage in ``stage.spec`` (so that
        it is part of the stage's inputs); called once per stage after parsing. Under ``seed`` a kind adds nothing:
        the stages of a study written before protocols existed keep their inputs."""

    def settings(self, stage: Stage) -> dict[str, Any]:
        """The stage's settings as ``key -> value`` (override keys, or step flags), for references and messages."""
        return {f"{self.name}.{k}": v for k, v in (stage.spec[self.name] or {}).items()}

    def implicit_needs(self, stage: Stage, stages: dict[str, Stage]) -> list[str]:
        """Stages this one needs beyond the ``${stage.output}`` references of its settings."""
        return []

    def consumed_stages(self, stage: Stage) -> list[str]:
        """Stages (or seed groups) named outside ``${...}`` references whose removal (``--without``) removes this one."""
        return []

    def check_files(self, study: Study, stage: Stage) -> None:
        """Files the stage names that must exist before the study starts."""

    # ---------------------------------------------------------------- running
    def command(self, ctx: Context, stage: Stage, settings: dict) -> str | None:
        """The command line a run of the stage records in its manifest (``lit-kd ...``), or None for a kind whose
        record is a description, not a command; ``tests/test_recorded_commands.py`` replays its parsing."""
        return None

    def run(self, ctx: Context, stage: Stage, settings: dict, label: str) -> tuple[dict, dict, str]:
        """Run the stage under ``ctx.stage_dir(stage.name)``: ``(outputs, metrics, command)`` for its manifest."""
        raise NotImplementedError

    def consumed_files(self, stage: Stage, settings: Any, manifests: dict[str, dict]) -> list[str]:
        """The files the stage reads from earlier stages (hashed into its inputs): every resolved setting that is an
        existing file, and with ``reads_manifests`` the outputs of the stages it needs."""
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
        if self.reads_manifests:
            for name in stage.needs:
                files += [v for k, v in manifests[name]["outputs"].items() if k in ("ckpt", "int8", "json", "onnx")]
        return sorted(set(files))

    # ---------------------------------------------------------------- report and headline
    def report(self, rep: ReportInput) -> list[tuple[int, Section]]:
        """``(position, section)`` pairs of the report, each filled from ``rep.manifests``; a kind also puts its
        typed records into ``rep.results``."""
        return []

    def key_notes(self, rep: ReportInput) -> list[str]:
        """Lines under the report's key results, after every kind's sections are built."""
        return []

    def headline_rows(self, results: Results) -> list[tuple[int, Row]]:
        """``(position, row)`` pairs of the README headline and the report's key results, from typed results."""
        return []
