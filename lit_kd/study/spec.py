"""A study file: named stages, what each consumes from earlier ones, checked as a whole before anything runs.

    description: what the study is for
    protocol: held_out                                  # or seed (see PROTOCOLS); held_out is the default
    validation_images: 5000                             # held_out: training images held out as validation
    deviations: [teacher trained from scratch (no ImageNet weights here)]   # listed in the report
    fit_overrides: {data.init_args.train_size: 5000}    # applied to every fit stage, before its own overrides
    stages:
      teacher:  {weights: ../../weights/resnet20.pt, model: resnet20}       # shipped weights stand in for training
      student:  {fit: ../cifar_cpu/student.yaml, seeds: [0, 1]}            # LightningCLI fit + test
      kd:       {fit: ../cifar_cpu/kd_logits.yaml, overrides: {model.init_args.teacher_ckpt: "${teacher.ckpt}"}}
      best:     {select: [student, kd]}                                     # the best of these (held-out accuracy)
      ptq:      {ptq: {ckpt: "${teacher.ckpt}", bits: [8, 4]}}              # a step: lit-kd ptq with these flags
      report:   {report: {}}

Conventions: paths are relative to the study file; ``${here}`` is the study file's folder; ``${stage.output}``
names an output of an earlier stage (each kind's ``outputs``, :mod:`lit_kd.study.kinds`); override keys are dotted
paths into the stage's config (``trainer.callbacks.0.init_args.init_ckpt``; list items by index). A stage with ``seeds`` expands into
``<stage>.seed<N>`` stages (``seed_everything`` set), and ``select`` may name the group.

The protocol decides what every choice reads (each kind applies it to its stages: :meth:`Kind.apply_protocol`).
``held_out``: ``validation_images`` stratified training images are the validation set of every fit stage
(``data.init_args.val_split``, unless ``fit_overrides`` or the stage's overrides set it), so the plateau rule and
``best.ckpt`` read them; a fit stage without a stopping rule reports its last epoch; ``select`` compares validation
accuracy; a ptq stage evaluates every configuration on the same held-out images and its headline picks by them.
``seed``: the configs as they are (the shipped ones validate on the test set) and every choice reads test accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS = {
    "held_out": "{n:,} training images held out as validation drive every choice (plateau rule, checkpoint, select, "
    "PTQ and mixed-precision configuration); fixed-length schedules report their last epoch; the test set is read once "
    "per final model",
    "seed": "as the task prescribes: Adam without a scheduler, the plateau rule, the best checkpoint and every choice "
    "read test accuracy, so the reported test accuracies are optimistic by that selection",
}
VALIDATION_IMAGES = 5000  # held_out: the default size of the validation set held out from the training images
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


class StudyError(ValueError):
    """A study file that cannot run; the message names the stage and the key."""


@dataclass
class Stage:
    name: str
    kind: str
    spec: dict[str, Any]  # the stage's own settings: config + overrides (fit), flags (steps), names (select)
    needs: list[str] = field(default_factory=list)  # stages whose outputs this one consumes, in file order
    group: str | None = None  # the seeded stage this one was expanded from
    seed: int | None = None


@dataclass
class Study:
    path: Path
    description: str
    stages: dict[str, Stage]  # in execution order (a topological order that keeps the file's order where it can)
    groups: dict[str, list[str]]  # seeded stage -> its expanded stages
    protocol: str = "held_out"  # "held_out" or "seed" (PROTOCOLS)
    validation_images: int = VALIDATION_IMAGES  # held_out: the training images held out as validation

    def protocol_text(self) -> str:
        """The protocol and what it means, in one sentence."""
        return f"Protocol `{self.protocol}`: " + PROTOCOLS[self.protocol].format(n=self.validation_images) + "."

    deviations: list[str] = field(default_factory=list)  # what the study does differently from the task it reproduces

    @property
    def here(self) -> Path:
        return self.path.parent

    def downstream(self, names: set[str]) -> set[str]:
        """``names`` and every stage that depends on one of them, directly or not."""
        out = set(names)
        for stage in self.stages.values():  # execution order: dependencies come first
            if any(n in out for n in stage.needs):
                out.add(stage.name)
        return out

    def upstream(self, names: set[str]) -> set[str]:
        out, todo = set(), list(names)
        while todo:
            for need in self.stages[todo.pop()].needs:
                if need not in out:
                    out.add(need)
                    todo.append(need)
        return out


def references(value: Any) -> list[tuple[str, str]]:
    """Every ``(stage, output)`` named by ``${stage.output}`` inside ``value`` (nested lists and dicts too)."""
    if isinstance(value, str):
        return [tuple(m.rsplit(".", 1)) if "." in m else (m, "") for m in REFERENCE.findall(value) if m != "here"]
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def substitute(value: Any, lookup) -> Any:
    """``value`` with every ``${...}`` replaced by ``lookup(name)``; a string that is one reference keeps its type."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return lookup(whole.group(1))
        return REFERENCE.sub(lambda m: str(lookup(m.group(1))), value)
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    return value


