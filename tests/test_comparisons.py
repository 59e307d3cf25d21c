"""Seeds and spread, conclusions and deviations (lit_kd.study.compare, the report's comparisons and conclusions):
the statistics against numbers worked out by hand, and a report rendered from constructed manifests where one
distilled setup (3 seeds) is beyond 2 standard errors of the data-only student (3 seeds), one within them, one ran a
single seed, and two compressed models are compared with their control."""

from __future__ import annotations

import json

import pytest
import yaml

from lit_kd.study import compare
from lit_kd.study.kinds import KINDS
from lit_kd.study.report import write_report
from lit_kd.study.results import Results
from lit_kd.study.spec import StudyError, load_study
from tests.test_published_numbers import disagreements, sections
from tests.test_results_schema import check_results_file


# ------------------------------------------------------------------------------------------------ statistics
def test_mean_std_and_the_standard_error_of_a_difference_by_hand():
    # mean 0.84, deviations -0.01, 0, 0.01: s = sqrt(2e-4 / 2) = 0.01; SE = sqrt(0.01²/3 + 0.01²/3) = 0.0081650
    assert compare.mean([0.83, 0.84, 0.85]) == pytest.approx(0.84)
    assert compare.sample_std([0.83, 0.84, 0.85]) == pytest.approx(0.01)
    assert compare.sample_std([0.9]) is None
    diff, se, verdict = compare.difference([0.83, 0.84, 0.85], [0.80, 0.81, 0.82])
    assert (diff, se, verdict) == (pytest.approx(0.03), pytest.approx(0.0081650, abs=1e-7), "real")  # 0.03 > 0.01633
    # s = sqrt((0.02² + 0.02²) / 1) = 0.028284 on each side: SE = sqrt(0.0008/2 + 0.0008/2) = 0.028284; 0.05 < 0.0566
    diff, se, verdict = compare.difference([0.85, 0.89], [0.80, 0.84])
    assert (diff, se, verdict) == (pytest.approx(0.05), pytest.approx(0.028284, abs=1e-6), "not real")
    assert compare.difference([0.9], [0.80, 0.84]) == (pytest.approx(0.08), None, "not testable (1 seed)")
    assert compare.verdict(0.02, 0.01) == "not real" and compare.verdict(0.0201, 0.01) == "real"  # strictly beyond 2 SE
    # 0.05 with SE 0.028284 from 2 seeds: real once 2 * 0.028284 * sqrt(2 / n) < 0.05, i.e. n > 2.56
    assert compare.seeds_for_real(0.05, 0.028284, 2) == 3 and compare.seeds_for_real(0.0, 0.01, 3) is None
    with pytest.raises(ValueError, match="give at least one accuracy"):
        compare.mean([])


# ------------------------------------------------------------------------------------------------ a report
ACCS = {
    "student_data": [0.80, 0.81, 0.82],  # 81.00 ± 1.00
    "kd": [0.83, 0.84, 0.85],  # 84.00 ± 1.00: +3.00, SE 0.82, real
    "kd_small": [0.80, 0.82, 0.85],  # 82.33 ± 2.52: +1.33, SE 1.56, not real
    "kd_one": [0.86],  # one seed: not testable
    "prune": [0.78, 0.80],  # 79.00 ± 1.41 against the control's 81.50 ± 1.41: -2.50, SE 1.41, not real
    "sparse": [0.70, 0.71],  # 70.50 ± 0.71: -11.00, SE 1.12, real
    "control": [0.805, 0.825],
}
STUDY = {
    "description": "constructed",
    "deviations": ["the teacher trained from scratch (no ImageNet weights)", "ResNet-20 instead of ResNet-101"],
    "stages": {
        **{name: {"fit": "c.yaml", **({"seeds": list(range(len(accs)))} if len(accs) > 1 else {})} for name, accs in ACCS.items()},
        "report": {
            "report": {
                "distillation": {"baseline": "student_data", "rows": ["kd", "kd_small", "kd_one"]},
                "controls": {"prune": "control", "sparse": "control"},
                "targets": {"best_distilled": {"min_gain": 1.0}, "student_data": {"min_acc": 82.0}, "prune": {"max_loss": 1.0}},
            }
        },
    },
}


