"""README, report.md and results.json publish the same numbers: every table of a shipped report and the README's
headline table are parsed (Markdown tables, cell by cell) and compared with the rows the report's own row functions
format from the typed records of results.json; the headline and the report's key results with the rows
``headline_rows`` computes from it, and with the findings it stores; the conclusions and the deviations from the task
with the sentences generated from it. Changing one digit in any of the three fails.

Not checked against results.json, which does not hold them: the mixed-precision per-layer tables (the search is
left out of results.json), a stage's number of attempts in the wall-time cells, and the Commands table (its commands
are replayed by tests/test_recorded_commands.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_kd.study.conclusions import conclusions
from lit_kd.study.headline import between_markers, headline_rows, load_results
from lit_kd.study.kinds.bench import speed_row
from lit_kd.study.kinds.comparisons import comparison_row
from lit_kd.study.kinds.examples import examples_table
from lit_kd.study.kinds.export import export_row
from lit_kd.study.kinds.ptq import ptq_row
from lit_kd.study.kinds.trained import distillation_row, model_row, qat_row
from lit_kd.study.render import minutes
from lit_kd.study.results import Results
from tests.conftest import REPO

REPORTS = [REPO / "results" / "cifar_cpu", REPO / "results" / "resnet101"]
HEADLINE_STUDY = REPO / "results" / "cifar_cpu"  # the study the README's headline is generated from


# ------------------------------------------------------------------------------------------------ reading Markdown
def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is a literal bar, as the report escapes it)."""
    parts, cell, i = [], "", 1
    body = line.strip()
    while i < len(body) - 1:
        if body[i] == "\\" and body[i + 1] == "|":
            cell, i = cell + "|", i + 2
            continue
        if body[i] == "|":
            parts.append(cell.strip())
            cell = ""
        else:
            cell += body[i]
        i += 1
    return [*parts, cell.strip()]


def sections(text: str) -> dict[str, dict]:
    """``## title`` -> {"tables": [[header, *rows], ...], "bullets": [...]} of a Markdown document."""
    found: dict[str, dict] = {}
    current = {"tables": [], "bullets": []}
    table: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line[3:].strip(), {"tables": [], "bullets": []})
        if line.startswith("|"):
            if table is None:
                table = []
                current["tables"].append(table)
            if not set(line.replace("|", "").strip()) <= {"-", ":"}:  # not the separator row
                table.append(cells(line))
            continue
        table = None
        if line.startswith("- "):
            current["bullets"].append(line[2:])
    return found


# ------------------------------------------------------------------------------------------------ expected rows
def report_tables(results: Results) -> dict[str, list[list[str]]]:
    """Section title -> the rows of its table as the report formats them from ``results`` (header rows left out,
    except where a number is in them)."""
    expected = {"Key results": [list(r) for r in headline_rows(results)]}
    if results.models:
        expected["Models"] = [model_row(r, minutes(r.wall_s)) for r in results.models]
    if results.distillation:
        expected["Distillation"] = [distillation_row(r, i == 0) for i, r in enumerate(results.distillation)]
    for name, rows in (results.ptq or {}).items():
        expected[f"Post-training quantization ({name})"] = [ptq_row(r) for r in rows]
    if results.qat:
        expected["Quantization-aware training"] = [qat_row(r) for r in results.qat]
    if results.exports:
        expected["ONNX exports"] = [export_row(r) for r in results.exports]
    if results.speed:
        expected["Speed"] = [speed_row(r) for r in results.speed.rows]
    if results.examples:
        expected["Example predictions"] = examples_table(results.examples).rows
    if results.comparisons:
        expected["Comparisons"] = [comparison_row(r) for r in results.comparisons]
    return expected


def without_attempts(row: list[str], title: str) -> list[str]:
    """A models row's wall time without ``(N attempts)``: results.json records the seconds, not the attempts."""
    return [*row[:-1], row[-1].split(" (")[0]] if title == "Models" else row