def load_study(path: str | Path, use: dict[str, str] | None = None, without: list[str] | None = None) -> Study:
    """Read and check a study file: kinds, names, references, cycles, files. Raises :class:`StudyError`.

    ``use``: stage name -> weights file (a plain state dict) that stands in for that fit stage: the stage becomes a
    ``weights`` stage of the architecture its config names, so the stages after it start from those weights.
    ``without``: stages to leave out (e.g. the sparse ones where the ``sparse`` extra is not installed), together with
    every stage that consumes their outputs (``${stage.output}`` or ``select``); ``examples`` and ``report``, which read
    whatever ran before them, stay."""
    path = Path(path).resolve()
    raw = load_yaml(path, f"study file {str(path)!r} does not exist", f"study file {path}: not valid YAML")
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise StudyError(f"study file {path}: expected a mapping with a non-empty 'stages' mapping")
    top = ("description", "protocol", "validation_images", "deviations", "fit_overrides", "stages")
    unknown = set(raw) - set(top)
    if unknown:
        raise StudyError(f"study file {path}: unknown top-level keys {sorted(unknown)} (expected {', '.join(top)})")
    protocol, validation_images = _protocol(path, raw)
    deviations = raw.get("deviations") or []
    if not isinstance(deviations, list) or not all(isinstance(d, str) and d.strip() for d in deviations):
        raise StudyError(
            f"study file {path}: deviations must be a list of sentences (how the study departs from its task), got {deviations!r}"
        )
    fit_overrides = raw.get("fit_overrides") or {}
    if not isinstance(fit_overrides, dict):
        raise StudyError(f"study file {path}: fit_overrides must be a mapping of dotted keys to values")

    stages: dict[str, Stage] = {}
    groups: dict[str, list[str]] = {}
    for name, body in raw["stages"].items():
        for stage in _parse_stage(path, str(name), body, fit_overrides):
            if stage.name in stages:
                raise StudyError(f"stage {stage.name!r}: defined twice")
            stages[stage.name] = stage
            if stage.group:
                groups.setdefault(stage.group, []).append(stage.name)
    for name, weights in (use or {}).items():
        stages[name] = _stand_in(path, stages, name, weights)
    for stage in stages.values():
        _kinds()[stage.kind].apply_protocol(stage, protocol, validation_images)
    if without:
        stages = _without(stages, groups, without)
        groups = {g: [m for m in members if m in stages] for g, members in groups.items() if any(m in stages for m in members)}
    for stage in stages.values():
        stage.needs = _needs(stage, stages, groups)
    study = Study(path, str(raw.get("description") or ""), _ordered(stages), groups, protocol, validation_images, deviations)
    _check_files(study)
    return study