def manifest(stage: str, acc: float, tmp_path, group: str | None) -> dict:
    (tmp_path / stage).mkdir()  # a run folder without TensorBoard events: no curves
    metrics = {"architecture": "resnet8", "params": 1000, "nonzero_params": 1000, "macs": 10**6, "size_bytes": 4000, "test_acc": acc}
    return {
        "kind": "fit",
        "status": "done",
        "outputs": {"run_dir": str(tmp_path / stage)},
        "metrics": {**metrics, "epochs": 5},
        "inputs": {},
        "group": group,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compared")
    (tmp_path / "c.yaml").write_text("trainer: {max_epochs: 5}\ndata: {init_args: {}}\n")  # held_out sets data.init_args.val_split
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    study = load_study(tmp_path / "study.yaml")
    manifests = {}
    for name, accs in ACCS.items():
        for stage, acc in zip(study.groups.get(name, [name]), accs, strict=True):
            manifests[stage] = manifest(stage, acc, tmp_path, name if name in study.groups else None)
    out = tmp_path / "out"
    write_report(study, out, manifests, study.stages["report"].spec["report"])
    return out


def test_comparisons_call_a_difference_real_only_beyond_two_standard_errors(report):
    table = sections((report / "report.md").read_text())["Comparisons"]["tables"][0]
    assert table[1:4] == [
        ["kd", "student_data (data only)", "84.00 ± 1.00 % over 3 seeds", "81.00 ± 1.00 % over 3 seeds", "+3.00", "0.82", "real"],
        ["kd_small", "student_data (data only)", "82.33 ± 2.52 % over 3 seeds", "81.00 ± 1.00 % over 3 seeds", "+1.33", "1.56", "not real"],
        ["kd_one", "student_data (data only)", "86.00 % over 1 seed", "81.00 ± 1.00 % over 3 seeds", "+5.00", "-", "not testable (1 seed)"],
    ]
    assert table[4][0:2] == ["prune", "control (control)"] and table[4][4:] == ["-2.50", "1.41", "not real"]
    assert table[5][4:] == ["-11.00", "1.12", "real"]
    results = json.loads((report / "results.json").read_text())
    assert [(c["stage"], c["role"], c["verdict"]) for c in results["comparisons"]] == [
        ("kd", "distillation", "real"),
        ("kd_small", "distillation", "not real"),
        ("kd_one", "distillation", "not testable (1 seed)"),
        ("prune", "control", "not real"),
        ("sparse", "control", "real"),
    ]
    assert results["comparisons"][0]["standard_error"] == pytest.approx(0.0081650, abs=1e-7)
    assert results["comparisons"][1]["baseline_test_accs"] == [0.80, 0.81, 0.82]
    check_results_file(report / "results.json")
    assert disagreements(report) == []  # tables, key results, conclusions and deviations are what results.json gives


def test_the_headline_row_of_the_best_distilled_student_gives_its_verdict(report):
    key = sections((report / "report.md").read_text())["Key results"]["tables"][0]
    best = next(row for row in key if row[0].startswith("Best distilled student `kd`"))
    assert key[1][:2] == ["Student on data only `student_data` (resnet8, 3 seeds)", "81.00 ± 1.00 %"] and best[1] == "84.00 ± 1.00 %"
    assert best[2].startswith("+3.00 points vs data only (SE 0.82 points: real, above 2 SE); higher with fewer seeds: `kd_one` 86.00 %")


def test_conclusions_say_what_worked_and_what_did_not_with_their_numbers(report):
    found = sections((report / "report.md").read_text())
    said = found["Conclusions"]["bullets"]
    assert said == [
        "Worked: `kd` +3.00 points against its data-only baseline `student_data` (84.00 ± 1.00 % over 3 seeds vs 81.00 ± "
        "1.00 % over 3 seeds; SE 0.82 points: real, above 2 SE).",
        "Did not work: `kd_small` +1.33 points against its data-only baseline `student_data` (82.33 ± 2.52 % over 3 seeds "
        "vs 81.00 ± 1.00 % over 3 seeds; SE 1.56 points: not real, within 2 SE).",
        "Not testable: `kd_one` +5.00 points against its data-only baseline `student_data` (86.00 % over 1 seed vs 81.00 ± "
        "1.00 % over 3 seeds; 1 seed: not testable).",
        "Worked: `prune` -2.50 points against its control `control` (79.00 ± 1.41 % over 2 seeds vs 81.50 ± 1.41 % over 2 "
        "seeds; SE 1.41 points: not real, within 2 SE): no cost beyond seed-to-seed noise.",
        "Did not work: `sparse` -11.00 points against its control `control` (70.50 ± 0.71 % over 2 seeds vs 81.50 ± 1.41 % "
        "over 2 seeds; SE 1.12 points: real, above 2 SE).",
        "Target met: `kd` +3.00 points against its data-only baseline `student_data` (SE 0.82 points: real, above 2 SE), "
        "target at least +1.00 points and real.",
        "Target missed: `student_data` test accuracy 81.00 % against at least 82.00 %, 1.00 points short.",
        "Target missed: `prune` -2.50 points against its control `control` (SE 1.41 points: not real, within 2 SE), target "
        "at most 1.00 points below; 1.50 points beyond it.",
        # (2 * 1.56 / 1.33)² * 3 = 16.5: more seeds than a next step takes
        "Next: treat `kd_small` and `student_data` as equal (+1.33 points, SE 1.56 points from 3 and 3 seeds; 17 seeds per "
        "side would make it real): try another setup.",
        "Next: run more seeds of `kd_one` and `student_data` (1 and 3 now): +5.00 points from one seed cannot be told from "
        "seed-to-seed noise.",
        # (2 * 1.41 / 2.50)² * 2 = 2.56
        "Next: about 3 seeds per side would show whether `prune` -2.50 points against its control `control` is real, if "
        "the spread stays as measured (SE 1.41 points from 2 and 2 seeds).",
        "Next: `sparse` is 11.00 points below its control `control`: give it a longer recovery (more fine-tuning epochs "
        "after the last pruning or quantization step) or a gentler schedule.",
    ]
    assert found["Deviations from the task"]["bullets"] == STUDY["deviations"]
    page = (report / "report.html").read_text()
    assert "<h2>Conclusions</h2>" in page and "<li>the teacher trained from scratch (no ImageNet weights)</li>" in page
    assert page.index("<h2>Conclusions</h2>") < page.index("<h2>Deviations from the task</h2>") < page.index("<h2>Commands</h2>")


def test_conclusions_come_from_results_json_alone(report):
    from lit_kd.study.conclusions import conclusions

    results = Results.load(report / "results.json")
    results.comparisons[0].test_accs = [0.81, 0.81, 0.82]  # a changed record changes the sentence
    results.comparisons[0].mean = 0.8133333
    assert conclusions(results)[0].startswith("Worked: `kd` +3.00 points") and "81.33 ± 1.00 %" in conclusions(results)[0]


# ------------------------------------------------------------------------------------------------ the study file
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"deviations": "from scratch"}, "deviations must be a list of sentences"),
        ({"report": {"controls": ["prune"]}}, r"report\.controls: expected a mapping of method stage to control stage"),
        ({"report": {"targets": {"kd": {"min_gian": 1.0}}}}, r"report\.targets\.kd: expected a mapping of min_acc/min_gain/max_loss"),
        ({"report": {"distilation": {}}}, r"report: expected a mapping with keys among \['distillation', 'controls', 'targets'\]"),
        ({"report": {"distillation": {"rows": ["kd"]}}}, r"report\.distillation: expected \{baseline: <stage>, rows"),
    ],
)
def test_a_bad_deviations_list_or_report_setting_is_named(tmp_path, change, message):
    (tmp_path / "c.yaml").write_text("{}\n")
    study = {"stages": {"kd": {"fit": "c.yaml"}, "r": {"report": change.get("report", {})}}}
    if "deviations" in change:
        study["deviations"] = change["deviations"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(StudyError, match=message):
        load_study(tmp_path / "s.yaml")
    assert KINDS["report"].parse("r", {"report": None}, {})[0].kind == "report"  # no settings: a plain report
