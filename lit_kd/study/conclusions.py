"""The report's conclusions, generated from a study's typed results alone (:class:`~lit_kd.study.results.Results`,
what results.json holds), every sentence with its numbers: what worked and what did not (each comparison of a
setup with its data-only baseline or its control, by its verdict), the targets the study file states, met or missed
and by how much, and the next ideas, chosen by rules from the numbers:

- a difference from one seed: run more seeds;
- a difference within 2 SE: the seeds per side at which it would be real if the spread stays as measured (or, when
  that takes more than :data:`FEW_SEEDS`, treat the two as equal);
- a method really below its control: a longer recovery.

The "Deviations from the task" section lists the study file's ``deviations``.
"""

from __future__ import annotations

from lit_kd.study.compare import NOT_TESTABLE, REAL, seeds_for_real, verdict_text
from lit_kd.study.kinds.comparisons import group_text
from lit_kd.study.kinds.report import BEST_DISTILLED
from lit_kd.study.kinds.trained_rows import best_distilled
from lit_kd.study.render import Section, pct, points
from lit_kd.study.results import ComparisonRecord, Results

FEW_SEEDS = 10  # more seeds per side than this is not a next step on 2 CPU cores


def conclusions(results: Results) -> list[str]:
    """What worked, what did not, the targets, the next ideas: one sentence each, with its numbers."""
    comparisons = results.comparisons or []
    return [outcome(c) for c in comparisons] + targets(results) + [idea for c in comparisons if (idea := next_idea(c))]


def conclusion_sections(results: Results) -> list[Section]:
    """The "Conclusions" and "Deviations from the task" sections, each only when it has something to say."""
    sentences = conclusions(results)
    sections = [Section("Conclusions", ["\n".join(f"- {s}" for s in sentences)])] if sentences else []
    if results.deviations:
        sections.append(Section("Deviations from the task", ["\n".join(f"- {d}" for d in results.deviations)]))
    return sections


# ------------------------------------------------------------------------------------------------ sentences
def _against(c: ComparisonRecord) -> str:
    whom = "its control" if c.role == "control" else "its data-only baseline"
    return f"`{c.stage}` {points(c.difference)} against {whom} `{c.baseline}`"


def _numbers(c: ComparisonRecord) -> str:
    mine = group_text(c.mean, c.std, len(c.test_accs))
    theirs = group_text(c.baseline_mean, c.baseline_std, len(c.baseline_test_accs))
    return f"{mine} vs {theirs}; {verdict_text(c.standard_error, c.verdict)}"


def outcome(c: ComparisonRecord) -> str:
    """Worked, did not work or not testable: a distillation setup works when it is really better than data only; a
    compressed model when it is not really worse than its control."""
    if c.verdict == NOT_TESTABLE:
        head = "Not testable"
    elif c.role == "control":
        head = "Did not work" if c.verdict == REAL and c.difference < 0 else "Worked"
    else:
        head = "Worked" if c.verdict == REAL and c.difference > 0 else "Did not work"
    tail = ": no cost beyond seed-to-seed noise" if c.role == "control" and head == "Worked" and c.verdict != REAL else ""
    return f"{head}: {_against(c)} ({_numbers(c)}){tail}."


def targets(results: Results) -> list[str]:
    """Each target of the study file: met or missed, and by how much."""
    return [target(results, subject, condition, value) for subject, conditions in (results.targets or {}).items()
            for condition, value in conditions.items()]  # fmt: skip


def target(results: Results, subject: str, condition: str, value: float) -> str:
    best = best_distilled(results) if subject == BEST_DISTILLED else None
    name = best.stage if best else subject
    if condition == "min_acc":
        acc = _accuracy(results, name)
        if acc is None:
            return f"Target not measured: `{name}` test accuracy at least {value:.2f} % (no result for it)."
        short = value - 100 * acc
        gap = "" if short <= 0 else f", {short:.2f} points short"
        return f"Target {'met' if short <= 0 else 'missed'}: `{name}` test accuracy {pct(acc)} against at least {value:.2f} %{gap}."
    c = results.comparison(name)
    wanted = f"at least {value:+.2f} points and real" if condition == "min_gain" else f"at most {value:.2f} points below"
    if c is None:
        return f"Target not measured: `{name}` {wanted} (no comparison for it)."
    diff = 100 * c.difference
    if condition == "min_gain":
        met = diff >= value and c.verdict == REAL
        gap = f"{value - diff:.2f} points short" if diff < value else f"large enough but {c.verdict}"
    else:
        met = diff >= -value
        gap = f"{-diff - value:.2f} points beyond it"
    verdict = verdict_text(c.standard_error, c.verdict)
    return f"Target {'met' if met else 'missed'}: {_against(c)} ({verdict}), target {wanted}" + ("" if met else f"; {gap}") + "."


def _accuracy(results: Results, name: str) -> float | None:
    """The mean test accuracy of a stage or seed group: its distillation row, its model, or a side of a comparison."""
    for r in results.distillation:
        if r.stage == name:
            return r.mean
    model = results.model(name)
    if model:
        return model.test_acc
    for c in results.comparisons or []:
        if name in (c.stage, c.baseline):
            return c.mean if c.stage == name else c.baseline_mean
    return None


def next_idea(c: ComparisonRecord) -> str | None:
    n, m = len(c.test_accs), len(c.baseline_test_accs)
    if c.verdict == NOT_TESTABLE:
        return (
            f"Next: run more seeds of `{c.stage}` and `{c.baseline}` ({n} and {m} now): {points(c.difference)} from one "
            "seed cannot be told from seed-to-seed noise."
        )
    if c.verdict != REAL:
        needed = seeds_for_real(c.difference, c.standard_error, min(n, m))
        se = f"SE {100 * c.standard_error:.2f} points from {n} and {m} seeds"
        if needed is None or needed > FEW_SEEDS:
            return (
                f"Next: treat `{c.stage}` and `{c.baseline}` as equal ({points(c.difference)}, {se}; "
                f"{'no number of seeds' if needed is None else f'{needed} seeds per side'} would make it real): try another setup."
            )
        return f"Next: about {needed} seeds per side would show whether {_against(c)} is real, if the spread stays as measured ({se})."
    if c.role == "control" and c.difference < 0:
        return (
            f"Next: `{c.stage}` is {-100 * c.difference:.2f} points below its control `{c.baseline}`: give it a longer "
            "recovery (more fine-tuning epochs after the last pruning or quantization step) or a gentler schedule."
        )
    return None
