"""The study report: ``report.md`` with PNGs beside it, ``report.html`` (one self-contained file, figures embedded)
and ``results.json`` (every table of the report as typed records, :mod:`lit_kd.study.results`). Every number comes
from the stage manifests.

The report is built once as a list of sections and rendered twice, to Markdown and HTML. The study's introduction,
its key results (the headline rows of every kind) and the commands are assembled here; every other section comes
from the kind that owns it (:meth:`~lit_kd.study.kinds.base.Kind.report`), in the order of their positions.
"""

from __future__ import annotations

from pathlib import Path

from lit_kd.atomic import write_json, write_text
from lit_kd.study.conclusions import conclusion_sections
from lit_kd.study.headline import headline_rows
from lit_kd.study.kinds import KINDS
from lit_kd.study.kinds.base import ReportInput
from lit_kd.study.manifest import describe_code, portable_command, wall_time
from lit_kd.study.records import stamp_protocol
from lit_kd.study.render import Section, Table, minutes, to_html, to_markdown
from lit_kd.study.results import Finding, Results, StageRecord
from lit_kd.study.spec import Study

__all__ = ["build", "validation_note", "wall_time", "write_report"]


def validation_note(manifests: dict[str, dict]) -> str:
    """Which training stages validated on the test set (``val_split: 0``): their stopping rule and best checkpoint
    read test accuracy, so their test accuracies are optimistic by that selection. Empty when none did."""
    fits = [(m.get("resolved_config") or {}).get("data", {}).get("init_args", {}) for m in manifests.values() if m["kind"] == "fit"]
    on_test = [args for args in fits if not args.get("val_split")]
    if not on_test:
        return ""
    which = "All" if len(on_test) == len(fits) else f"{len(on_test)} of the {len(fits)}"
    return (
        f"{which} training stages validated on the test set (`val_split: 0`, the study protocol): the plateau rule "
        "and the choice of the best checkpoint read test accuracy, so the test accuracies of those stages are "
        "best-epoch numbers, optimistic by that selection (by the epoch-to-epoch spread of the curves below). "
        "`data.init_args.val_split: N` holds out N training images for validation instead."
    )


def label_tables(sections: list[Section], protocol: str) -> None:
    """End the caption of every table in ``sections`` with the protocol that produced its numbers."""
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Table):
                block.caption = f"{block.caption} Protocol: {protocol}.".strip()


def _intro(study: Study, out: Path, manifests: dict[str, dict], data: str | None) -> Section:
    env = next((m["environment"] for m in manifests.values() if m.get("environment")), {})
    cpu = env.get("cpu", {})
    total = sum(m.get("wall_s") or 0 for m in manifests.values())
    return Section(
        "Study",
        [
            study.description or "",
            f"Machine: {cpu.get('cpu', '?')} ({cpu.get('isa', '?')}, VNNI {'yes' if cpu.get('vnni') else 'no'}), "
            f"{cpu.get('cores_used', '?')} cores used"
            + (f"; accelerator {env['accelerator']}" if env.get("accelerator") else "")
            + f"; torch {env.get('versions', {}).get('torch')}, "
            f"{describe_code(env.get('code') or {'version': env.get('versions', {}).get('lit-kd')})}. "
            f"Wall time of all stages: {minutes(total)}. "
            f"The commands below write `<out>` for the study's folder, `{out.resolve()}`"
            + (f", and `<data>` for the data set, `{data}`." if data else "."),
            study.protocol_text() + " Every table below names the protocol that produced it.",
            validation_note(manifests),
        ],
    )


def build(study: Study, out: Path, manifests: dict[str, dict], report_settings: dict, images=None) -> tuple[list[Section], Results]:
    """The report's sections and its typed results, from the manifests of the stages it reads."""
    results = Results(study=study.path.name, description=study.description, protocol=study.protocol)
    for name, m in manifests.items():
        results.stages[name] = StageRecord.from_dict(
            {k: m.get(k) for k in ("kind", "status", "outputs", "metrics", "command", "wall_s", "seed", "group")}, name
        )
    results.machine = next((m["environment"] for m in manifests.values() if m.get("environment")), {})
    results.targets = report_settings.get("targets") or None
    results.deviations = study.deviations or None
    data = next((m["inputs"]["data"] for m in manifests.values() if (m.get("inputs") or {}).get("data")), None)
    rep = ReportInput(study, out, manifests, report_settings, results, images)
    placed = [placed for kind in KINDS.values() for placed in kind.report(rep)]
    sections = [_intro(study, out, manifests, data)] + [s for _, s in sorted(placed, key=lambda p: p[0])]

    rows = headline_rows(results)
    notes = [note for kind in KINDS.values() for note in kind.key_notes(rep)]
    key_table = Table(["what", "result", "compared with"], [list(r) for r in rows], "The README's headline table shows these rows.")
    results.findings = [Finding(what=w, result=r, compared_with=c) for w, r, c in rows] + [Finding(what=n) for n in notes]
    sections.insert(1, Section("Key results", [b for b in (key_table if rows else None, "\n".join(f"- {n}" for n in notes)) if b]))
    label_tables(sections[1:], study.protocol)
    stamp_protocol(results, study.protocol)

    sections += conclusion_sections(results)  # from the typed results alone, as a reader of results.json would

    def short(command: str) -> str:
        return portable_command(command, out, data, "<data>")

    command_rows = [[n, f"`{short(m.get('command') or '')}`", wall_time(m)] for n, m in manifests.items()]
    sections.append(Section("Commands", [Table(["stage", "command", "wall time"], command_rows)]))
    return sections, results


def write_report(study: Study, out: Path, manifests: dict[str, dict], report_settings: dict | None = None) -> dict[str, Path]:
    from lit_kd.study.kinds.examples import example_images

    examples = next((m for m in manifests.values() if m["kind"] == "examples"), None)
    images = example_images(examples) if examples else None  # read from the data, not stored in the manifest
    sections, results = build(study, out, manifests, report_settings or {}, images)
    title = f"lit-kd study: {study.path.stem}"
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    write_text(paths["md"], to_markdown(title, sections, out))
    write_text(paths["html"], to_html(title, sections))
    write_json(paths["json"], results.to_dict())
    return paths