def _protocol(path: Path, raw: dict) -> tuple[str, int]:
    """The study's ``protocol`` (default held_out) and ``validation_images`` (held_out only, default 5,000)."""
    protocol = raw.get("protocol", "held_out")
    if protocol not in PROTOCOLS:
        raise StudyError(f"study file {path}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    n = raw.get("validation_images", VALIDATION_IMAGES)
    if "validation_images" in raw and protocol != "held_out":
        raise StudyError(f"study file {path}: validation_images applies to protocol held_out (this study's protocol is {protocol})")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise StudyError(f"study file {path}: validation_images must be a positive number of training images, got {n!r}")
    return protocol, n


def load_yaml(path: Path, missing: str, invalid: str) -> Any:
    """A YAML file's content; a missing file or invalid YAML is a :class:`StudyError` with these messages."""
    if not path.is_file():
        raise StudyError(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{invalid} ({err})") from err


def _kinds() -> dict:
    from lit_kd.study.kinds import KINDS  # the kinds import this module for Stage and StudyError

    return KINDS


def _parse_stage(path: Path, name: str, body: Any, fit_overrides: dict) -> list[Stage]:
    KINDS = _kinds()
    if not NAME.match(name):
        raise StudyError(f"stage {name!r}: names start with a letter and use letters, digits, '_' and '-'")
    if not isinstance(body, dict):
        raise StudyError(f"stage {name!r}: expected a mapping with one of the keys {list(KINDS)}")
    kinds = [k for k in KINDS if k in body]
    if len(kinds) != 1:
        raise StudyError(f"stage {name!r}: needs exactly one of the keys {list(KINDS)}, found {kinds or sorted(body)}")
    kind = kinds[0]
    allowed = {kind, "description", *KINDS[kind].keys}
    extra = set(body) - allowed
    if extra:
        raise StudyError(f"stage {name!r}: unknown keys {sorted(extra)} for a {kind} stage (allowed: {sorted(allowed)})")
    return KINDS[kind].parse(name, dict(body), fit_overrides)


def _stand_in(path: Path, stages: dict[str, Stage], name: str, weights: str) -> Stage:
    stage = stages.get(name)
    if stage is None or stage.kind != "fit" or references(stage.spec["fit"]):
        raise StudyError(
            f"--use {name}={weights}: {name!r} is not a fit stage with its own config "
            f"(fit stages: {[n for n, s in stages.items() if s.kind == 'fit' and not references(s.spec['fit'])]})"
        )
    config = yaml.safe_load((path.parent / stage.spec["fit"]).read_text()) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    arch = init.get("student", init.get("model"))
    if not isinstance(arch, str):
        raise StudyError(f"--use {name}={weights}: the stage's config names no architecture by name (model or student)")
    file = Path(weights).resolve()
    if not file.is_file():
        raise StudyError(f"--use {name}={weights}: file {str(file)!r} does not exist")
    return Stage(
        name, "weights", {"weights": str(file), "model": arch, "model_kwargs": init.get("student_kwargs", init.get("model_kwargs"))}
    )


def _without(stages: dict[str, Stage], groups: dict[str, list[str]], names: list[str]) -> dict[str, Stage]:
    """``stages`` less ``names`` (stages or seeded groups) and, repeatedly, every stage that consumes a left-out one."""
    unknown = [n for n in names if n not in stages and n not in groups]
    if unknown:
        raise StudyError(f"--without: unknown stage(s) {unknown} (stages: {', '.join(stages)})")
    out = {member for n in names for member in groups.get(n, [n])}
    changed = True
    while changed:
        changed = False
        for stage in stages.values():
            consumed = {ref for ref, _ in references(list(_settings(stage).values()))}
            consumed |= set(_kinds()[stage.kind].consumed_stages(stage))
            consumed = {member for n in consumed for member in groups.get(n, [n])}
            if stage.name not in out and consumed & out:
                out.add(stage.name)
                changed = True
    return {name: stage for name, stage in stages.items() if name not in out}


def _needs(stage: Stage, stages: dict[str, Stage], groups: dict[str, list[str]]) -> list[str]:
    needs: list[str] = []

    def need(name: str, key: str) -> None:
        for member in groups.get(name, [name]):
            if member not in stages:
                raise StudyError(
                    f"stage {stage.name!r}, {key}: refers to unknown stage {name!r} (stages: {sorted(set(stages) | set(groups))})"
                )
            if member == stage.name:
                raise StudyError(f"stage {stage.name!r}, {key}: refers to itself")
            if member not in needs:
                needs.append(member)

    kind = _kinds()[stage.kind]
    for name in kind.implicit_needs(stage, stages):
        need(name, kind.needs_key or kind.name)
    for key, value in _settings(stage).items():
        for ref_stage, output in references(value):
            if ref_stage in groups:
                raise StudyError(
                    f"stage {stage.name!r}, {key}: {ref_stage!r} runs several seeds; name one "
                    f"({', '.join(groups[ref_stage])}) or select the best with a select stage"
                )
            need(ref_stage, key)
            other = _kinds()[stages[ref_stage].kind]
            if output not in other.outputs:
                raise StudyError(
                    f"stage {stage.name!r}, {key}: ${{{ref_stage}.{output}}}: a {other.name} stage has outputs {list(other.outputs)}"
                )
    return needs


def _settings(stage: Stage) -> dict[str, Any]:
    """The stage's settings as ``key -> value`` (override keys, or step flags), for references and messages."""
    return _kinds()[stage.kind].settings(stage)


def _ordered(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Stages in an order where each comes after what it needs (file order otherwise); a cycle is an error."""
    done: dict[str, Stage] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise StudyError(f"stage {name!r}: the stages depend on each other in a cycle: {' -> '.join(cycle)}")
        visiting.append(name)
        for need in stages[name].needs:
            visit(need)
        visiting.pop()
        done[name] = stages[name]

    for name in stages:
        visit(name)
    return done


def _check_files(study: Study) -> None:
    """Configs and shipped weights exist; literal paths to checkpoints named in settings exist."""
    for stage in study.stages.values():
        _kinds()[stage.kind].check_files(study, stage)
        for key, value in _settings(stage).items():
            literal = substitute(value, lambda name: str(study.here) if name == "here" else "${}")
            if isinstance(literal, str) and "${}" not in literal and literal.endswith((".ckpt", ".pt", ".onnx")):
                if not (study.here / literal).is_file():
                    raise StudyError(f"stage {stage.name!r}, {key}: file {literal!r} does not exist")


def check_override_key(config: dict, key: str, where: str) -> None:
    """A dotted override must land inside the config: every part but the last names an existing mapping (or a list
    item by index). New leaf keys are allowed (``data.init_args.train_size``); LightningCLI checks them."""
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise StudyError(f"{where}: {'.'.join(parts[:i])} is a list of {len(node)} items; {part!r} is not an index in it")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node and i > 0:
                raise StudyError(f"{where}: the config has no {'.'.join(parts[: i + 1])!r} (keys there: {sorted(node)})")
            node = node.setdefault(part, {}) if part not in node else node[part]
        else:
            raise StudyError(f"{where}: {'.'.join(parts[:i])!r} is a value, not a mapping")


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config`` with ``key`` (dotted, list items by index) set to ``value``, creating mappings on the way."""
    node: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