def disagreements(report_dir: Path, readme: Path | None = None) -> list[str]:
    results = load_results(report_dir / "results.json")
    found = sections((report_dir / "report.md").read_text(encoding="utf-8"))
    problems = []
    for title, rows in report_tables(results).items():
        if title not in found or not found[title]["tables"]:
            problems.append(f"report.md has no table under '## {title}', which results.json holds")
            continue
        shown = [without_attempts(r, title) for r in found[title]["tables"][0][1:]]
        if title == "Speed":  # rows of engines not installed follow the measured ones
            shown = [r for r in shown if "not installed" not in r]
        problems += [f"{title}, row {i + 1}: report.md {s} != results.json {e}" for i, (s, e) in enumerate(zip(shown, rows)) if s != e]
        if len(shown) != len(rows):
            problems.append(f"{title}: report.md has {len(shown)} rows, results.json {len(rows)}")
    if results.distillation and "Distillation" in found:
        k = results.distillation[0].equal_epochs
        header = found["Distillation"]["tables"][0][0][-1]
        if k and header != f"validation accuracy after {k} epochs":
            problems.append(f"Distillation: header {header!r} != results.json equal_epochs {k}")
    findings = [[f.what, f.result, f.compared_with or ""] for f in results.findings if f.result is not None]
    if findings != [list(r) for r in headline_rows(results)]:
        problems.append("results.json: its findings differ from the headline rows computed from its records")
    notes = [f.what for f in results.findings if f.result is None]
    if found.get("Key results", {}).get("bullets", []) != notes:
        problems.append(f"Key results notes: report.md {found.get('Key results', {}).get('bullets')} != results.json {notes}")
    for title, expected in (("Conclusions", conclusions(results)), ("Deviations from the task", results.deviations or [])):
        shown = found.get(title, {}).get("bullets", [])
        if shown != expected:
            problems.append(f"{title}: report.md {shown} != what results.json gives {expected}")
    if readme is not None:
        block = sections("## headline\n" + between_markers(readme.read_text(encoding="utf-8")))["headline"]["tables"][0][1:]
        problems += [f"README row {i + 1}: {s} != results.json {e}" for i, (s, e) in enumerate(zip(block, findings)) if s != e]
        if len(block) != len(findings):
            problems.append(f"README: {len(block)} headline rows, results.json {len(findings)}")
    return problems


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("report_dir", REPORTS, ids=lambda p: p.name)
def test_report_tables_and_readme_agree_with_results_json(report_dir):
    problems = disagreements(report_dir, REPO / "README.md" if report_dir == HEADLINE_STUDY else None)
    assert not problems, "\n".join(problems)


def test_every_report_table_is_checked():
    """A table of the shipped report that the check does not know is a failure, not silently unchecked."""
    unchecked = {"Mixed precision (mixed_precision_a8)", "Mixed precision (mixed_precision_a4)", "Commands"}
    for report_dir in REPORTS:
        found = sections((report_dir / "report.md").read_text(encoding="utf-8"))
        checked = set(report_tables(load_results(report_dir / "results.json")))
        assert {t for t, s in found.items() if s["tables"]} - checked <= unchecked, report_dir.name


def mutated(text: str, anchor: str, start: str) -> str:
    """``text`` with one digit changed: the last digit of the first ``anchor`` after the first ``start``."""
    at = text.index(anchor, text.index(start)) + len(anchor) - 1
    assert text[at].isdigit(), anchor
    return text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :]


@pytest.mark.parametrize(
    ("file", "start", "anchor"),
    [
        ("README.md", "headline:start", "| 84.28 ± 0.4"),  # a headline result
        ("README.md", "headline:start", "+11.2"),  # a headline comparison
        ("report.md", "## Key results", "| 73.05 ± 1.4"),
        ("report.md", "## Key results", "-0.4"),  # mixed precision's drop
        ("report.md", "## Models", "| 269,72"),  # parameters
        ("report.md", "## Models", "| 0.2"),  # the INT8 model's size
        ("report.md", "## Models", "| 7.8"),  # a wall time
        ("report.md", "## Distillation", "| 83.96 %, 84.6"),  # a seed's accuracy
        ("report.md", "## Distillation", "| 72.3"),  # validation accuracy at equal epochs
        ("report.md", "## Post-training quantization (ptq)", "| ours | W2A8 | minmax + bias corr. | per_channel | yes | 7"),
        ("report.md", "## Quantization-aware training", "| 86.0"),  # fake-quant validation accuracy
        ("report.md", "## ONNX exports", "| 84.6"),
        ("report.md", "## Speed", "| 148"),  # images/s
        ("report.md", "## Example predictions", " 9"),  # a confidence
        ("results.json", '"models"', '"test_acc": 0.911'),  # the teacher's accuracy
        ("results.json", '"speed"', '"images_per_s": 148'),
        ("results.json", '"findings"', '"result": "84.28'),
    ],
)
def test_one_changed_digit_in_any_of_the_three_files_fails(tmp_path, file, start, anchor):
    study = tmp_path / "results" / "cifar_cpu"
    shutil.copytree(HEADLINE_STUDY, study, ignore=shutil.ignore_patterns("*.png", "*.html"))
    readme = shutil.copy(REPO / "README.md", tmp_path / "README.md")
    assert disagreements(study, Path(readme)) == []
    target = Path(readme) if file == "README.md" else study / file
    target.write_text(mutated(target.read_text(encoding="utf-8"), anchor, start), encoding="utf-8")
    assert disagreements(study, Path(readme)), f"a changed digit after {anchor!r} in {file} went unnoticed"
